//! All sessions of the server: creation (custom or generated codes), lookup, limits, LRU
//! eviction, TTL cleanup, deletion and shutdown.
//!
//! Network threads only. The map's mutex is never held while waiting for a timing thread.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

use super::realtime::{self, RealtimeMode};
use super::timing::{auto_spin, SpinControl, TimingConfig, MAX_SPIN};
use super::{
    tap, ClientShared, CloseReason, Command, NoiseConfig, Session, SessionStatus, TapSource,
    TimingLoop, WriterWaker, TAP_SLOTS,
};
use crate::dataset::PacketTable;

/// Commands a session can have queued before senders are told it is busy.
const COMMAND_QUEUE: usize = 256;

/// Limits and tuning of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sessions at once; beyond it the least recently used session without clients is
    /// evicted, or creation fails.
    pub max_sessions: usize,
    /// Most clients on one session.
    pub max_clients_per_session: usize,
    /// Most clients on the server.
    pub max_clients_total: usize,
    /// A session without clients, unused for this long, is removed by cleanup.
    pub session_ttl: Duration,
    /// A client whose ring stays full (or whose socket write blocks) this long is closed.
    pub stall_timeout: Duration,
    /// Packets a client's ring holds (1.6 s at 64).
    pub ring_capacity: usize,
    /// Cores timing threads are pinned to, round-robin; empty for no pinning.
    pub cores: Vec<usize>,
    /// SCHED_FIFO policy for timing threads.
    pub realtime: RealtimeMode,
    /// Spin this long before each deadline instead of sleeping; `None`: [`auto_spin`] of the
    /// number of streaming sessions.
    pub spin: Option<Duration>,
    /// Server seed; each session's noise seed derives from it and the session code.
    pub seed: u64,
    /// Impairment of sessions that do not ask for their own.
    pub noise: NoiseConfig,
    /// Decoder answers more than this many packets behind are counted late, not matched.
    pub feedback_window: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_clients_per_session: 256,
            max_clients_total: 4096,
            session_ttl: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(10),
            ring_capacity: 64,
            cores: Vec::new(),
            realtime: RealtimeMode::Auto,
            spin: None,
            seed: 42,
            noise: NoiseConfig::OFF,
            feedback_window: 40,
        }
    }
}

/// Why a registry operation failed. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The code is not `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid session code {0:?}: use 1-64 characters from A-Z a-z 0-9 _ -")]
    InvalidCode(String),
    /// A session with that code exists.
    #[error("session {0} already exists")]
    Exists(String),
    /// No session with that code.
    #[error("session {0} not found")]
    NotFound(String),
    /// The session has clients, so it cannot be deleted.
    #[error("session {code} has {clients} connected client(s); disconnect them first")]
    HasClients {
        /// The session.
        code: String,
        /// How many clients.
        clients: usize,
    },
    /// Every session slot is taken by a session with clients.
    #[error("server is at its limit of {0} sessions and every one has clients; try later or raise --max-sessions")]
    Full(usize),
    /// The server has as many clients as it may.
    #[error("server is at its limit of {0} clients; try later or raise --max-clients")]
    TooManyClients(usize),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The system refused a resource (a thread); try again later.
    #[error("server cannot take another session now ({0}); try later")]
    Unavailable(String),
}

/// Counts a live client for the server-wide limit; releases it when dropped.
pub struct ClientTicket {
    live: Arc<AtomicUsize>,
}

impl Drop for ClientTicket {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Relaxed);
    }
}

/// The server's sessions.
pub struct Registry {
    table: Arc<PacketTable>,
    config: EngineConfig,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    epoch: Instant,
    next_index: AtomicU64,
    next_client_id: AtomicU64,
    live_clients: Arc<AtomicUsize>,
    connections_opened: AtomicU64,
    shutting_down: AtomicBool,
    writers: Mutex<HashMap<u64, (Arc<ClientShared>, WriterWaker)>>,
    tap_source: Option<Arc<dyn TapSource>>,
    spin: SpinControl,
}

impl Registry {
    /// A registry serving `table`.
    pub fn new(table: Arc<PacketTable>, config: EngineConfig) -> Self {
        let config_spin = config.spin.unwrap_or(MAX_SPIN);
        Self {
            table,
            config,
            sessions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            next_index: AtomicU64::new(0),
            next_client_id: AtomicU64::new(1),
            live_clients: Arc::new(AtomicUsize::new(0)),
            connections_opened: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            writers: Mutex::new(HashMap::new()),
            tap_source: None,
            spin: SpinControl::fixed(config_spin),
        }
    }

    /// Gives every session created from now on a tap consumer started by `source` (the LSL
    /// outlets): its clock starts at creation and it plays whether or not clients connect.
    pub fn with_tap_source(mut self, source: Arc<dyn TapSource>) -> Self {
        self.tap_source = Some(source);
        self
    }

    /// The tap source, if sessions get one.
    pub fn tap_source(&self) -> Option<&Arc<dyn TapSource>> {
        self.tap_source.as_ref()
    }

    /// The packet table every session plays.
    pub fn table(&self) -> &Arc<PacketTable> {
        &self.table
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a session with `code` (or a generated one) and the server's default noise.
    pub fn create(&self, code: Option<&str>) -> Result<Arc<Session>, RegistryError> {
        self.create_with(code, self.config.noise)
    }

    /// Creates a session with `code` (or a generated one) and `noise`.
    pub fn create_with(
        &self,
        code: Option<&str>,
        noise: NoiseConfig,
    ) -> Result<Arc<Session>, RegistryError> {
        if self.is_shutting_down() {
            return Err(RegistryError::ShuttingDown);
        }
        let mut map = self.map();
        let code = match code {
            Some(code) => {
                validate_code(code)?;
                if map.contains_key(code) {
                    return Err(RegistryError::Exists(code.to_string()));
                }
                code.to_string()
            }
            None => loop {
                let candidate = generate_code();
                if !map.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        let evicted = self.make_room(&mut map)?;
        let session = match self.spawn_session(code.clone()) {
            Ok(session) => Arc::new(session),
            Err(e) => {
                // Put the evicted session back: nothing has replaced it.
                if let Some(evicted) = evicted {
                    map.insert(evicted.code().to_string(), evicted);
                }
                return Err(e);
            }
        };
        map.insert(code, Arc::clone(&session));
        drop(map);
        if noise != NoiseConfig::OFF {
            // A fresh session's queue is empty, so this cannot be refused.
            let _ = session.set_noise(noise, self.table.num_units());
        }
        self.start_tap(&session);
        if let Some(evicted) = evicted {
            log::info!(
                "session {} evicted (least recently used, no clients)",
                evicted.code()
            );
            evicted.shut_down(Duration::from_secs(1));
        }
        Ok(session)
    }

    /// The session with `code`, created if it does not exist (connecting creates sessions).
    pub fn get_or_create(&self, code: &str) -> Result<Arc<Session>, RegistryError> {
        validate_code(code)?;
        if let Some(session) = self.get(code) {
            return Ok(session);
        }
        match self.create(Some(code)) {
            Err(RegistryError::Exists(_)) => self
                .get(code)
                .ok_or_else(|| RegistryError::NotFound(code.to_string())),
            other => other,
        }
    }

    /// The session with `code`.
    pub fn get(&self, code: &str) -> Option<Arc<Session>> {
        self.map().get(code).cloned()
    }

    /// The session with `code`, or a NotFound error naming it.
    pub fn require(&self, code: &str) -> Result<Arc<Session>, RegistryError> {
        validate_code(code)?;
        self.get(code)
            .ok_or_else(|| RegistryError::NotFound(code.to_string()))
    }

    /// Every session, sorted by code.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        let mut list: Vec<_> = self.map().values().cloned().collect();
        list.sort_by(|a, b| a.code().cmp(b.code()));
        list
    }

    /// Deletes a session without clients.
    pub fn delete(&self, code: &str) -> Result<(), RegistryError> {
        validate_code(code)?;
        let mut map = self.map();
        let session = map
            .remove(code)
            .ok_or_else(|| RegistryError::NotFound(code.to_string()))?;
        let clients = session.client_count();
        if clients > 0 {
            map.insert(code.to_string(), session);
            return Err(RegistryError::HasClients {
                code: code.to_string(),
                clients,
            });
        }
        drop(map);
        session.shut_down(Duration::from_secs(1));
        Ok(())
    }

    /// Removes sessions without clients that have been idle longer than the TTL.
    pub fn cleanup_expired(&self) -> Vec<String> {
        let ttl = self.config.session_ttl;
        let mut map = self.map();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, s)| s.client_count() == 0 && s.idle_for() >= ttl)
            .map(|(code, _)| code.clone())
            .collect();
        let removed: Vec<Arc<Session>> = expired.iter().filter_map(|c| map.remove(c)).collect();
        drop(map);
        for session in &removed {
            session.shut_down(Duration::from_secs(1));
        }
        expired
    }

    /// Starts the session's tap consumer, if sessions get one, and installs the tap.
    fn start_tap(&self, session: &Session) {
        let Some(source) = &self.tap_source else {
            return;
        };
        let (mut tap, receiver) = tap(self.table.num_units(), TAP_SLOTS);
        match source.start(session.code(), Arc::clone(&self.table), receiver) {
            Ok(consumer) => {
                tap.wake(consumer.thread.thread().clone());
                session.adopt_tap(consumer);
                // A fresh session's queue holds at most SetNoise: this cannot be refused.
                if let Err(e) = session.send(Command::SetTap(Some(Box::new(tap)))) {
                    log::error!(
                        "session {}: {} tap not installed: {e}",
                        session.code(),
                        source.kind()
                    );
                }
            }
            Err(e) => log::error!(
                "session {}: {} not started: {e}",
                session.code(),
                source.kind()
            ),
        }
    }

    /// Frees a slot if the registry is full by evicting the least recently used session
    /// without clients.
    fn make_room(
        &self,
        map: &mut HashMap<String, Arc<Session>>,
    ) -> Result<Option<Arc<Session>>, RegistryError> {
        if map.len() < self.config.max_sessions {
            return Ok(None);
        }
        let victim = map
            .values()
            .filter(|s| s.client_count() == 0)
            .max_by_key(|s| s.idle_for())
            .map(|s| s.code().to_string());
        match victim {
            Some(code) => Ok(map.remove(&code)),
            None => Err(RegistryError::Full(self.config.max_sessions)),
        }
    }

    fn spawn_session(&self, code: String) -> Result<Session, RegistryError> {
        let index = self.next_index.fetch_add(1, Relaxed);
        let (commands_tx, commands_rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let status = Arc::new(SessionStatus::new());
        let config = TimingConfig {
            phase: phase_for(index),
            epoch: self.epoch,
            stall_timeout: self.config.stall_timeout,
            ring_capacity: self.config.ring_capacity,
            max_clients: self.config.max_clients_per_session,
            spin: self.spin.clone(),
        };
        let timing = TimingLoop::new(
            Arc::clone(&self.table),
            commands_rx,
            Arc::clone(&status),
            config,
        );
        let core = (!self.config.cores.is_empty())
            .then(|| self.config.cores[index as usize % self.config.cores.len()]);
        let mode = self.config.realtime;
        let thread_status = Arc::clone(&status);
        let thread_code = code.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tick-{}", truncate(&code, 10)))
            .spawn(move || {
                let setup = realtime::setup_current_thread(core, mode);
                thread_status
                    .core
                    .store(setup.core.map_or(-1, |c| c as i64), Relaxed);
                thread_status.fifo.store(setup.fifo, Relaxed);
                if let Some(error) = setup.fifo_error {
                    log::debug!("session {thread_code}: SCHED_FIFO refused: {error}");
                }
                timing.run();
            })
            .map_err(|e| {
                log::error!("cannot start a timing thread for session {code}: {e}");
                RegistryError::Unavailable(format!("cannot start a timing thread: {e}"))
            })?;
        let seed = session_seed(self.config.seed, &code);
        Ok(Session::new(code, seed, commands_tx, status, handle))
    }

    /// Reserves a place for one more client, under the server-wide limit.
    pub fn reserve_client(&self) -> Result<(u64, ClientTicket), RegistryError> {
        if self.is_shutting_down() {
            return Err(RegistryError::ShuttingDown);
        }
        let limit = self.config.max_clients_total;
        let reserved = self
            .live_clients
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1));
        if reserved.is_err() {
            return Err(RegistryError::TooManyClients(limit));
        }
        self.connections_opened.fetch_add(1, Relaxed);
        let id = self.next_client_id.fetch_add(1, Relaxed);
        Ok((
            id,
            ClientTicket {
                live: Arc::clone(&self.live_clients),
            },
        ))
    }

    /// Remembers a client's writer so shutdown can close it.
    pub fn track_writer(&self, client: Arc<ClientShared>, writer: WriterWaker) {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client.id, (client, writer));
    }

    /// Forgets a writer that has finished.
    pub fn untrack_writer(&self, client_id: u64) {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client_id);
    }

    /// Live clients on the server.
    pub fn live_clients(&self) -> usize {
        self.live_clients.load(Relaxed)
    }

    /// WebSocket connections accepted since start.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Closes every client with 1001, waits for their writers up to `deadline`, then stops
    /// every timing thread. Returns whether every client finished in time.
    pub fn shut_down(&self, deadline: Instant) -> bool {
        self.shutting_down.store(true, Relaxed);
        self.close_clients(CloseReason::ServerShutdown);
        while self.live_clients() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let clean = self.live_clients() == 0;
        let sessions: Vec<Arc<Session>> = self.map().drain().map(|(_, s)| s).collect();
        for session in sessions {
            session.shut_down(Duration::from_millis(100));
        }
        clean
    }

    /// Asks every connected client to close with `reason`.
    pub fn close_clients(&self, reason: CloseReason) {
        let writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        for (client, writer) in writers.values() {
            client.request_close(reason);
            writer.wake();
        }
    }

    /// In automatic spin mode, sets the timing threads' spin for the number of sessions now
    /// streaming (called by housekeeping a few times a second). Returns the spin in force.
    pub fn tune_spin(&self) -> Duration {
        if self.config.spin.is_none() {
            let streaming = self.map().values().filter(|s| s.client_count() > 0).count();
            self.spin.set(auto_spin(streaming));
        }
        self.spin.get()
    }

    /// The spin timing threads use now.
    pub fn spin(&self) -> Duration {
        self.spin.get()
    }

    /// Time since the registry was created.
    pub fn uptime(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Checks a session code against `[A-Za-z0-9_-]{1,64}`.
pub fn validate_code(code: &str) -> Result<(), RegistryError> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidCode(truncate(code, 80).to_string()))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A session's noise seed: the server seed mixed with the code (FNV-1a), so a session of the
/// same code on a server with the same seed replays the same noise.
fn session_seed(server_seed: u64, code: &str) -> u64 {
    code.bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ server_seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Spreads session phases over the period with the golden ratio, so any number of sessions
/// wake as far apart as possible (aligned wakeups cost ~2.5 µs of lateness per thread).
fn phase_for(index: u64) -> Duration {
    let fraction = (index as f64 * 0.618_033_988_749_895).fract();
    Duration::from_nanos((fraction * super::timing::PERIOD.as_nanos() as f64) as u64)
}

const ADJECTIVES: [&str; 48] = [
    "swift", "bright", "calm", "eager", "gentle", "brave", "clever", "quiet", "steady", "bold",
    "keen", "lucid", "nimble", "rapid", "sharp", "vivid", "agile", "deft", "fleet", "silent",
    "amber", "azure", "coral", "crimson", "golden", "indigo", "ivory", "jade", "scarlet", "silver",
    "cosmic", "lunar", "solar", "stellar", "polar", "misty", "sunny", "windy", "frosty", "mellow",
    "noble", "proud", "witty", "jolly", "happy", "lively", "merry", "sturdy",
];

const NOUNS: [&str; 48] = [
    "neural", "neuron", "axon", "synapse", "cortex", "spike", "dendrite", "signal", "pulse",
    "wave", "rhythm", "beacon", "vector", "cursor", "target", "reach", "motor", "probe", "array",
    "channel", "falcon", "otter", "heron", "lynx", "panda", "raven", "tiger", "wolf", "comet",
    "meteor", "nebula", "orbit", "photon", "quasar", "pixel", "prism", "river", "summit", "canyon",
    "delta", "forest", "harbor", "island", "meadow", "ocean", "ridge", "valley", "glacier",
];

/// A readable code such as `swift-neural-42`: 48 × 48 × 1000 ≈ 2.3 M codes, drawn from the
/// thread's CSPRNG (ChaCha, seeded by the OS) so codes cannot be guessed from earlier ones.
fn generate_code() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{}-{}-{}",
        ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
        NOUNS[rng.gen_range(0..NOUNS.len())],
        rng.gen_range(0..1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synthetic::{generate, SyntheticConfig};

    #[test]
    fn codes_are_validated() {
        assert!(validate_code("swift-neural-42").is_ok());
        assert!(validate_code("A_b-9").is_ok());
        assert!(validate_code("").is_err());
        assert!(validate_code("../etc").is_err());
        assert!(validate_code("a b").is_err());
        assert!(validate_code(&"x".repeat(65)).is_err());
        assert!(validate_code(&"x".repeat(64)).is_ok());
        assert!(validate_code("ünï").is_err());
    }

    #[test]
    fn generated_codes_are_valid_and_varied() {
        let codes: std::collections::HashSet<String> = (0..200).map(|_| generate_code()).collect();
        assert!(codes.len() > 190, "{} distinct of 200", codes.len());
        for code in &codes {
            validate_code(code).unwrap();
            assert_eq!(code.split('-').count(), 3, "{code}");
        }
    }

    #[test]
    fn phases_spread_over_the_period() {
        let mut phases: Vec<u128> = (0..8).map(|i| phase_for(i).as_nanos()).collect();
        phases.sort();
        let min_gap = phases.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(min_gap > 1_000_000, "phases too close: {phases:?}");
        assert!(phases.iter().all(|&p| p < 25_000_000));
    }

    #[test]
    fn automatic_spin_shares_a_budget_and_fixed_spin_stays() {
        assert_eq!(auto_spin(0), MAX_SPIN);
        assert_eq!(auto_spin(16), MAX_SPIN);
        assert_eq!(auto_spin(32), Duration::from_micros(50));
        assert_eq!(auto_spin(200), Duration::from_micros(8));
        let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
        let fixed = Registry::new(
            Arc::clone(&table),
            EngineConfig {
                spin: Some(Duration::from_micros(7)),
                ..EngineConfig::default()
            },
        );
        assert_eq!(fixed.tune_spin(), Duration::from_micros(7));
        let auto = Registry::new(table, EngineConfig::default());
        assert_eq!(auto.tune_spin(), MAX_SPIN, "no session streams yet");
    }
}
