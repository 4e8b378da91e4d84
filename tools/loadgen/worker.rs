//! Worker threads: each owns a share of the clients and reads them all from one epoll loop,
//! so a few threads serve thousands of clients and every socket is read as soon as data lands
//! (a client must never hold the server back).

use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::client::{Client, Ctx, Overall, END_OF_RUN};

/// Connecting and warming up: read, do not measure.
pub const PHASE_WARMUP: u8 = 0;
/// The measurement window.
pub const PHASE_MEASURE: u8 = 1;
/// After the window: keep reading (draining), do not measure.
pub const PHASE_DRAIN: u8 = 2;
/// Close every client and return.
pub const PHASE_STOP: u8 = 3;

/// How long an epoll wait may last before the phase is looked at again.
const WAIT: Duration = Duration::from_millis(10);
/// After sending close frames, how long to wait for the server's replies.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// Events taken per epoll wait.
const MAX_EVENTS: usize = 256;

/// What the coordinator and the workers share.
pub struct Shared {
    /// One of the `PHASE_*` values.
    pub phase: AtomicU8,
    /// Clients connected so far.
    pub connected: AtomicUsize,
    /// Clients that could not connect.
    pub failed: AtomicUsize,
    /// Clients closed before the end of the run.
    pub closed: AtomicUsize,
    /// Clients that reached the packet target.
    pub done: AtomicUsize,
    /// Data packets received in the window, all workers.
    pub window_packets: AtomicU64,
    /// Data packets received since connect, all workers.
    pub packets: AtomicU64,
    /// Full decode of every Nth packet.
    pub verify_every: u64,
    /// Packets per client in the window, if bounded by packets.
    pub target_packets: Option<u64>,
    /// Answer every data packet with a decoder message (`--closed-loop`).
    pub closed_loop: bool,
    /// After a wait that returned events, sleep this long so the next wait collects more.
    pub coalesce: Duration,
}

/// What a worker hands back.
pub struct WorkerResult {
    /// Its clients, open or not.
    pub clients: Vec<Client>,
    /// Its overall histograms.
    pub overall: Overall,
}

struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned by the returned value.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> usize {
        // SAFETY: `events` is valid writable memory for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout.as_millis() as i32,
            )
        };
        n.max(0) as usize
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this value owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// Runs a worker until the coordinator says stop or `hard_deadline` passes.
pub fn run(
    incoming: Receiver<Client>,
    shared: Arc<Shared>,
    hard_deadline: Instant,
) -> WorkerResult {
    let mut clients: Vec<Client> = Vec::new();
    let mut overall = Overall::new();
    let epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            eprintln!("loadgen: epoll_create1: {e}");
            shared.phase.store(PHASE_STOP, Relaxed);
            return WorkerResult { clients, overall };
        }
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        let phase = shared.phase.load(Relaxed);
        if phase == PHASE_STOP || Instant::now() >= hard_deadline {
            break;
        }
        let mut ctx = Ctx {
            measuring: phase == PHASE_MEASURE,
            verify_every: shared.verify_every,
            target_packets: shared.target_packets,
            closed_loop: shared.closed_loop,
            overall: &mut overall,
        };
        while let Ok(mut client) = incoming.try_recv() {
            let token = clients.len() as u64;
            if let Some(fd) = client.fd() {
                match epoll.add(fd, token) {
                    Ok(()) => {
                        client.process(&mut ctx, None);
                    }
                    Err(e) => client.close(format!("epoll_ctl: {e}")),
                }
            }
            clients.push(client);
        }
        let ready = epoll.wait(&mut events, WAIT);
        if ready > 0 && !shared.coalesce.is_zero() {
            // Fewer, larger batches: arrival times come from the kernel's receive stamps, so
            // waiting here does not change the latency measured, only the load generator's cost.
            std::thread::sleep(shared.coalesce);
        }
        for event in &events[..ready] {
            let Some(client) = clients.get_mut(event.u64 as usize) else {
                continue;
            };
            if !client.is_open() {
                continue;
            }
            let before = client.stats.packets;
            let window_before = client.stats.window_packets;
            if client.on_readable(&mut ctx) {
                shared.done.fetch_add(1, Relaxed);
            }
            shared
                .packets
                .fetch_add(client.stats.packets - before, Relaxed);
            shared
                .window_packets
                .fetch_add(client.stats.window_packets - window_before, Relaxed);
            if !client.is_open() {
                shared.closed.fetch_add(1, Relaxed);
            }
        }
    }
    close_all(&epoll, &mut clients, &mut events, &mut overall);
    WorkerResult { clients, overall }
}

/// Sends a close frame to every open client, reads until the server closes them or the grace
/// period ends, then drops every socket.
fn close_all(
    epoll: &Epoll,
    clients: &mut [Client],
    events: &mut [libc::epoll_event],
    overall: &mut Overall,
) {
    for client in clients.iter_mut() {
        client.send_close();
    }
    let deadline = Instant::now() + CLOSE_GRACE;
    let mut ctx = Ctx {
        measuring: false,
        verify_every: 0,
        target_packets: None,
        // The run is over: no more answers, only the close handshake.
        closed_loop: false,
        overall,
    };
    while clients.iter().any(Client::is_open) && Instant::now() < deadline {
        let ready = epoll.wait(events, WAIT);
        for event in &events[..ready] {
            if let Some(client) = clients.get_mut(event.u64 as usize) {
                if client.is_open() {
                    client.on_readable(&mut ctx);
                }
            }
        }
    }
    for client in clients.iter_mut() {
        client.close(END_OF_RUN.into());
    }
}
