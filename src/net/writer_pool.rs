//! The writer pool: a few threads that write to every client's socket.
//!
//! A thread per client cost a futex wake and a context switch per client per packet — about
//! half of the server's CPU per delivered packet (docs/PERFORMANCE.md). Here each pool thread
//! serves many clients: a timing thread marks the clients it pushed to (their ids land on the
//! pool thread's ready queue) and unparks the pool thread once per tick; the thread then
//! services exactly those clients ([`Writer::service`], non-blocking writes), plus any whose
//! deadline (delay line, retry of a full socket, close grace) has passed.
//!
//! Must never: block on a socket or sleep with clients waiting (one slow client would delay
//! every client of its thread), or let a panic in one client's writer end the thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::writer::{Step, Writer, WriterExit};
use crate::engine::realtime::{self, RealtimeMode};
use crate::engine::WriterWaker;

/// Longest a pool thread parks with nothing to do (it then checks for shutdown).
const IDLE_PARK: Duration = Duration::from_millis(100);

/// Called once when a client's connection is over (detach it, release its place).
pub type OnExit = Box<dyn FnOnce(WriterExit) + Send>;

struct Job {
    writer: Writer,
    queued: Arc<AtomicBool>,
    on_exit: OnExit,
}

struct Worker {
    thread: Thread,
    jobs: Sender<Job>,
    ready: Sender<u64>,
    clients: Arc<AtomicUsize>,
}

/// Threads writing to clients' sockets. Dropping the pool lets each thread end once its
/// clients have finished (the server closes them all first).
pub struct WriterPool {
    workers: Vec<Worker>,
}

impl WriterPool {
    /// Starts `threads` pool threads; each can queue up to `max_clients` ready clients (the
    /// server's client limit, so a ready queue is never full). They run SCHED_FIFO just below
    /// the timing threads unless `realtime` is off.
    pub fn start(threads: usize, max_clients: usize, realtime: RealtimeMode) -> io::Result<Self> {
        let mut workers = Vec::new();
        for n in 0..threads.max(1) {
            let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(max_clients.max(1));
            let clients = Arc::new(AtomicUsize::new(0));
            let count = Arc::clone(&clients);
            let handle = std::thread::Builder::new()
                .name(format!("ws-writer-{n}"))
                .spawn(move || {
                    let fifo = realtime::setup_writer_thread(realtime);
                    log::debug!("writer thread {n}: SCHED_FIFO {fifo}");
                    run(&jobs_rx, &ready_rx, &count)
                })?;
            workers.push(Worker {
                thread: handle.thread().clone(),
                jobs: jobs_tx,
                ready: ready_tx,
                clients,
            });
        }
        Ok(Self { workers })
    }

    /// Hands `writer` to the pool thread with the fewest clients; returns what wakes it.
    /// `on_exit` runs on that thread when the connection is over.
    pub fn add(&self, writer: Writer, on_exit: OnExit) -> WriterWaker {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.clients.load(Relaxed))
            .unwrap_or(&self.workers[0]);
        worker.clients.fetch_add(1, Relaxed);
        // Serviced as soon as the thread takes it, so it starts out queued.
        let queued = Arc::new(AtomicBool::new(true));
        let waker = WriterWaker::pooled(
            worker.thread.clone(),
            worker.ready.clone(),
            writer.client().id,
            Arc::clone(&queued),
        );
        let job = Job {
            writer,
            queued,
            on_exit,
        };
        if let Err(crossbeam_channel::SendError(job)) = worker.jobs.send(job) {
            // The thread has gone (it only ends when the pool is dropped): end the client here.
            worker.clients.fetch_sub(1, Relaxed);
            finish(job, WriterExit::PeerGone);
        }
        worker.thread.unpark();
        waker
    }
}

/// A client on a pool thread, and the deadline it asked to be serviced at.
struct Slot {
    job: Job,
    wake_at: Option<Instant>,
}

/// A pool thread's clients and their deadlines.
#[derive(Default)]
struct Clients {
    slots: HashMap<u64, Slot>,
    /// Deadlines, earliest first; an entry whose slot has since asked for another deadline
    /// (or left) is skipped when it comes up.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
}

fn run(jobs: &Receiver<Job>, ready: &Receiver<u64>, count: &AtomicUsize) {
    let mut clients = Clients::default();
    let mut accepting = true;
    loop {
        let now = Instant::now();
        while accepting {
            match jobs.try_recv() {
                Ok(job) => {
                    let id = job.writer.client().id;
                    job.queued.store(false, Relaxed);
                    clients.slots.insert(id, Slot { job, wake_at: None });
                    clients.service(id, now, count);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => accepting = false,
            }
        }
        while let Ok(id) = ready.try_recv() {
            let Some(slot) = clients.slots.get(&id) else {
                continue; // finished meanwhile, or not taken from `jobs` yet (it will be)
            };
            // AcqRel: reads the waker's mark, so the ring pushes before it are visible.
            slot.job.queued.swap(false, AcqRel);
            clients.service(id, now, count);
        }
        while let Some(&Reverse((at, id))) = clients.timers.peek() {
            if at > now {
                break;
            }
            clients.timers.pop();
            if clients
                .slots
                .get(&id)
                .is_some_and(|s| s.wake_at == Some(at))
            {
                clients.service(id, now, count);
            }
        }
        if !accepting && clients.slots.is_empty() {
            return;
        }
        let wait = match clients.timers.peek() {
            Some(&Reverse((at, _))) => at.saturating_duration_since(Instant::now()),
            None => IDLE_PARK,
        };
        if !wait.is_zero() {
            std::thread::park_timeout(wait.min(IDLE_PARK));
        }
    }
}

impl Clients {
    /// Services one client; finishes it if its connection is over.
    fn service(&mut self, id: u64, now: Instant, count: &AtomicUsize) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let step = std::panic::catch_unwind(AssertUnwindSafe(|| slot.job.writer.service(now)));
        let exit = match step {
            Ok(Step::Wait(at)) => {
                slot.wake_at = at;
                if let Some(at) = at {
                    self.timers.push(Reverse((at, id)));
                }
                return;
            }
            Ok(Step::Done(exit)) => exit,
            Err(_) => {
                log::error!("client {id}: writer panicked");
                WriterExit::PeerGone
            }
        };
        if let Some(slot) = self.slots.remove(&id) {
            count.fetch_sub(1, Relaxed);
            finish(slot.job, exit);
        }
    }
}

/// Ends a client's connection and runs its exit hook; a panic in either is contained.
fn finish(mut job: Job, exit: WriterExit) {
    let id = job.writer.client().id;
    if std::panic::catch_unwind(AssertUnwindSafe(|| job.writer.finish(exit))).is_err() {
        log::error!("client {id}: closing its socket panicked");
    }
    let on_exit = job.on_exit;
    if std::panic::catch_unwind(AssertUnwindSafe(move || on_exit(exit))).is_err() {
        log::error!("client {id}: its exit hook panicked");
    }
}
