//! A client's writer thread: the only thread that writes to the client's socket.
//!
//! It sends the metadata message, then drains the client's ring of shared frames with
//! blocking writes, interleaving (at frame boundaries only) the control frames the reader
//! queues (pongs, close replies). It records tick→socket latency for each packet, and it
//! closes the connection when asked (stall, shutdown, protocol error) or when the reader ends.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg32;
use rtrb::Consumer;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};

use crate::codec::Frame;
use crate::engine::{ClientShared, CloseReason, Session};

/// How long the writer sleeps when idle before re-checking close requests.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// After sending a close frame, how long to wait for the client's reply.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// Everything a writer thread owns.
pub struct Writer {
    socket: TcpStream,
    ring: Consumer<Arc<Frame>>,
    control: Receiver<Vec<u8>>,
    client: Arc<ClientShared>,
    session: Arc<Session>,
    reader_done: Arc<AtomicBool>,
    /// Delay line: jitter draws, and the last release time so jitter never reorders packets.
    rng: Pcg32,
    last_due: Instant,
}

/// How a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterExit {
    /// The server closed the connection for this reason.
    Closed(CloseReason),
    /// A write timed out, possibly inside a frame, so the stream could not be closed cleanly
    /// (a close frame after half a frame would be garbage to the client): the connection was
    /// cut. The reason is counted as for `Closed`.
    Broken(CloseReason),
    /// The client closed it or went away.
    PeerGone,
}

impl Writer {
    /// A writer for `client`: `socket` is its own duplicate of the connection, `ring` brings
    /// frames from the timing thread, `control` brings the reader's replies, `reader_done`
    /// says the reader has ended.
    pub fn new(
        socket: TcpStream,
        ring: Consumer<Arc<Frame>>,
        control: Receiver<Vec<u8>>,
        client: Arc<ClientShared>,
        session: Arc<Session>,
        reader_done: Arc<AtomicBool>,
    ) -> Self {
        let rng = Pcg32::seed_from_u64(client.id);
        Self {
            socket,
            ring,
            control,
            client,
            session,
            reader_done,
            rng,
            last_due: Instant::now(),
        }
    }

    /// Sends `metadata`, then streams until the connection ends.
    pub fn run(mut self, metadata: Frame) -> WriterExit {
        let exit = self.stream(metadata);
        match exit {
            WriterExit::Closed(reason) | WriterExit::Broken(reason) => {
                let status = self.session.status();
                let counter = match reason {
                    CloseReason::Stalled => Some(&status.clients_stalled),
                    CloseReason::ProtocolError => Some(&status.clients_protocol_error),
                    CloseReason::MessageTooBig => Some(&status.clients_message_too_big),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Relaxed);
                }
                if matches!(exit, WriterExit::Closed(_)) {
                    self.close(reason);
                }
            }
            WriterExit::PeerGone => {}
        }
        let _ = self.socket.shutdown(Shutdown::Both);
        exit
    }

    fn stream(&mut self, metadata: Frame) -> WriterExit {
        if self.write_counted(metadata.bytes()).is_err() {
            return WriterExit::PeerGone;
        }
        loop {
            if let Some(reason) = self.client.close_requested() {
                return WriterExit::Closed(reason);
            }
            // Read the flag before draining: replies the reader queued before it finished
            // (a close reply) are then sure to be written.
            let reader_done = self.reader_done.load(Relaxed);
            while let Ok(bytes) = self.control.try_recv() {
                if let Err(e) = self.write_counted(&bytes) {
                    return self.failed(e);
                }
            }
            if reader_done {
                return WriterExit::PeerGone;
            }
            let mut wrote = false;
            while let Ok(frame) = self.ring.pop() {
                self.client
                    .ring_wait
                    .record(frame.tick.elapsed().as_nanos() as u64);
                if let Some(exit) = self.hold(&frame) {
                    return exit;
                }
                // Logged before the write: on loopback a decoder can answer before the write
                // call has even returned, and its answer must find the packet.
                self.client
                    .sent
                    .record(frame.sequence_number, frame.bin, Instant::now());
                if let Err(e) = self.write_counted(frame.bytes()) {
                    return self.failed(e);
                }
                let latency = frame.tick.elapsed().as_nanos() as u64;
                self.client.latency.record(latency);
                self.session.status().latency.record(latency);
                self.client.counters.packets_sent.fetch_add(1, Relaxed);
                wrote = true;
            }
            if !wrote && self.control.is_empty() {
                // unpark() from the timing thread or reader ends this early; a token left by
                // an unpark that raced with the ring check makes it return at once.
                std::thread::park_timeout(IDLE_PARK);
            }
        }
    }

    /// The session's delay line: waits until the frame is due (tick + latency + jitter, never
    /// before the previous frame). Returns early if the client is asked to close meanwhile.
    fn hold(&mut self, frame: &Frame) -> Option<WriterExit> {
        let status = self.session.status();
        let delay = status.delay_us.load(Relaxed);
        let jitter = status.jitter_us.load(Relaxed);
        if delay == 0 && jitter == 0 {
            return None;
        }
        let extra = if jitter > 0 {
            self.rng.gen_range(0..=jitter)
        } else {
            0
        };
        let due = (frame.tick + Duration::from_micros(delay + extra)).max(self.last_due);
        self.last_due = due;
        loop {
            if let Some(reason) = self.client.close_requested() {
                return Some(WriterExit::Closed(reason));
            }
            let now = Instant::now();
            if now >= due {
                return None;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
        }
    }

    fn write_counted(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.socket.write_all(bytes)?;
        self.client
            .counters
            .bytes_sent
            .fetch_add(bytes.len() as u64, Relaxed);
        Ok(())
    }

    /// A failed write: a timeout means the client stopped reading; anything else means it left.
    fn failed(&self, error: io::Error) -> WriterExit {
        match error.kind() {
            // The write may have stopped inside a frame: no close frame may follow it.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.client.request_close(CloseReason::Stalled);
                WriterExit::Broken(CloseReason::Stalled)
            }
            _ => WriterExit::PeerGone,
        }
    }

    /// Sends a close frame (best effort, short timeout) and waits briefly for the reply.
    fn close(&mut self, reason: CloseReason) {
        let frame = WsFrame::close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.text().into(),
        }));
        let mut bytes = Vec::with_capacity(2 + 2 + reason.text().len());
        if frame.format(&mut bytes).is_ok() {
            let _ = self
                .socket
                .set_write_timeout(Some(Duration::from_millis(100)));
            let _ = self.socket.write_all(&bytes);
        }
        let deadline = Instant::now() + CLOSE_GRACE;
        while !self.reader_done.load(Relaxed) && Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}
