//! A client's writer: the only code that writes to the client's socket.
//!
//! It sends the metadata message, then drains the client's ring of shared frames,
//! interleaving (at frame boundaries only) the control frames the reader queues (pongs, close
//! replies). It records tick→socket latency for each packet, and it closes the connection
//! when asked (stall, shutdown, protocol error) or when the reader ends.
//!
//! A writer is a state machine, not a thread: a pool thread ([`super::writer_pool`]) calls
//! [`Writer::service`] when the client is woken or a deadline it asked for passes. Writes
//! never block (`MSG_DONTWAIT`, so the reader's blocking reads on the same socket are
//! untouched): a frame the kernel takes only in part is finished on a later call, and a
//! socket that accepts nothing for the stall timeout is cut. It must never wait, sleep or
//! hold a lock, since other clients share its thread.

use std::io;
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

/// After sending a close frame, how long to wait for the client's reply.
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// How soon a write the kernel refused (send buffer full) is tried again.
const BLOCKED_RETRY: Duration = Duration::from_millis(2);

/// What the pool thread should do next with a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing more to do now: service again when woken, or at this instant at the latest.
    Wait(Option<Instant>),
    /// The connection is over; call [`Writer::finish`].
    Done(WriterExit),
}

/// How a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterExit {
    /// The server closed the connection for this reason.
    Closed(CloseReason),
    /// A write made no progress for the stall timeout, possibly inside a frame, so the stream
    /// could not be closed cleanly (a close frame after half a frame would be garbage to the
    /// client): the connection was cut. The reason is counted as for `Closed`.
    Broken(CloseReason),
    /// The client closed it or went away.
    PeerGone,
}

/// Bytes being written and what they are.
enum Outgoing {
    /// The metadata message.
    Metadata(Frame),
    /// A data packet (shared with every client of its format).
    Packet(Arc<Frame>),
    /// A reply the reader queued, or our close frame.
    Control(Vec<u8>),
}

impl Outgoing {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Metadata(frame) => frame.bytes(),
            Self::Packet(frame) => frame.bytes(),
            Self::Control(bytes) => bytes,
        }
    }
}

/// Everything a client's writer owns.
pub struct Writer {
    socket: TcpStream,
    ring: Consumer<Arc<Frame>>,
    control: Receiver<Vec<u8>>,
    client: Arc<ClientShared>,
    session: Arc<Session>,
    reader_done: Arc<AtomicBool>,
    stall_timeout: Duration,
    /// The frame being written and how many of its bytes the kernel has taken.
    out: Option<(Outgoing, usize)>,
    /// Since when the kernel has refused every byte of `out`.
    blocked_since: Option<Instant>,
    /// A packet taken from the ring that the delay line holds until it is due.
    held: Option<(Arc<Frame>, Instant)>,
    /// Set once the close frame is queued: the exit, and how long to wait for the reply.
    closing: Option<(WriterExit, Instant)>,
    /// Delay line: jitter draws, and the last release time so jitter never reorders packets.
    rng: Pcg32,
    last_due: Instant,
}

impl Writer {
    /// A writer for `client`: `socket` is its own duplicate of the connection, `ring` brings
    /// frames from the timing thread, `control` brings the reader's replies, `reader_done`
    /// says the reader has ended; `metadata` is written first. A socket that takes no byte
    /// for `stall_timeout` is cut.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        socket: TcpStream,
        ring: Consumer<Arc<Frame>>,
        control: Receiver<Vec<u8>>,
        client: Arc<ClientShared>,
        session: Arc<Session>,
        reader_done: Arc<AtomicBool>,
        metadata: Frame,
        stall_timeout: Duration,
    ) -> Self {
        let rng = Pcg32::seed_from_u64(client.id);
        Self {
            socket,
            ring,
            control,
            client,
            session,
            reader_done,
            stall_timeout,
            out: Some((Outgoing::Metadata(metadata), 0)),
            blocked_since: None,
            held: None,
            closing: None,
            rng,
            last_due: Instant::now(),
        }
    }

    /// The client this writer serves.
    pub fn client(&self) -> &Arc<ClientShared> {
        &self.client
    }

    /// Writes whatever is ready without blocking; says when to come back.
    pub fn service(&mut self, now: Instant) -> Step {
        loop {
            if self.out.is_some() {
                match self.write_out(now) {
                    Ok(true) => continue,
                    Ok(false) => return self.blocked(now),
                    Err(exit) => return Step::Done(exit),
                }
            }
            if let Some((exit, deadline)) = self.closing {
                return if self.reader_done.load(Relaxed) || now >= deadline {
                    Step::Done(exit)
                } else {
                    Step::Wait(Some(deadline))
                };
            }
            if let Some(reason) = self.client.close_requested() {
                self.begin_close(WriterExit::Closed(reason), now);
                continue;
            }
            // Read the flag before draining: replies the reader queued before it finished
            // (a close reply) are then sure to be written.
            let reader_done = self.reader_done.load(Relaxed);
            if let Ok(bytes) = self.control.try_recv() {
                self.out = Some((Outgoing::Control(bytes), 0));
                continue;
            }
            if reader_done {
                return Step::Done(WriterExit::PeerGone);
            }
            let next = match self.held.take() {
                Some(held) => Some(held),
                None => self.ring.pop().ok().map(|frame| {
                    self.client
                        .ring_wait
                        .record(frame.tick.elapsed().as_nanos() as u64);
                    let due = self.due(&frame);
                    (frame, due)
                }),
            };
            let Some((frame, due)) = next else {
                return Step::Wait(None);
            };
            if due > now {
                self.held = Some((frame, due));
                return Step::Wait(Some(due));
            }
            // Logged before the write: on loopback a decoder can answer before the write
            // call has even returned, and its answer must find the packet.
            self.client
                .sent
                .record(frame.sequence_number, frame.bin, Instant::now());
            self.out = Some((Outgoing::Packet(frame), 0));
        }
    }

    /// Writes as much of `out` as the kernel takes. `Ok(true)`: all of it; `Ok(false)`: the
    /// send buffer is full; `Err`: the connection is over.
    fn write_out(&mut self, now: Instant) -> Result<bool, WriterExit> {
        let Some((out, written)) = self.out.as_mut() else {
            return Ok(true);
        };
        loop {
            let rest = &out.bytes()[*written..];
            if rest.is_empty() {
                break;
            }
            match send_nonblocking(&self.socket, rest) {
                Ok(0) => return Err(self.write_failed()),
                Ok(n) => {
                    *written += n;
                    self.blocked_since = None;
                    self.client.counters.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked_since.get_or_insert(now);
                    return Ok(false);
                }
                Err(_) => return Err(self.write_failed()),
            }
        }
        if let Some((Outgoing::Packet(frame), _)) = self.out.take() {
            let latency = frame.tick.elapsed().as_nanos() as u64;
            self.client.latency.record(latency);
            self.session.status().latency.record(latency);
            self.client.counters.packets_sent.fetch_add(1, Relaxed);
        }
        Ok(true)
    }

    /// The kernel took nothing: come back shortly, or give up on a stalled client.
    fn blocked(&mut self, now: Instant) -> Step {
        let since = self.blocked_since.unwrap_or(now);
        if let Some((exit, deadline)) = self.closing {
            return if now >= deadline {
                Step::Done(exit)
            } else {
                Step::Wait(Some(deadline.min(now + BLOCKED_RETRY)))
            };
        }
        if now.duration_since(since) >= self.stall_timeout {
            self.client.request_close(CloseReason::Stalled);
        }
        // Asked to close (or stalled) while the socket is full: no point waiting for it.
        let Some(reason) = self.client.close_requested() else {
            return Step::Wait(Some(now + BLOCKED_RETRY));
        };
        let started = self.out.as_ref().is_some_and(|(_, written)| *written > 0);
        if started {
            return Step::Done(WriterExit::Broken(reason));
        }
        // Nothing of the pending frame went out: a close frame can still be tried.
        self.out = None;
        self.begin_close(WriterExit::Closed(reason), now);
        Step::Wait(Some(now + BLOCKED_RETRY))
    }

    /// A failed write: the peer is gone (or, while closing, the close is over).
    fn write_failed(&self) -> WriterExit {
        match self.closing {
            Some((exit, _)) => exit,
            None => WriterExit::PeerGone,
        }
    }

    /// The session's delay line: when the frame is due (tick + latency + jitter, never before
    /// the previous frame).
    fn due(&mut self, frame: &Frame) -> Instant {
        let status = self.session.status();
        let delay = status.delay_us.load(Relaxed);
        let jitter = status.jitter_us.load(Relaxed);
        if delay == 0 && jitter == 0 {
            return frame.tick;
        }
        let extra = if jitter > 0 {
            self.rng.gen_range(0..=jitter)
        } else {
            0
        };
        let due = (frame.tick + Duration::from_micros(delay + extra)).max(self.last_due);
        self.last_due = due;
        due
    }

    /// Queues the close frame; the connection ends once the client replies or the grace
    /// period passes.
    fn begin_close(&mut self, exit: WriterExit, now: Instant) {
        let reason = match exit {
            WriterExit::Closed(reason) | WriterExit::Broken(reason) => reason,
            WriterExit::PeerGone => CloseReason::ServerShutdown,
        };
        let frame = WsFrame::close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.text().into(),
        }));
        let mut bytes = Vec::with_capacity(2 + 2 + reason.text().len());
        if frame.format(&mut bytes).is_ok() {
            self.out = Some((Outgoing::Control(bytes), 0));
        }
        self.blocked_since = None;
        self.closing = Some((exit, now + CLOSE_GRACE));
    }

    /// Ends the connection: counts the reason and shuts the socket down (which also ends the
    /// reader's blocking read).
    pub fn finish(&mut self, exit: WriterExit) {
        if let WriterExit::Closed(reason) | WriterExit::Broken(reason) = exit {
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
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// `send(2)` with `MSG_DONTWAIT`: non-blocking for this call only, since the reader's
/// duplicate of the socket shares its file status flags and must keep blocking reads.
fn send_nonblocking(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}
