//! Fan-out from a timing thread to its clients: shared frames and per-client rings.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtrb::{Producer, PushError};

use super::{ClientShared, CloseReason, WriterWaker};
use crate::codec::Frame;

/// The timing thread's handle on one client.
pub struct Subscriber {
    /// Producing end of the client's ring of shared frames.
    pub ring: Producer<Arc<Frame>>,
    /// State shared with the client's writer and metrics.
    pub client: Arc<ClientShared>,
    /// Wakes the client's writer: marked at each push, unparked once the tick's fan-out is
    /// done.
    pub writer: WriterWaker,
    full_since: Option<Instant>,
}

/// What happened when a frame was offered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the ring; the writer was marked ready (unpark it after the fan-out).
    Queued,
    /// The ring was full: dropped for this client, counted.
    Dropped,
    /// The ring has been full for longer than the stall timeout: the client is asked to close
    /// and should be unsubscribed.
    Stalled,
    /// The writer has gone away: unsubscribe.
    Gone,
}

impl Subscriber {
    /// A subscriber for `client`, whose writer `writer` wakes.
    pub fn new(ring: Producer<Arc<Frame>>, client: Arc<ClientShared>, writer: WriterWaker) -> Self {
        Self {
            ring,
            client,
            writer,
            full_since: None,
        }
    }

    /// Offers `frame` to the client and marks its writer ready; the caller unparks it
    /// ([`WriterWaker::unpark`]) after offering the frame to every subscriber. Never blocks;
    /// never allocates (an `Arc` clone is an atomic increment); no syscall except the wake of
    /// a writer asked to close.
    #[inline]
    pub fn offer(&mut self, frame: &Arc<Frame>, now: Instant, stall_timeout: Duration) -> Delivery {
        if self.ring.is_abandoned() {
            return Delivery::Gone;
        }
        match self.ring.push(Arc::clone(frame)) {
            Ok(()) => {
                self.full_since = None;
                let occupancy = self.ring.buffer().capacity() - self.ring.slots();
                self.client.note_ring_occupancy(occupancy);
                self.writer.mark();
                Delivery::Queued
            }
            Err(PushError::Full(_)) => {
                self.client.counters.dropped_packets.fetch_add(1, Relaxed);
                self.client
                    .note_ring_occupancy(self.ring.buffer().capacity());
                let since = *self.full_since.get_or_insert(now);
                if now.duration_since(since) > stall_timeout {
                    self.client.request_close(CloseReason::Stalled);
                    self.writer.wake();
                    Delivery::Stalled
                } else {
                    Delivery::Dropped
                }
            }
        }
    }
}

/// Frames of one wire format, reused round-robin.
///
/// A slot is reused only when the pool holds the last reference (every ring and writer has
/// let go); otherwise a new frame replaces it and the miss is counted. With `capacity` above
/// the ring size plus frames in flight, misses only happen for clients that stall.
pub struct FramePool {
    frames: Vec<Arc<Frame>>,
    next: usize,
    frame_capacity: usize,
    misses: u64,
}

impl FramePool {
    /// A pool of `slots` frames whose buffers start with `frame_capacity` bytes.
    pub fn new(slots: usize, frame_capacity: usize) -> Self {
        Self {
            frames: (0..slots.max(1))
                .map(|_| Arc::new(Frame::with_capacity(frame_capacity)))
                .collect(),
            next: 0,
            frame_capacity,
            misses: 0,
        }
    }

    /// A frame nobody else references, to be filled, and its slot index.
    #[inline]
    pub fn acquire(&mut self) -> (usize, &mut Frame) {
        let index = self.next;
        self.next = (self.next + 1) % self.frames.len();
        if Arc::get_mut(&mut self.frames[index]).is_none() {
            self.misses += 1;
            self.frames[index] = Arc::new(Frame::with_capacity(self.frame_capacity));
        }
        let frame = Arc::get_mut(&mut self.frames[index]).expect("fresh or unshared frame");
        (index, frame)
    }

    /// The frame in slot `index`, to hand to subscribers.
    #[inline]
    pub fn shared(&self, index: usize) -> &Arc<Frame> {
        &self.frames[index]
    }

    /// Times a slot had to be replaced because a client still held its frame.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Bytes of heap the pool holds.
    pub fn heap_bytes(&self) -> usize {
        self.frames.iter().map(|f| f.heap_bytes()).sum::<usize>()
            + self.frames.capacity() * std::mem::size_of::<Arc<Frame>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireFormat;
    use rtrb::RingBuffer;

    fn subscriber(capacity: usize) -> (Subscriber, rtrb::Consumer<Arc<Frame>>) {
        let (tx, rx) = RingBuffer::new(capacity);
        let client = Arc::new(ClientShared::new(
            1,
            "127.0.0.1:9".parse().unwrap(),
            WireFormat::Json,
            capacity,
        ));
        (
            Subscriber::new(tx, client, WriterWaker::thread(std::thread::current())),
            rx,
        )
    }

    #[test]
    fn full_ring_drops_then_stalls() {
        let (mut sub, rx) = subscriber(2);
        let frame = Arc::new(Frame::with_capacity(8));
        let t0 = Instant::now();
        let stall = Duration::from_secs(1);
        assert_eq!(sub.offer(&frame, t0, stall), Delivery::Queued);
        assert_eq!(sub.offer(&frame, t0, stall), Delivery::Queued);
        assert_eq!(sub.offer(&frame, t0, stall), Delivery::Dropped);
        assert_eq!(sub.offer(&frame, t0 + stall / 2, stall), Delivery::Dropped);
        assert_eq!(sub.offer(&frame, t0 + stall * 2, stall), Delivery::Stalled);
        assert_eq!(sub.client.counters.dropped_packets.load(Relaxed), 3);
        assert_eq!(sub.client.counters.ring_high_water.load(Relaxed), 2);
        assert_eq!(sub.client.close_requested(), Some(CloseReason::Stalled));
        drop(rx);
        assert_eq!(sub.offer(&frame, t0, stall), Delivery::Gone);
    }

    #[test]
    fn pool_reuses_frames_once_released() {
        let mut pool = FramePool::new(2, 16);
        let (first, _) = pool.acquire();
        let held = Arc::clone(pool.shared(first));
        pool.acquire();
        pool.acquire(); // slot `first` again, still held: replaced
        assert_eq!(pool.misses(), 1);
        drop(held);
        pool.acquire();
        pool.acquire();
        assert_eq!(pool.misses(), 1);
    }
}
