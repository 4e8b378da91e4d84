//! Waking a client's writer: how the timing thread, the client's reader and shutdown tell the
//! writer that something is waiting for it (frames in the ring, a reply, a close request).
//!
//! Writers live on a small pool of threads (`net::writer_pool`), each serving many clients.
//! A wake marks the client ready — a flag set once, and the client's id queued to its pool
//! thread on a bounded channel, so the thread services only the clients that have work — and
//! then unparks the thread. The timing thread marks every subscriber first and unparks after
//! the whole fan-out ([`WriterWaker::mark`], [`WriterWaker::unpark`]): an unpark of a thread
//! already woken is an atomic swap, so a tick costs one futex wake per pool thread rather
//! than one per client. Never blocks, never allocates.

use std::sync::atomic::{AtomicBool, Ordering::AcqRel, Ordering::Release};
use std::sync::Arc;
use std::thread::Thread;

use crossbeam_channel::Sender;

/// A handle that wakes one client's writer.
#[derive(Debug, Clone)]
pub struct WriterWaker {
    thread: Thread,
    ready: Option<ReadyQueue>,
}

#[derive(Debug, Clone)]
struct ReadyQueue {
    queue: Sender<u64>,
    id: u64,
    queued: Arc<AtomicBool>,
}

impl WriterWaker {
    /// Wakes a thread that serves this client alone (tests, benchmarks): unpark only.
    pub fn thread(thread: Thread) -> Self {
        Self {
            thread,
            ready: None,
        }
    }

    /// Wakes client `id` on a pool thread: `queue` is that thread's ready queue and `queued`
    /// the client's flag, which the pool thread clears (with `swap(false, AcqRel)`) before it
    /// services the client.
    pub fn pooled(thread: Thread, queue: Sender<u64>, id: u64, queued: Arc<AtomicBool>) -> Self {
        Self {
            thread,
            ready: Some(ReadyQueue { queue, id, queued }),
        }
    }

    /// Marks the client ready without waking its thread. Returns `false` if the ready queue
    /// was full: the flag is then cleared again, so the next mark queues the client (the pool
    /// sizes each queue to the server's client limit, so this does not happen in practice).
    #[inline]
    pub fn mark(&self) -> bool {
        match &self.ready {
            // AcqRel: the pool thread's swap(false) reads this write, so it sees everything
            // pushed into the ring before the mark.
            Some(r) if !r.queued.swap(true, AcqRel) => {
                let queued = r.queue.try_send(r.id).is_ok();
                if !queued {
                    r.queued.store(false, Release);
                }
                queued
            }
            _ => true,
        }
    }

    /// Unparks the writer's thread (cheap when it was already unparked).
    #[inline]
    pub fn unpark(&self) {
        self.thread.unpark();
    }

    /// Marks the client ready and unparks its thread.
    #[inline]
    pub fn wake(&self) {
        self.mark();
        self.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_queued_once_until_serviced() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let queued = Arc::new(AtomicBool::new(false));
        let waker = WriterWaker::pooled(std::thread::current(), tx, 7, Arc::clone(&queued));
        waker.wake();
        waker.wake();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![7]);
        assert!(queued.swap(false, AcqRel), "serviced: flag cleared");
        waker.mark();
        assert_eq!(rx.try_recv(), Ok(7), "queued again after service");
    }

    #[test]
    fn a_full_queue_is_reported_and_the_next_mark_retries() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let a = WriterWaker::pooled(std::thread::current(), tx.clone(), 1, Arc::default());
        let b = WriterWaker::pooled(std::thread::current(), tx, 2, Arc::default());
        assert!(a.mark());
        assert!(!b.mark());
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(b.mark(), "b's flag was cleared when its id did not fit");
        assert_eq!(rx.try_recv(), Ok(2));
    }
}
