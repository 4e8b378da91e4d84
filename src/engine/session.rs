//! One session: its timing thread's handle, its status, and its clients.
//!
//! The timing thread publishes through [`SessionStatus`] (atomics and atomic histograms); it
//! never touches [`SessionState`], whose mutex is taken only by network threads (HTTP
//! handlers, client writers on departure, `/metrics`, housekeeping).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};

use super::{
    ClientShared, Command, Filter, NoiseConfig, NoiseState, Playlist, TapConsumer, TapShared,
};
use crate::metrics::histogram::{AtomicHistogram, LATENCY, LATENESS};
use crate::metrics::window::Windows;

/// What a session's timing thread (and its clients' writers) publish, lock-free.
#[derive(Debug)]
pub struct SessionStatus {
    /// Bin the next tick plays.
    pub position: AtomicU32,
    /// Sequence number of the last packet generated (0 before the first).
    pub sequence: AtomicU64,
    /// Playback is paused.
    pub paused: AtomicBool,
    /// The clock has started (a client has connected at least once).
    pub started: AtomicBool,
    /// The timing thread is alive.
    pub running: AtomicBool,
    /// Packets generated.
    pub packets_generated: AtomicU64,
    /// Frames allocated because a stalled client still held a pooled one.
    pub frame_pool_misses: AtomicU64,
    /// Bytes held by the session's frame pools.
    pub frame_pool_bytes: AtomicUsize,
    /// Times the schedule was re-anchored after a stall of more than a second.
    pub schedule_resets: AtomicU64,
    /// Packets that could not be encoded (should stay 0).
    pub encode_errors: AtomicU64,
    /// Subscribers the timing thread is pushing to.
    pub subscribers: AtomicUsize,
    /// Core the timing thread is pinned to, or -1.
    pub core: AtomicI64,
    /// The timing thread runs SCHED_FIFO.
    pub fifo: AtomicBool,
    /// Clients closed because they stalled.
    pub clients_stalled: AtomicU64,
    /// Clients closed (1002) because they broke the WebSocket protocol.
    pub clients_protocol_error: AtomicU64,
    /// Clients closed (1009) because they sent a message over the limit.
    pub clients_message_too_big: AtomicU64,
    /// Delay line: fixed delay added to every packet by the writers, µs.
    pub delay_us: AtomicU64,
    /// Delay line: extra random delay per packet, up to this, µs.
    pub jitter_us: AtomicU64,
    /// A tap is installed (it counts as a listener: the clock runs, ticks are punctual).
    pub tap_attached: AtomicBool,
    /// Ticks queued for the tap.
    pub tap_samples: AtomicU64,
    /// Ticks dropped for the tap because its consumer held every buffer.
    pub tap_dropped: AtomicU64,
    /// Bytes held by the tap's buffers and rings.
    pub tap_bytes: AtomicUsize,
    /// Tick lateness (wake − deadline), ns, for ticks with at least one client or a tap.
    pub lateness: AtomicHistogram,
    /// Tick → socket latency of every packet to every client, departed ones included, ns.
    pub latency: AtomicHistogram,
}

impl SessionStatus {
    /// A status with nothing recorded.
    pub fn new() -> Self {
        Self {
            position: AtomicU32::new(0),
            sequence: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            started: AtomicBool::new(false),
            running: AtomicBool::new(false),
            packets_generated: AtomicU64::new(0),
            frame_pool_misses: AtomicU64::new(0),
            frame_pool_bytes: AtomicUsize::new(0),
            schedule_resets: AtomicU64::new(0),
            encode_errors: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            core: AtomicI64::new(-1),
            fifo: AtomicBool::new(false),
            clients_stalled: AtomicU64::new(0),
            clients_protocol_error: AtomicU64::new(0),
            clients_message_too_big: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            tap_attached: AtomicBool::new(false),
            tap_samples: AtomicU64::new(0),
            tap_dropped: AtomicU64::new(0),
            tap_bytes: AtomicUsize::new(0),
            lateness: AtomicHistogram::new(LATENESS),
            latency: AtomicHistogram::new(LATENCY),
        }
    }
}

impl Default for SessionStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Totals of clients that have left, so session figures never go backwards.
#[derive(Debug, Default, Clone, Copy)]
pub struct DepartedTotals {
    /// Packets sent to departed clients.
    pub packets_sent: u64,
    /// Packets dropped for departed clients.
    pub dropped_packets: u64,
    /// Bytes sent to departed clients.
    pub bytes_sent: u64,
    /// Number of departed clients.
    pub clients: u64,
}

/// Network-side state of a session.
#[derive(Default)]
pub struct SessionState {
    /// Filter being played, if any.
    pub filter: Option<Filter>,
    /// Impairment in effect.
    pub noise: NoiseConfig,
    /// Connected clients.
    pub clients: Vec<Arc<ClientShared>>,
    /// Totals of departed clients.
    pub departed: DepartedTotals,
    /// Sliding windows over the session's lateness histogram.
    pub lateness_windows: Windows,
    /// Sliding windows over the session's latency histogram.
    pub latency_windows: Windows,
}

/// Why a command could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionBusy {
    /// The timing thread has not taken earlier commands yet.
    #[error("the session's control queue is full; retry shortly")]
    QueueFull,
    /// The timing thread has ended.
    #[error("the session has stopped")]
    Stopped,
}

/// A session.
pub struct Session {
    code: String,
    seed: u64,
    created_at: SystemTime,
    created: Instant,
    last_active: Mutex<Instant>,
    commands: Sender<Command>,
    status: Arc<SessionStatus>,
    state: Mutex<SessionState>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tap: OnceLock<Arc<TapShared>>,
    tap_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    pub(super) fn new(
        code: String,
        seed: u64,
        commands: Sender<Command>,
        status: Arc<SessionStatus>,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            code,
            seed,
            created_at: SystemTime::now(),
            created: Instant::now(),
            last_active: Mutex::new(Instant::now()),
            commands,
            status,
            state: Mutex::new(SessionState::default()),
            thread: Mutex::new(Some(thread)),
            tap: OnceLock::new(),
            tap_thread: Mutex::new(None),
        }
    }

    /// The session code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Seed of the session's noise (unless its noise config names one).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Replaces the session's impairment: spike noise from the next tick, and the delay line
    /// of every writer. `config` must be valid ([`NoiseConfig::validate`]).
    pub fn set_noise(&self, config: NoiseConfig, units: usize) -> Result<(), SessionBusy> {
        // Built here, on a network thread: the timing thread only swaps it in.
        let state = config
            .is_active()
            .then(|| Box::new(NoiseState::new(config, units, self.seed)));
        let mut guard = self.state();
        self.send(Command::SetNoise(state))?;
        guard.noise = config;
        self.status
            .delay_us
            .store((config.latency_ms * 1000.0) as u64, Relaxed);
        self.status
            .jitter_us
            .store((config.jitter_ms * 1000.0) as u64, Relaxed);
        Ok(())
    }

    /// Takes ownership of the consumer of this session's tap (see [`super::TapSource`]): what
    /// it publishes becomes visible through [`Session::tap`], and [`Session::shut_down`]
    /// waits for its thread after the timing thread has ended. One per session.
    pub(super) fn adopt_tap(&self, consumer: TapConsumer) {
        let _ = self.tap.set(consumer.shared);
        *self.tap_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(consumer.thread);
    }

    /// What the session's tap consumer (LSL outlets) publishes, if it has one.
    pub fn tap(&self) -> Option<&Arc<TapShared>> {
        self.tap.get()
    }

    /// Wall-clock creation time.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Time since creation.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// What the timing thread publishes.
    pub fn status(&self) -> &SessionStatus {
        &self.status
    }

    /// Network-side state. Never held across I/O.
    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the session as used now (for TTL and LRU).
    pub fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time since the session was last used.
    pub fn idle_for(&self) -> Duration {
        self.last_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.state().clients.len()
    }

    /// Queues a command for the timing thread without waiting.
    pub fn send(&self, command: Command) -> Result<(), SessionBusy> {
        self.touch();
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => SessionBusy::QueueFull,
            TrySendError::Disconnected(_) => SessionBusy::Stopped,
        })
    }

    /// Registers a client that is about to be upgraded. The filter check and the registration
    /// happen under one lock, so two clients asking for different filters cannot both win.
    /// `whole` is the unfiltered playlist, restored when a client without a filter is the
    /// first to join a session that an earlier client had filtered.
    pub fn attach(
        &self,
        client: Arc<ClientShared>,
        filter: Option<(Filter, Playlist)>,
        whole: Playlist,
        max_clients: usize,
    ) -> Result<(), AttachError> {
        let mut state = self.state();
        if state.clients.len() >= max_clients {
            return Err(AttachError::SessionFull { max_clients });
        }
        match filter {
            Some((wanted, playlist)) if state.filter != Some(wanted) => {
                if !state.clients.is_empty() {
                    return Err(AttachError::FilterConflict {
                        playing: state.filter,
                        wanted,
                    });
                }
                self.send(Command::SetPlaylist(playlist))?;
                state.filter = Some(wanted);
            }
            // The first client of an idle session without a filter gets the whole recording
            // back, rather than a filter some earlier client left behind.
            None if state.clients.is_empty() && state.filter.is_some() => {
                self.send(Command::SetPlaylist(whole))?;
                state.filter = None;
            }
            _ => {}
        }
        state.clients.push(client);
        drop(state);
        self.touch();
        Ok(())
    }

    /// Removes a client, folding its counters into the session's totals.
    pub fn detach(&self, client_id: u64) {
        let mut state = self.state();
        if let Some(index) = state.clients.iter().position(|c| c.id == client_id) {
            let client = state.clients.swap_remove(index);
            let counters = &client.counters;
            state.departed.packets_sent += counters.packets_sent.load(Relaxed);
            state.departed.dropped_packets += counters.dropped_packets.load(Relaxed);
            state.departed.bytes_sent += counters.bytes_sent.load(Relaxed);
            state.departed.clients += 1;
        }
        drop(state);
        self.touch();
    }

    /// Cuts sliding-window intervals when due (housekeeping calls this).
    pub fn rotate_windows(&self, now: Instant) {
        let mut state = self.state();
        state
            .lateness_windows
            .maybe_rotate(&self.status.lateness, now);
        state
            .latency_windows
            .maybe_rotate(&self.status.latency, now);
    }

    /// Bytes this session really holds: frame pools, histograms, windows, clients
    /// (`state` is this session's state, already locked by the caller).
    pub fn heap_bytes(&self, state: &SessionState) -> usize {
        self.status.frame_pool_bytes.load(Relaxed)
            + self.status.lateness.heap_bytes()
            + self.status.latency.heap_bytes()
            + state.lateness_windows.heap_bytes()
            + state.latency_windows.heap_bytes()
            + state.clients.iter().map(|c| c.heap_bytes()).sum::<usize>()
            + self.status.tap_bytes.load(Relaxed)
            + self.tap().map_or(0, |t| t.heap_bytes())
            + std::mem::size_of::<Self>()
            + std::mem::size_of::<SessionStatus>()
    }

    /// Stops the timing thread and waits for it (at most `timeout` for the command to go in),
    /// then for the tap consumer, which ends once the timing thread has let go of the tap.
    pub fn shut_down(&self, timeout: Duration) {
        match self.commands.send_timeout(Command::Shutdown, timeout) {
            Ok(()) | Err(SendTimeoutError::Disconnected(_)) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                log::error!("session {}: timing thread did not take Shutdown", self.code);
                return;
            }
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                log::error!("session {}: timing thread panicked", self.code);
            }
        }
        let tap = self
            .tap_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = tap {
            handle.thread().unpark();
            if handle.join().is_err() {
                log::error!("session {}: tap consumer panicked", self.code);
            }
        }
    }
}

/// Why a client could not attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// Other clients are playing a different filter.
    #[error("session is playing {}; other clients are connected, so {wanted} cannot be applied", playing.map(|f| f.to_string()).unwrap_or_else(|| "the whole recording".into()))]
    FilterConflict {
        /// What the session plays now.
        playing: Option<Filter>,
        /// What the client asked for.
        wanted: Filter,
    },
    /// The session has as many clients as it may.
    #[error("session already has its maximum of {max_clients} clients")]
    SessionFull {
        /// The limit.
        max_clients: usize,
    },
    /// The timing thread could not take the filter.
    #[error(transparent)]
    Busy(#[from] SessionBusy),
}
