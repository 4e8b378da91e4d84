//! Taps: consumers of every tick beside the WebSocket clients (the LSL outlets are one).
//!
//! A session has at most one tap. Each tick its timing thread takes a recycled counts buffer
//! from the tap's return ring, copies the tick's spike counts into it (after noise, so they
//! equal what WebSocket clients receive), and pushes a [`TapSample`] into the tap's sample
//! ring, then unparks the consumer thread. The consumer reads the sample and hands the buffer
//! back with [`TapReceiver::recycle`]. Both rings are rtrb (wait-free, single producer, single
//! consumer) and every buffer is allocated up front, so the tick neither allocates nor locks.
//! When the consumer keeps every buffer (it stalls), the tick's sample is dropped for the tap
//! alone and counted in [`SessionStatus::tap_dropped`](super::SessionStatus::tap_dropped).
//!
//! A tap counts as a listener: installing one starts the session's clock (so a session with a
//! tap plays from creation, without WebSocket clients), and its ticks are slept finely and
//! their lateness recorded, as with clients.
//!
//! The consumer side is pluggable: a [`TapSource`] given to the
//! [`Registry`](super::Registry) starts one consumer per session when the session is created,
//! and the session stops it when it ends (deletion, eviction, TTL cleanup, shutdown).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::Instant;

use rtrb::{Consumer, Producer, PushError, RingBuffer};

use crate::dataset::PacketTable;
use crate::metrics::histogram::{AtomicHistogram, LATENCY};

/// Samples a session's tap can have in flight (1.6 s of ticks): consumers are expected to keep
/// up within a tick or two; this absorbs a hiccup, beyond it samples are dropped and counted.
pub const TAP_SLOTS: usize = 64;

/// One tick, as a tap receives it.
#[derive(Debug)]
pub struct TapSample {
    /// Sequence number of the tick's packet (the `sequence_number` WebSocket clients see).
    pub sequence: u64,
    /// Packet-table row played (`bin_index`): look up kinematics and intention there.
    pub bin: u32,
    /// The tick's absolute deadline (`t0 + n·25 ms`), not the time it woke: consumers that
    /// timestamp from it see exactly one period between ticks.
    pub deadline: Instant,
    /// Spike counts of the tick, noise applied. Hand it back with [`TapReceiver::recycle`].
    pub counts: Box<[u16]>,
}

/// The timing thread's end of a tap.
pub struct Tap {
    samples: Producer<TapSample>,
    free: Consumer<Box<[u16]>>,
    /// A buffer taken from `free` whose sample could not be queued, used next.
    spare: Option<Box<[u16]>>,
    consumer: Option<Thread>,
    heap_bytes: usize,
}

/// The consumer's end of a tap.
pub struct TapReceiver {
    samples: Consumer<TapSample>,
    free: Producer<Box<[u16]>>,
}

/// What happened when a tick was offered to a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDelivery {
    /// Queued; the consumer was woken.
    Queued,
    /// No free buffer (the consumer is behind): dropped for the tap, counted.
    Dropped,
    /// The consumer has gone away: remove the tap.
    Gone,
}

/// A tap for `units` channels with `slots` buffers, allocated here (not on the timing thread).
pub fn tap(units: usize, slots: usize) -> (Tap, TapReceiver) {
    let slots = slots.max(1);
    let (samples_tx, samples_rx) = RingBuffer::new(slots);
    let (mut free_tx, free_rx) = RingBuffer::<Box<[u16]>>::new(slots);
    for _ in 0..slots {
        let pushed = free_tx.push(vec![0u16; units].into_boxed_slice());
        debug_assert!(pushed.is_ok(), "the return ring holds every buffer");
    }
    let heap_bytes = slots
        * (units * std::mem::size_of::<u16>()
            + std::mem::size_of::<TapSample>()
            + std::mem::size_of::<Box<[u16]>>());
    (
        Tap {
            samples: samples_tx,
            free: free_rx,
            spare: None,
            consumer: None,
            heap_bytes,
        },
        TapReceiver {
            samples: samples_rx,
            free: free_tx,
        },
    )
}

impl Tap {
    /// Unpark `thread` after each sample (the consumer may also poll).
    pub fn wake(&mut self, thread: Thread) {
        self.consumer = Some(thread);
    }

    /// Bytes the tap's buffers and rings hold.
    pub fn heap_bytes(&self) -> usize {
        self.heap_bytes
    }

    /// Offers one tick. Never blocks, never allocates: the counts are copied into a recycled
    /// buffer; the only syscall is the futex wake inside `unpark`.
    #[inline]
    pub fn offer(
        &mut self,
        sequence: u64,
        bin: u32,
        deadline: Instant,
        counts: &[u16],
    ) -> TapDelivery {
        if self.samples.is_abandoned() {
            return TapDelivery::Gone;
        }
        let Some(mut buffer) = self.spare.take().or_else(|| self.free.pop().ok()) else {
            return TapDelivery::Dropped;
        };
        let n = counts.len().min(buffer.len());
        buffer[..n].copy_from_slice(&counts[..n]);
        let sample = TapSample {
            sequence,
            bin,
            deadline,
            counts: buffer,
        };
        match self.samples.push(sample) {
            Ok(()) => {
                if let Some(thread) = &self.consumer {
                    thread.unpark();
                }
                TapDelivery::Queued
            }
            // Cannot happen while buffers and slots are as many, but keep the buffer if it does.
            Err(PushError::Full(sample)) => {
                self.spare = Some(sample.counts);
                TapDelivery::Dropped
            }
        }
    }
}

impl TapReceiver {
    /// The oldest tick not yet taken, if any. Never blocks.
    pub fn pop(&mut self) -> Option<TapSample> {
        self.samples.pop().ok()
    }

    /// Hands a sample's counts buffer back to the timing thread. A buffer not handed back is a
    /// buffer fewer: the tap then drops ticks sooner.
    pub fn recycle(&mut self, counts: Box<[u16]>) {
        // The ring holds every buffer there is, so it has room for this one.
        let _ = self.free.push(counts);
    }

    /// Whether the timing thread has let go of the tap (the session has ended or the tap was
    /// replaced); samples still queued can be popped.
    pub fn is_abandoned(&self) -> bool {
        self.samples.is_abandoned()
    }

    /// Ticks waiting to be taken.
    pub fn pending(&self) -> usize {
        self.samples.slots()
    }
}

/// What a tap's consumer publishes (for `/metrics` and `/api/stats`), lock-free.
#[derive(Debug)]
pub struct TapShared {
    /// What kind of consumer it is (`lsl`).
    pub kind: &'static str,
    /// Names of what it publishes (for LSL, the stream names).
    pub streams: Vec<String>,
    /// Tick deadline → the consumer done with the tick (for LSL: the pushes returned), ns.
    pub latency: AtomicHistogram,
    /// Ticks the consumer has handled.
    pub samples: AtomicU64,
    /// Ticks the consumer failed to publish.
    pub errors: AtomicU64,
}

impl TapShared {
    /// Nothing recorded yet.
    pub fn new(kind: &'static str, streams: Vec<String>) -> Self {
        Self {
            kind,
            streams,
            latency: AtomicHistogram::new(LATENCY),
            samples: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Bytes it holds.
    pub fn heap_bytes(&self) -> usize {
        self.latency.heap_bytes()
            + self.streams.iter().map(String::capacity).sum::<usize>()
            + std::mem::size_of::<Self>()
    }
}

/// A running consumer of one session's tap.
pub struct TapConsumer {
    /// What it publishes.
    pub shared: Arc<TapShared>,
    /// Its thread: it must end once [`TapReceiver::is_abandoned`] and the ring is empty.
    pub thread: JoinHandle<()>,
}

/// Starts a tap consumer for each session (the LSL outlets, with the `lsl` feature).
pub trait TapSource: Send + Sync {
    /// What kind of consumer it starts (`lsl`).
    fn kind(&self) -> &'static str;

    /// Starts a consumer of session `code`'s ticks from `receiver`, playing rows of `table`.
    /// Called on a network thread when the session is created; may block briefly (the
    /// consumer should be publishing when it returns).
    fn start(
        &self,
        code: &str,
        table: Arc<PacketTable>,
        receiver: TapReceiver,
    ) -> Result<TapConsumer, String>;

    /// Its settings, for `/api/stats`.
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_and_a_stalled_consumer_drops() {
        let (mut tap, mut rx) = tap(3, 2);
        let now = Instant::now();
        assert_eq!(tap.offer(1, 10, now, &[1, 2, 3]), TapDelivery::Queued);
        assert_eq!(tap.offer(2, 11, now, &[4, 5, 6]), TapDelivery::Queued);
        assert_eq!(tap.offer(3, 12, now, &[7, 8, 9]), TapDelivery::Dropped);
        let first = rx.pop().unwrap();
        assert_eq!(
            (first.sequence, first.bin, &*first.counts),
            (1, 10, &[1, 2, 3][..])
        );
        rx.recycle(first.counts);
        assert_eq!(tap.offer(4, 13, now, &[0, 0, 9]), TapDelivery::Queued);
        assert_eq!(&*rx.pop().unwrap().counts, &[4, 5, 6]);
        assert_eq!(&*rx.pop().unwrap().counts, &[0, 0, 9]);
        drop(rx);
        assert_eq!(tap.offer(5, 14, now, &[1, 1, 1]), TapDelivery::Gone);
    }

    #[test]
    fn receiver_sees_the_tap_go() {
        let (tap, rx) = tap(1, 1);
        assert!(!rx.is_abandoned());
        drop(tap);
        assert!(rx.is_abandoned());
    }
}
