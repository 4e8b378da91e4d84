//! One server→client WebSocket frame, built in place so it can be shared and reused.

use std::time::Instant;

/// Largest WebSocket header of an unmasked frame: 2 bytes + 8-byte extended length.
pub const FRAME_HEADER_MAX: usize = 10;

/// A complete, unmasked WebSocket frame plus what the writers need to account for it.
///
/// The buffer reserves [`FRAME_HEADER_MAX`] bytes in front of the payload; the header is
/// written right-aligned against the payload, so `bytes()` is one contiguous slice that a
/// writer hands to a single `write` call, and the buffer's capacity is kept across reuse.
#[derive(Debug, Clone)]
pub struct Frame {
    buf: Vec<u8>,
    start: usize,
    /// Session sequence number of the packet in this frame (0 for non-data messages).
    pub sequence_number: u64,
    /// Packet-table row of the packet (ground truth for decoder feedback).
    pub bin: u32,
    /// When the tick that produced this frame woke; network latency is measured from here.
    pub tick: Instant,
}

impl Frame {
    /// An empty frame whose buffer can hold `capacity` payload bytes without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity + FRAME_HEADER_MAX),
            start: 0,
            sequence_number: 0,
            bin: 0,
            tick: Instant::now(),
        }
    }

    /// Replaces the content with a frame of `opcode` whose payload `write_payload` appends
    /// to the buffer it is given. Reuses the buffer: no allocation once it is large enough.
    pub fn build<E>(
        &mut self,
        opcode: u8,
        write_payload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_MAX, 0);
        write_payload(&mut self.buf)?;
        let len = self.buf.len() - FRAME_HEADER_MAX;
        let mut header = [0u8; FRAME_HEADER_MAX];
        header[0] = 0x80 | (opcode & 0x0f); // FIN: every message is a single frame.
        let header_len = if len < 126 {
            header[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        self.start = FRAME_HEADER_MAX - header_len;
        self.buf[self.start..FRAME_HEADER_MAX].copy_from_slice(&header[..header_len]);
        Ok(())
    }

    /// The whole frame: header and payload.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The payload alone.
    pub fn payload(&self) -> &[u8] {
        &self.buf[FRAME_HEADER_MAX.min(self.buf.len())..]
    }

    /// Bytes of heap this frame holds.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn frame_of(len: usize) -> Frame {
        let mut frame = Frame::with_capacity(16);
        frame
            .build(0x2, |buf| {
                buf.extend(std::iter::repeat_n(7u8, len));
                Ok::<_, Infallible>(())
            })
            .unwrap();
        frame
    }

    #[test]
    fn header_encodes_each_length_class() {
        let small = frame_of(125);
        assert_eq!(&small.bytes()[..2], &[0x82, 125]);
        assert_eq!(small.bytes().len(), 127);
        let medium = frame_of(126);
        assert_eq!(&medium.bytes()[..4], &[0x82, 126, 0, 126]);
        let large = frame_of(70_000);
        assert_eq!(large.bytes()[1], 127);
        assert_eq!(&large.bytes()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(large.payload().len(), 70_000);
    }

    #[test]
    fn frames_parse_back_with_tungstenite() {
        use tungstenite::protocol::frame::FrameHeader;
        let frame = frame_of(300);
        let mut cursor = std::io::Cursor::new(frame.bytes().to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(header.is_final);
        assert!(header.mask.is_none(), "server frames must be unmasked");
        assert_eq!(len, 300);
    }
}
