//! The course of a run: wait for the server, (pre-create sessions), connect every client,
//! warm up, measure (polling `/metrics` meanwhile with `--metrics-every`), pause the sessions
//! so counts settle, read `/metrics`, close, clean up.
//! Every phase is bounded in time; the run stops by itself.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::Client;
use crate::decode::Format;
use crate::poll::{self, PollResult};
use crate::procfs::{self, ProcSample};
use crate::report::{self, Inputs, Report, ServerSamples};
use crate::target::Target;
use crate::worker::{self, Shared, PHASE_DRAIN, PHASE_MEASURE, PHASE_STOP, PHASE_WARMUP};
use crate::{Args, FormatChoice};

/// Most clients in one run.
const MAX_CLIENTS: u64 = 20_000;
/// Longest measurement window.
const MAX_SECONDS: f64 = 3600.0;
/// Time for connecting every client before the run gives up on the rest.
const CONNECT_BUDGET: Duration = Duration::from_secs(120);
/// After pausing the sessions, time for packets in flight to arrive.
const SETTLE: Duration = Duration::from_millis(200);
/// Timeout of REST calls.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn format_of(choice: FormatChoice, client_in_session: u64) -> Format {
    match choice {
        FormatChoice::Json => Format::Json,
        FormatChoice::Msgpack => Format::Msgpack,
        FormatChoice::Mixed if client_in_session % 2 == 0 => Format::Json,
        FormatChoice::Mixed => Format::Msgpack,
    }
}

/// Keeps the server's CPU and RSS samples and progress output going while the run waits.
struct Watch<'a> {
    args: &'a Args,
    samples: ServerSamples,
    last_sample: Instant,
    last_progress: Instant,
}

impl Watch<'_> {
    fn sample(&mut self) -> Option<ProcSample> {
        let pid = self.args.server_pid?;
        let sample = procfs::sample(pid);
        if let Some(s) = sample {
            self.samples.rss_max = self.samples.rss_max.max(s.rss_bytes);
            self.samples.threads_max = self.samples.threads_max.max(s.threads);
        }
        sample
    }

    /// Sleeps `total` in small steps, sampling the server and printing progress.
    fn wait(&mut self, total: Duration, shared: &Shared, until: impl Fn(&Shared) -> bool) {
        let end = Instant::now() + total;
        while Instant::now() < end && !until(shared) {
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
            if self.last_sample.elapsed() >= Duration::from_millis(self.args.sample_ms) {
                self.last_sample = Instant::now();
                self.sample();
            }
            if !self.args.quiet && self.last_progress.elapsed() >= Duration::from_secs(2) {
                self.last_progress = Instant::now();
                eprintln!(
                    "loadgen: connected {} failed {} closed {} | packets {} (window {})",
                    shared.connected.load(Relaxed),
                    shared.failed.load(Relaxed),
                    shared.closed.load(Relaxed),
                    shared.packets.load(Relaxed),
                    shared.window_packets.load(Relaxed),
                );
            }
        }
    }
}

/// Runs the whole load test.
pub fn run(args: &Args) -> Result<Report, String> {
    let target = Target::parse(&args.url)?;
    let total = args.sessions * args.clients;
    if total > MAX_CLIENTS {
        return Err(format!("{total} clients: at most {MAX_CLIENTS} per run"));
    }
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        return Err(format!("--seconds must be in (0, {MAX_SECONDS}]"));
    }
    if !(0.0..=600.0).contains(&args.warmup) || !(0.0..=600.0).contains(&args.wait_for_server) {
        return Err("--warmup and --wait-for-server must be within 0..600 s".into());
    }
    if !(args.connect_timeout > 0.0 && args.connect_timeout <= 120.0) {
        return Err("--connect-timeout must be in (0, 120] s".into());
    }
    let fd_limit = procfs::raise_fd_limit();
    if fd_limit > 0 && total + 64 > fd_limit {
        return Err(format!(
            "{total} clients need more open files than the limit of {fd_limit} (ulimit -n)"
        ));
    }
    let started = Instant::now();
    let started_unix = unix_now();
    let window_bound = match args.packets {
        // N packets at 40 Hz, twice over, plus slack for a slow start.
        Some(n) => Duration::from_secs_f64(n as f64 / 40.0 * 2.0 + 30.0),
        None => Duration::from_secs_f64(args.seconds),
    };
    let hard_deadline = started
        + Duration::from_secs_f64(args.wait_for_server + args.warmup)
        + CONNECT_BUDGET
        + window_bound
        + Duration::from_secs(30);

    wait_for_server(&target, Duration::from_secs_f64(args.wait_for_server))?;
    let server_ready_ms = started.elapsed().as_secs_f64() * 1e3;

    let prefix = args
        .session_prefix
        .clone()
        .unwrap_or_else(|| format!("lg{}", std::process::id()));
    let codes: Vec<String> = (0..args.sessions)
        .map(|s| format!("{prefix}-{s}"))
        .collect();

    let mut watch = Watch {
        args,
        samples: ServerSamples::default(),
        last_sample: Instant::now(),
        last_progress: Instant::now(),
    };
    watch.samples.before = watch.sample();
    if args.precreate {
        for code in &codes {
            let reply = target
                .http(
                    "POST",
                    &format!("/api/sessions/create?custom_code={code}"),
                    HTTP_TIMEOUT,
                )
                .map_err(|e| format!("creating session {code}: {e}"))?;
            if reply.status != 200 {
                return Err(format!(
                    "creating session {code}: HTTP {} {}",
                    reply.status,
                    reply.text()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        watch.samples.after_sessions = watch.sample();
    }

    let shared = Arc::new(Shared {
        phase: PHASE_WARMUP.into(),
        connected: 0.into(),
        failed: 0.into(),
        closed: 0.into(),
        done: 0.into(),
        window_packets: 0.into(),
        packets: 0.into(),
        verify_every: args.verify_every,
        target_packets: args.packets,
        closed_loop: args.closed_loop,
        coalesce: Duration::from_micros(args.coalesce_us),
    });

    // Started now so that a failure to spawn it ends the run before any client connects; it
    // waits for the window to open.
    let poller = if args.metrics_every > 0 {
        let shared = Arc::clone(&shared);
        let interval = Duration::from_millis(args.metrics_every);
        let handle = std::thread::Builder::new()
            .name("lg-metrics-poll".into())
            .spawn(move || poll::run(target, interval, HTTP_TIMEOUT, &shared, hard_deadline))
            .map_err(|e| format!("spawning the /metrics poller: {e}"))?;
        Some((handle, interval))
    } else {
        None
    };

    // Workers first, so connected clients are read from the moment they exist.
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for w in 0..args.threads {
        let (tx, rx) = crossbeam_channel::unbounded::<Client>();
        let shared = Arc::clone(&shared);
        let fifo = args.fifo;
        let handle = std::thread::Builder::new()
            .name(format!("lg-worker-{w}"))
            .spawn(move || {
                if let Some(priority) = fifo {
                    set_fifo(priority);
                }
                worker::run(rx, shared, hard_deadline)
            })
            .map_err(|e| format!("spawning a worker: {e}"))?;
        senders.push(tx);
        workers.push(handle);
    }

    // Connectors: client i goes to session i % S, so every session gets its first client early.
    let connect_started = Instant::now();
    let connect_deadline = (Instant::now() + CONNECT_BUDGET).min(hard_deadline);
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    let mut connectors = Vec::new();
    for k in 0..args.connect_threads {
        let shared = Arc::clone(&shared);
        let senders = senders.clone();
        let codes = codes.clone();
        let (sessions, stride, format) = (args.sessions, args.connect_threads, args.format);
        let handle = std::thread::Builder::new()
            .name(format!("lg-connect-{k}"))
            .spawn(move || {
                let mut i = k;
                while i < total {
                    let (session, nth) = (i % sessions, i / sessions);
                    let format = format_of(format, nth);
                    let path = format.path(&codes[session as usize]);
                    let id = i as usize;
                    let client = if Instant::now() >= connect_deadline {
                        Client::failed(id, session as usize, format, "connect budget spent".into())
                    } else {
                        let t0 = Instant::now();
                        crate::ws::connect(&target, &path, connect_timeout)
                            .and_then(|up| {
                                Client::connected(id, session as usize, format, up, t0.elapsed())
                                    .map_err(|e| e.to_string())
                            })
                            .unwrap_or_else(|e| Client::failed(id, session as usize, format, e))
                    };
                    if client.is_open() {
                        shared.connected.fetch_add(1, Relaxed);
                    } else {
                        shared.failed.fetch_add(1, Relaxed);
                    }
                    let worker = i as usize % senders.len();
                    if senders[worker].send(client).is_err() {
                        break;
                    }
                    i += stride;
                }
            })
            .map_err(|e| format!("spawning a connector: {e}"))?;
        connectors.push(handle);
    }
    drop(senders);
    watch.wait(CONNECT_BUDGET + Duration::from_secs(5), &shared, |s| {
        s.connected.load(Relaxed) + s.failed.load(Relaxed) >= total as usize
    });
    for handle in connectors {
        let _ = handle.join();
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    watch.samples.after_connect = watch.sample();

    watch.wait(Duration::from_secs_f64(args.warmup), &shared, |_| false);

    // The window.
    let threads_start = args.server_pid.map(procfs::thread_times);
    let server_start = watch.sample();
    let own_start = procfs::own_cpu();
    let window_start = Instant::now();
    shared.phase.store(PHASE_MEASURE, Relaxed);
    let open_clients = |s: &Shared| {
        s.connected
            .load(Relaxed)
            .saturating_sub(s.closed.load(Relaxed))
    };
    match args.packets {
        Some(_) => watch.wait(window_bound, &shared, |s| {
            s.done.load(Relaxed) >= open_clients(s)
        }),
        None => watch.wait(window_bound, &shared, |_| false),
    }
    shared.phase.store(PHASE_DRAIN, Relaxed);
    let window_seconds = window_start.elapsed().as_secs_f64();
    let own_cpu = procfs::own_cpu().saturating_sub(own_start);
    let server_end = watch.sample();
    let threads_end = args.server_pid.map(procfs::thread_times);
    // Before pausing: the poller may finish a request it started inside the window.
    let metrics_poll = poller.map(|(handle, interval)| {
        handle.join().unwrap_or_else(|_| {
            let mut result = PollResult::new(interval);
            result.first_error = Some("the /metrics poller panicked".into());
            result
        })
    });

    // Pause every session so the server's counters stop, let packets in flight arrive, then
    // read /metrics while the clients are still connected.
    let mut pause_failures = 0;
    for code in &codes {
        let ok = target
            .http("POST", &format!("/api/control/{code}/pause"), HTTP_TIMEOUT)
            .is_ok_and(|r| r.status == 200);
        pause_failures += usize::from(!ok);
    }
    std::thread::sleep(SETTLE);
    let metrics = target
        .http("GET", "/metrics", HTTP_TIMEOUT)
        .map_err(|e| e.to_string())
        .and_then(|r| r.json());
    watch.samples.end = watch.sample();

    shared.phase.store(PHASE_STOP, Relaxed);
    let mut clients = Vec::with_capacity(total as usize);
    let mut overall = Vec::new();
    for handle in workers {
        let result = handle.join().map_err(|_| "a worker panicked".to_string())?;
        clients.extend(result.clients);
        overall.push(result.overall);
    }
    clients.sort_by_key(|c| c.id);

    let mut deleted = 0;
    if !args.keep_sessions {
        deleted = delete_sessions(&target, &codes);
    }

    Ok(report::build(Inputs {
        args,
        started_unix,
        server_ready_ms,
        codes: &codes,
        clients: &clients,
        overall,
        connect_seconds,
        window_seconds,
        own_cpu,
        server_start,
        server_end,
        threads: threads_start.zip(threads_end),
        samples: watch.samples,
        metrics,
        metrics_poll,
        pause_failures,
        deleted,
        elapsed: started.elapsed(),
    }))
}

/// Polls `/health` until the server answers (for measuring startup), within `limit`.
fn wait_for_server(target: &Target, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match target.http("GET", "/health", Duration::from_secs(2)) {
            Ok(reply) if reply.status == 200 => return Ok(()),
            Ok(reply) => {
                return Err(format!(
                    "{} answered /health with HTTP {}",
                    target.addr, reply.status
                ))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no server at {}: {e}", target.addr))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Deletes the run's sessions; a session whose clients have not detached yet is retried
/// for a short while. Returns how many were deleted.
fn delete_sessions(target: &Target, codes: &[String]) -> usize {
    let mut left: Vec<&String> = codes.iter().collect();
    let mut deleted = 0;
    for _ in 0..20 {
        left.retain(|code| {
            match target.http("DELETE", &format!("/api/sessions/{code}"), HTTP_TIMEOUT) {
                Ok(r) if r.status == 200 || r.status == 204 => {
                    deleted += 1;
                    false
                }
                Ok(r) if r.status == 404 => false,
                _ => true,
            }
        });
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    deleted
}

/// Runs the calling worker SCHED_FIFO at `priority` (`--fifo`), or says why it could not.
fn set_fifo(priority: u8) {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        eprintln!(
            "loadgen: SCHED_FIFO {priority} refused ({}); workers run at normal priority",
            std::io::Error::last_os_error()
        );
    }
}
