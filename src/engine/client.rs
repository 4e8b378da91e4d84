//! State of one connected client that the timing thread, its writer and `/metrics` share.
//!
//! Everything here is atomics: the timing thread updates drop counts and the ring high-water
//! mark, the writer updates what it sent, readers of metrics load them. A close request is a
//! single atomic byte so the timing thread can ask for one (a stalled client) without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::SystemTime;

use crate::codec::WireFormat;
use std::sync::OnceLock;

use super::feedback::{DecoderStats, SentLog};
use crate::metrics::histogram::{AtomicHistogram, LATENCY};

/// Why the server closes a client, with its WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client's ring stayed full, or a write blocked, for longer than the stall timeout.
    Stalled = 1,
    /// The server is shutting down.
    ServerShutdown = 2,
    /// The session was deleted or expired.
    SessionClosed = 3,
    /// The client broke the WebSocket protocol.
    ProtocolError = 4,
    /// The client sent a message larger than the limit.
    MessageTooBig = 5,
    /// The session could not take the client after the upgrade (its control queue was full).
    TryAgainLater = 6,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Stalled => 1008,
            CloseReason::ServerShutdown | CloseReason::SessionClosed => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::MessageTooBig => 1009,
            CloseReason::TryAgainLater => 1013,
        }
    }

    /// Close reason text sent to the client (at most 123 bytes).
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Stalled => {
                "client too slow: stream buffer stayed full past the stall timeout"
            }
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::SessionClosed => "session closed",
            CloseReason::ProtocolError => "websocket protocol error",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::TryAgainLater => "session busy, try again",
        }
    }

    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => CloseReason::Stalled,
            2 => CloseReason::ServerShutdown,
            3 => CloseReason::SessionClosed,
            4 => CloseReason::ProtocolError,
            5 => CloseReason::MessageTooBig,
            6 => CloseReason::TryAgainLater,
            _ => return None,
        })
    }
}

/// Counters of one client, updated lock-free.
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// Data packets written to the socket.
    pub packets_sent: AtomicU64,
    /// Packets dropped because the client's ring was full.
    pub dropped_packets: AtomicU64,
    /// Bytes written to the socket, frames included.
    pub bytes_sent: AtomicU64,
    /// Most packets ever waiting in the client's ring at once.
    pub ring_high_water: AtomicUsize,
    /// Messages received from the client (text or binary).
    pub messages_received: AtomicU64,
}

/// One client, as seen by everyone who needs to know about it.
#[derive(Debug)]
pub struct ClientShared {
    /// Server-wide unique client id.
    pub id: u64,
    /// Peer address.
    pub remote: SocketAddr,
    /// Wire format the client asked for.
    pub format: WireFormat,
    /// When the client connected.
    pub connected_at: SystemTime,
    /// Capacity of its ring in packets.
    pub ring_capacity: usize,
    /// Its counters.
    pub counters: ClientCounters,
    /// Tick → write to its socket returned, ns.
    pub latency: AtomicHistogram,
    /// Tick → its writer took the packet from the ring, ns.
    pub ring_wait: AtomicHistogram,
    /// The last packets written, for matching decoder answers.
    pub sent: SentLog,
    /// Decoder feedback figures, once the client sends any.
    pub decoder: OnceLock<Box<DecoderStats>>,
    close: AtomicU8,
}

impl ClientShared {
    /// A freshly connected client.
    pub fn new(id: u64, remote: SocketAddr, format: WireFormat, ring_capacity: usize) -> Self {
        Self::with_feedback_window(id, remote, format, ring_capacity, 40)
    }

    /// A freshly connected client whose decoder answers are matched over `window` packets.
    pub fn with_feedback_window(
        id: u64,
        remote: SocketAddr,
        format: WireFormat,
        ring_capacity: usize,
        window: usize,
    ) -> Self {
        Self {
            id,
            remote,
            format,
            connected_at: SystemTime::now(),
            ring_capacity,
            counters: ClientCounters::default(),
            latency: AtomicHistogram::new(LATENCY),
            ring_wait: AtomicHistogram::new(LATENCY),
            sent: SentLog::new(window),
            decoder: OnceLock::new(),
            close: AtomicU8::new(0),
        }
    }

    /// Asks the writer to close the connection; the first reason given wins.
    pub fn request_close(&self, reason: CloseReason) {
        let _ = self
            .close
            .compare_exchange(0, reason as u8, Relaxed, Relaxed);
    }

    /// The close asked for, if any.
    pub fn close_requested(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.close.load(Relaxed))
    }

    /// Bytes this client's state holds (histograms, ring slots, the struct itself).
    pub fn heap_bytes(&self) -> usize {
        self.latency.heap_bytes()
            + self.ring_wait.heap_bytes()
            + self.sent.heap_bytes()
            + self.decoder.get().map_or(0, |d| d.heap_bytes())
            + self.ring_capacity * std::mem::size_of::<usize>()
            + std::mem::size_of::<Self>()
    }

    /// Records that the ring held `occupancy` packets; keeps the maximum.
    /// Only the timing thread calls this, so a load and a store suffice.
    #[inline]
    pub fn note_ring_occupancy(&self, occupancy: usize) {
        if occupancy > self.counters.ring_high_water.load(Relaxed) {
            self.counters.ring_high_water.store(occupancy, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_close_reason_wins() {
        let client = ClientShared::new(1, "127.0.0.1:1".parse().unwrap(), WireFormat::Json, 4);
        assert_eq!(client.close_requested(), None);
        client.request_close(CloseReason::Stalled);
        client.request_close(CloseReason::ServerShutdown);
        assert_eq!(client.close_requested(), Some(CloseReason::Stalled));
        assert_eq!(CloseReason::Stalled.code(), 1008);
        assert!(CloseReason::Stalled.text().len() <= 123);
    }
}
