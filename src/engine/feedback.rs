//! Closed-loop decoder feedback: what was sent to a client, and how its decoder answered.
//!
//! The writer logs every data packet it writes (sequence number, packet-table row, send
//! time) into a small lock-free ring, [`SentLog`]; the reader looks a decoder's answer up by
//! sequence number, measures the round trip from that send time, and scores the decoded
//! velocity, position and target against the row's ground truth into [`DecoderStats`].
//! Answers older than the window are counted as late, never matched against a reused slot.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::metrics::histogram::{AtomicHistogram, HistConfig, LATENCY};

/// Decoding errors are recorded in thousandths of their unit (mm/s, mm), 2 significant digits,
/// up to a million units.
pub const ERROR: HistConfig = HistConfig {
    lowest: 1,
    highest: 1_000_000_000,
    digits: 2,
};

/// Marks a slot being rewritten.
const WRITING: u64 = u64::MAX;

#[derive(Debug)]
struct Slot {
    sequence: AtomicU64,
    bin: AtomicU32,
    sent_ns: AtomicU64,
}

/// The last `window` packets written to one client.
#[derive(Debug)]
pub struct SentLog {
    slots: Box<[Slot]>,
    newest: AtomicU64,
}

/// Where a decoder's answer stands against the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Packet `bin` was sent at `sent` (nanoseconds on the process clock).
    Sent {
        /// Packet-table row of the packet.
        bin: u32,
        /// When it was handed to the socket, ns since [`process_nanos`]'s origin.
        sent_ns: u64,
    },
    /// Older than the window.
    Late,
    /// Never sent to this client (dropped for it, or not yet generated).
    Unknown,
}

/// Nanoseconds since a fixed origin in this process (monotonic).
pub fn process_nanos(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    at.saturating_duration_since(origin).as_nanos() as u64
}

impl SentLog {
    /// A log of the last `window` packets (at least 1).
    pub fn new(window: usize) -> Self {
        Self {
            slots: (0..window.max(1))
                .map(|_| Slot {
                    sequence: AtomicU64::new(0),
                    bin: AtomicU32::new(0),
                    sent_ns: AtomicU64::new(0),
                })
                .collect(),
            newest: AtomicU64::new(0),
        }
    }

    /// Logs packet `sequence` (row `bin`) as handed to the socket at `sent`, just before the
    /// write (so an answer can never arrive before its packet is logged). Writer thread only.
    pub fn record(&self, sequence: u64, bin: u32, sent: Instant) {
        let slot = &self.slots[(sequence % self.slots.len() as u64) as usize];
        // A seqlock with one writer: readers that see WRITING, or a different sequence after
        // reading the fields, discard what they read.
        slot.sequence.store(WRITING, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.bin.store(bin, Ordering::Relaxed);
        slot.sent_ns.store(process_nanos(sent), Ordering::Relaxed);
        slot.sequence.store(sequence, Ordering::Release);
        self.newest.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Finds packet `sequence`.
    pub fn lookup(&self, sequence: u64) -> Lookup {
        let newest = self.newest.load(Ordering::Relaxed);
        if newest >= sequence.saturating_add(self.slots.len() as u64) {
            return Lookup::Late;
        }
        let slot = &self.slots[(sequence % self.slots.len() as u64) as usize];
        if slot.sequence.load(Ordering::Acquire) != sequence {
            return Lookup::Unknown;
        }
        let bin = slot.bin.load(Ordering::Relaxed);
        let sent_ns = slot.sent_ns.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot.sequence.load(Ordering::Relaxed) != sequence {
            return Lookup::Late; // overwritten while we read: it just left the window
        }
        Lookup::Sent { bin, sent_ns }
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

/// How a client's decoder is doing. Allocated on its first decoder message.
#[derive(Debug)]
pub struct DecoderStats {
    /// Packet handed to the socket → decoded answer received, ns.
    pub round_trip: AtomicHistogram,
    /// |decoded velocity − true velocity|, thousandths of mm/s.
    pub velocity_error: AtomicHistogram,
    /// |decoded position − true position|, thousandths of mm (answers that carry x, y).
    pub position_error: AtomicHistogram,
    /// Decoder messages received (all kinds).
    pub messages: AtomicU64,
    /// Answers matched to a packet.
    pub matched: AtomicU64,
    /// Answers older than the window.
    pub late: AtomicU64,
    /// Answers for packets never sent to this client.
    pub unknown: AtomicU64,
    /// Messages that could not be understood.
    pub malformed: AtomicU64,
    /// Answers with a target that matched the true one.
    pub target_correct: AtomicU64,
    /// Answers with a target, inside a trial.
    pub target_total: AtomicU64,
}

impl Default for DecoderStats {
    fn default() -> Self {
        Self {
            round_trip: AtomicHistogram::new(LATENCY),
            velocity_error: AtomicHistogram::new(ERROR),
            position_error: AtomicHistogram::new(ERROR),
            messages: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            late: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            target_correct: AtomicU64::new(0),
            target_total: AtomicU64::new(0),
        }
    }
}

impl DecoderStats {
    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.round_trip.heap_bytes()
            + self.velocity_error.heap_bytes()
            + self.position_error.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_match_recent_packets_and_refuse_old_ones() {
        let log = SentLog::new(4);
        let t = Instant::now();
        for seq in 1..=10 {
            log.record(seq, seq as u32 * 10, t);
        }
        assert!(matches!(log.lookup(10), Lookup::Sent { bin: 100, .. }));
        assert!(matches!(log.lookup(7), Lookup::Sent { bin: 70, .. }));
        assert_eq!(log.lookup(6), Lookup::Late);
        assert_eq!(log.lookup(11), Lookup::Unknown);
        // A gap (packet 12 dropped for this client) is unknown, not a wrong match.
        log.record(13, 130, t);
        assert_eq!(log.lookup(12), Lookup::Unknown);
    }
}
