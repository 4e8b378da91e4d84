//! The WebSocket client side, as cheap as it can be: tungstenite generates the key, checks the
//! accept value and parses frame headers; payloads are looked at in place in the client's own
//! receive buffer (no per-message allocation or copy), because 2000 clients at 40 Hz must cost
//! the load generator little next to the server it measures.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::target::{find, Target};

/// Largest handshake response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest frame accepted from the server.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// An upgraded connection and the bytes that came after the 101 response.
pub struct Upgraded {
    /// The socket (blocking, with timeouts still set).
    pub stream: TcpStream,
    /// Stream bytes already read past the handshake (the metadata message, maybe more).
    pub leftover: Vec<u8>,
}

/// Opens `path` on the server as a WebSocket, within `timeout`.
pub fn connect(target: &Target, path: &str, timeout: Duration) -> Result<Upgraded, String> {
    let started = Instant::now();
    let mut stream = target
        .connect(timeout)
        .map_err(|e| format!("connect {}: {e}", target.addr))?;
    let key = generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host_header()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the upgrade request: {e}"))?;
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        if raw.len() > MAX_RESPONSE_HEAD || started.elapsed() > timeout {
            return Err("no complete handshake response".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("server closed the connection during the handshake".into()),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the handshake response: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "101" {
        // The body (a JSON `detail`) follows; take what has arrived.
        let body = String::from_utf8_lossy(&raw[head_end + 4..]);
        return Err(format!("HTTP {status} {}", body.trim()));
    }
    let accept = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, value)| value.trim().to_string());
    if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept {accept:?}"));
    }
    Ok(Upgraded {
        stream,
        leftover: raw[head_end + 4..].to_vec(),
    })
}

/// What a complete server frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message (JSON).
    Text,
    /// A binary message (MessagePack).
    Binary,
    /// The server closes, with this code if given.
    Close(Option<u16>),
    /// A ping to answer.
    Ping,
    /// A pong (ignored).
    Pong,
}

/// One complete frame at the front of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameAt {
    /// What it is.
    pub kind: Kind,
    /// Payload position in the buffer.
    pub payload: (usize, usize),
    /// Bytes of the whole frame (header + payload).
    pub len: usize,
}

/// Parses the frame at the start of `buf`: `Ok(None)` if it is not complete yet.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameAt>, String> {
    let mut cursor = Cursor::new(buf);
    let Some((header, length)) = FrameHeader::parse(&mut cursor).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if header.mask.is_some() {
        return Err("server frames must not be masked".into());
    }
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err("reserved bits set without an extension".into());
    }
    if length > MAX_FRAME as u64 {
        return Err(format!("frame of {length} bytes"));
    }
    let start = cursor.position() as usize;
    let end = start + length as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => Kind::Text,
        OpCode::Data(Data::Binary) => Kind::Binary,
        OpCode::Data(other) => return Err(format!("unexpected data opcode {other:?}")),
        OpCode::Control(Control::Close) => {
            let code = (length >= 2).then(|| u16::from_be_bytes([buf[start], buf[start + 1]]));
            Kind::Close(code)
        }
        OpCode::Control(Control::Ping) => Kind::Ping,
        OpCode::Control(Control::Pong) => Kind::Pong,
        OpCode::Control(other) => return Err(format!("unexpected control opcode {other:?}")),
    };
    if !header.is_final {
        return Err("fragmented message (the server sends every message in one frame)".into());
    }
    Ok(Some(FrameAt {
        kind,
        payload: (start, end),
        len: end,
    }))
}

/// A masked client frame (close or pong) ready to write.
pub fn client_frame(opcode: OpCode, payload: Vec<u8>) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0x5a5a_5a5a);
    let header = FrameHeader {
        is_final: true,
        opcode,
        mask: Some(nanos.to_le_bytes()),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 8);
    Frame::from_payload(header, payload)
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Room for one answer frame: 2 header bytes, 4 mask bytes and a JSON payload under 126 bytes
/// (so the 7-bit length form always fits).
pub const ANSWER_MAX: usize = 2 + 4 + 125;

/// Writes into `out` the masked text frame answering packet `sequence` in closed-loop mode,
/// `{"type":"decoded","sequence_number":N,"vx":0,"vy":0}`, and returns its length. Built by
/// hand into a stack buffer because it is written once per packet per client: no allocation.
/// The mask need not be secret here (it guards proxies, and this is loopback); it only has to
/// be present, as RFC 6455 requires of every client frame.
pub fn answer_frame(out: &mut [u8; ANSWER_MAX], sequence: u64, mask: [u8; 4]) -> usize {
    const PREFIX: &[u8] = br#"{"type":"decoded","sequence_number":"#;
    const SUFFIX: &[u8] = br#","vx":0,"vy":0}"#;
    let mut digits = itoa::Buffer::new();
    let number = digits.format(sequence).as_bytes();
    let len = PREFIX.len() + number.len() + SUFFIX.len();
    // At most 36 + 20 + 15 = 71 bytes: the 7-bit length form.
    out[0] = 0x80 | 0x1;
    out[1] = 0x80 | len as u8;
    out[2..6].copy_from_slice(&mask);
    let payload = &mut out[6..6 + len];
    payload[..PREFIX.len()].copy_from_slice(PREFIX);
    payload[PREFIX.len()..PREFIX.len() + number.len()].copy_from_slice(number);
    payload[PREFIX.len() + number.len()..].copy_from_slice(SUFFIX);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    6 + len
}

/// A masked close frame with code 1000.
pub fn close_frame() -> Vec<u8> {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"load test done");
    client_frame(OpCode::Control(Control::Close), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_complete_frames_only() {
        let frame = server_frame(0x1, &[b'x'; 300]);
        assert!(parse_frame(&frame[..1]).unwrap().is_none());
        assert!(parse_frame(&frame[..200]).unwrap().is_none());
        let at = parse_frame(&frame).unwrap().unwrap();
        assert_eq!(at.kind, Kind::Text);
        assert_eq!(at.payload, (4, 304));
        assert_eq!(at.len, 304);
        let close = server_frame(0x8, &1001u16.to_be_bytes());
        assert_eq!(
            parse_frame(&close).unwrap().unwrap().kind,
            Kind::Close(Some(1001))
        );
    }

    #[test]
    fn refuses_masked_and_fragmented_frames() {
        let mut masked = server_frame(0x2, b"ab");
        masked[1] |= 0x80;
        masked.splice(2..2, [1, 2, 3, 4]);
        assert!(parse_frame(&masked).is_err());
        let mut fragment = server_frame(0x2, b"ab");
        fragment[0] &= 0x7f;
        assert!(parse_frame(&fragment).is_err());
    }

    #[test]
    fn answer_frames_are_masked_json_text() {
        let mut out = [0u8; ANSWER_MAX];
        for sequence in [0, 7, u64::MAX] {
            let mask = [0x12, 0x34, 0x56, 0x78];
            let len = answer_frame(&mut out, sequence, mask);
            // Read back as a server would: tungstenite parses the header and unmasks.
            let mut cursor = Cursor::new(&out[..len]);
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(header.mask, Some(mask));
            let start = cursor.position() as usize;
            assert_eq!(start + length as usize, len);
            let mut payload = out[start..len].to_vec();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(
                value,
                serde_json::json!({"type": "decoded", "sequence_number": sequence, "vx": 0, "vy": 0})
            );
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let close = close_frame();
        assert_eq!(close[0], 0x88);
        assert_eq!(close[1] & 0x80, 0x80);
    }
}
