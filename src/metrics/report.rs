//! `/metrics` as JSON (the reference schema, extended) and as Prometheus text.
//!
//! Readers only: snapshots of atomic counters and histogram summaries, taken under the session
//! state lock (which no timing thread or streaming writer ever takes), then written straight
//! into the response's bytes — typed structs through serde for the JSON, string pushes for
//! the Prometheus text — since with a thousand clients either is close to a megabyte or more.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use serde::Serialize;

use super::histogram::{cumulative_counts, AtomicHistogram, HistConfig};
use super::process::ProcessStats;
use super::window::WINDOWS;
use super::LatencySummary;
use crate::codec::WireFormat;
use crate::engine::feedback::DecoderStats;
use crate::engine::{ClientShared, NoiseConfig, Registry, Session, SessionState};

fn unix(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn summary(hist: &AtomicHistogram) -> LatencySummary {
    LatencySummary::of(hist)
}

/// The JSON document of `GET /metrics`, for every session or only `only`, serialised: the
/// bytes the HTTP handler sends. Typed structs written straight into the buffer (no value
/// tree); each session's figures are read under its state lock, then serialised without it.
/// With many sessions they are rendered on several threads (see [`render_threads`]); the
/// bytes are those of a serial render.
pub fn json(registry: &Registry, only: Option<&str>) -> Vec<u8> {
    json_with(registry, only, render_threads())
}

/// Threads `/metrics` may render sessions on: the cores available (read once — it consults
/// cgroup files), at most 8, since beyond that the cost of the threads outweighs the work.
fn render_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    })
}

/// Fewest sessions per thread: under this, a thread's start (tens of µs) is not repaid.
const SESSIONS_PER_THREAD: usize = 8;

/// [`json`] on at most `threads` threads.
fn json_with(registry: &Registry, only: Option<&str>, threads: usize) -> Vec<u8> {
    // Sorted by code, as the document always was.
    let sessions = registry.sessions();
    // Server-wide, like total_sessions and total_connections, also when narrowed by `only`.
    let active = sessions.iter().filter(|s| s.client_count() > 0).count();
    let shown: Vec<&Session> = sessions
        .iter()
        .map(|s| &**s)
        .filter(|s| only.is_none_or(|c| c == s.code()))
        .collect();
    let clock = Clock {
        now: Instant::now(),
        wall: SystemTime::now(),
    };
    let clients: usize = shown.iter().map(|s| s.client_count()).sum();
    // About 1 KiB per client and 4 KiB per session: one allocation, no regrowth.
    let mut out = Vec::with_capacity(2048 + shown.len() * 4096 + clients * 1024);
    // The document is written by hand around its `sessions` object, whose entries may come
    // from several threads: each head is a serialised struct reopened (its closing brace
    // dropped) to take the next field, which keeps serde_json's exact spelling of the rest.
    write_json(
        &mut out,
        &DocumentHead {
            timestamp: unix(clock.wall),
            service: "PhantomLink",
            version: env!("CARGO_PKG_VERSION"),
        },
    );
    reopen(&mut out, "metrics");
    write_json(
        &mut out,
        &ServerHead {
            total_sessions: sessions.len(),
            active_sessions: active,
            total_connections: registry.live_clients(),
            connections_opened: registry.connections_opened(),
            uptime_seconds: registry.uptime().as_secs_f64(),
            dataset_bytes: registry.table().heap_bytes(),
        },
    );
    reopen(&mut out, "sessions");
    out.push(b'{');
    session_entries(&mut out, &shown, clock, threads);
    out.extend_from_slice(b"}}");
    reopen_object(&mut out, "process");
    write_json(&mut out, &ProcessStats::read());
    out.push(b'}');
    out
}

/// One instant for every figure of a render.
#[derive(Clone, Copy)]
struct Clock {
    now: Instant,
    wall: SystemTime,
}

fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mut serializer = serde_json::Serializer::with_formatter(out, Formatter);
    value
        .serialize(&mut serializer)
        .expect("numbers and strings always serialise");
}

/// Turns the object just written, `{…}`, back into an open one whose next field is `key`.
fn reopen(out: &mut Vec<u8>, key: &str) {
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    reopen_object(out, key);
}

/// Appends `,"key":` (keys here are plain identifiers: nothing to escape).
fn reopen_object(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// The `"code":{…}` entries of `sessions`, comma-separated, in order: on up to `threads`
/// threads, each rendering a contiguous run of sessions into its own buffer, appended in
/// order — so the bytes are the serial render's. Each thread locks its sessions one at a
/// time, as the serial render does.
fn session_entries(out: &mut Vec<u8>, sessions: &[&Session], clock: Clock, threads: usize) {
    let threads = threads.min(sessions.len() / SESSIONS_PER_THREAD).max(1);
    if threads == 1 {
        return write_sessions(out, sessions, clock);
    }
    let per_thread = sessions.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut runs = sessions.chunks(per_thread);
        let first = runs.next().unwrap_or_default();
        let others: Vec<_> = runs
            .map(|run| {
                let render = move || {
                    let clients: usize = run.iter().map(|s| s.client_count()).sum();
                    let mut buf = Vec::with_capacity(run.len() * 4096 + clients * 1024);
                    write_sessions(&mut buf, run, clock);
                    buf
                };
                // A thread that cannot be started (resource limits) leaves its run to
                // this one, after the first run.
                std::thread::Builder::new()
                    .name("metrics-render".into())
                    .spawn_scoped(scope, render)
                    .map_err(|_| run)
            })
            .collect();
        write_sessions(out, first, clock);
        for other in others {
            out.push(b',');
            match other {
                Ok(thread) => {
                    let buf = thread
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e));
                    out.extend_from_slice(&buf);
                }
                Err(run) => write_sessions(out, run, clock),
            }
        }
    });
}

/// `"code":{…}` for each of `sessions`, comma-separated.
fn write_sessions(out: &mut Vec<u8>, sessions: &[&Session], clock: Clock) {
    for (i, session) in sessions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Read under the state lock, serialised after it is released.
        let rendered = {
            let state = session.state();
            session_json(session, &state, clock.now, clock.wall)
        };
        write_json(out, session.code());
        out.push(b':');
        write_json(out, &rendered);
    }
}

/// serde_json's compact output with a cheaper spelling of the most common floats: whole
/// nanoseconds shown in milliseconds (every percentile, min and max is a bucket bound in ns).
/// Their digits come from integer arithmetic instead of a shortest round-trip search, and are
/// the very bytes serde_json would print (see [`millis_of_nanos`]); other floats go through
/// serde_json's own formatting.
struct Formatter;

impl serde_json::ser::Formatter for Formatter {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        match millis_of_nanos(value) {
            Some(ns) => writer.write_all(MillisText::new(ns).as_bytes()),
            None => serde_json::ser::CompactFormatter.write_f64(writer, value),
        }
    }
}

/// Whole nanoseconds `ns` with `ns as f64 / 1e6 == value`, when the decimal of ns / 10⁶
/// (at most six decimals) is exactly what serde_json's shortest round-trip formatting prints
/// for `value`: from 10 ns (below, it switches to exponents: `1e-6`) to 2³² ms, where an f64
/// step is under 10⁻⁶, so no other decimal of six places or fewer rounds to `value` and the
/// shortest one is ns / 10⁶ itself. `None` for every other float.
fn millis_of_nanos(value: f64) -> Option<u64> {
    const MAX_MS: f64 = 4_294_967_296.0; // 2³²
    if !(1e-5..MAX_MS).contains(&value) {
        return None;
    }
    let ns = (value * 1e6).round() as u64;
    (ns as f64 / 1e6 == value).then_some(ns)
}

/// ns / 10⁶ as serde_json prints it: `12.5`, `0.0425`, `3.0`.
struct MillisText {
    buf: [u8; 32],
    len: usize,
}

impl MillisText {
    fn new(ns: u64) -> Self {
        let mut text = Self {
            buf: [0; 32],
            len: 0,
        };
        let mut whole = itoa::Buffer::new();
        let whole = whole.format(ns / 1_000_000).as_bytes();
        text.buf[..whole.len()].copy_from_slice(whole);
        text.buf[whole.len()] = b'.';
        let mut len = whole.len() + 1;
        let mut frac = (ns % 1_000_000) as u32;
        if frac == 0 {
            text.buf[len] = b'0';
            len += 1;
        } else {
            let mut digits = 6;
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            for i in (0..digits).rev() {
                text.buf[len + i] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            len += digits;
        }
        text.len = len;
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The document's fields before `metrics`.
#[derive(Serialize)]
struct DocumentHead {
    timestamp: f64,
    service: &'static str,
    version: &'static str,
}

/// The `metrics` fields before `sessions`.
#[derive(Serialize)]
struct ServerHead {
    total_sessions: usize,
    active_sessions: usize,
    total_connections: usize,
    connections_opened: u64,
    uptime_seconds: f64,
    dataset_bytes: usize,
}

#[derive(Serialize)]
struct ClientJson {
    id: u64,
    remote: SocketAddr,
    format: WireFormat,
    connected_at: f64,
    packets_sent: u64,
    dropped_packets: u64,
    bytes_sent: u64,
    bandwidth_bps: f64,
    network_latency_ms: LatencySummary,
    ring_wait_ms: LatencySummary,
    ring_high_water: usize,
    ring_capacity: usize,
    messages_received: u64,
    memory_bytes: usize,
    decoder: Option<DecoderJson>,
}

fn client_json(client: &ClientShared, now: SystemTime) -> ClientJson {
    let counters = &client.counters;
    let bytes = counters.bytes_sent.load(Relaxed);
    let connected = now
        .duration_since(client.connected_at)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    ClientJson {
        id: client.id,
        remote: client.remote,
        format: client.format,
        connected_at: unix(client.connected_at),
        packets_sent: counters.packets_sent.load(Relaxed),
        dropped_packets: counters.dropped_packets.load(Relaxed),
        bytes_sent: bytes,
        bandwidth_bps: bytes as f64 * 8.0 / connected,
        network_latency_ms: summary(&client.latency),
        ring_wait_ms: summary(&client.ring_wait),
        ring_high_water: counters.ring_high_water.load(Relaxed),
        ring_capacity: client.ring_capacity,
        messages_received: counters.messages_received.load(Relaxed),
        memory_bytes: client.heap_bytes(),
        decoder: client.decoder.get().map(|d| decoder_json(d)),
    }
}

#[derive(Serialize)]
struct DecoderJson {
    round_trip_ms: LatencySummary,
    velocity_error: LatencySummary,
    position_error: LatencySummary,
    target_accuracy: Option<f64>,
    target_answers: u64,
    messages: u64,
    matched: u64,
    late: u64,
    unknown: u64,
    malformed: u64,
}

fn decoder_json(d: &DecoderStats) -> DecoderJson {
    let total = d.target_total.load(Relaxed);
    DecoderJson {
        round_trip_ms: summary(&d.round_trip),
        velocity_error: LatencySummary::from_blocks(&d.velocity_error, 1e3),
        position_error: LatencySummary::from_blocks(&d.position_error, 1e3),
        target_accuracy: (total > 0).then(|| d.target_correct.load(Relaxed) as f64 / total as f64),
        target_answers: total,
        messages: d.messages.load(Relaxed),
        matched: d.matched.load(Relaxed),
        late: d.late.load(Relaxed),
        unknown: d.unknown.load(Relaxed),
        malformed: d.malformed.load(Relaxed),
    }
}

/// Session totals: departed clients plus the live ones.
struct Totals {
    packets_sent: u64,
    dropped: u64,
    bytes: u64,
}

fn totals(state: &SessionState) -> Totals {
    let live = |f: fn(&ClientShared) -> u64| -> u64 { state.clients.iter().map(|c| f(c)).sum() };
    Totals {
        packets_sent: state.departed.packets_sent + live(|c| c.counters.packets_sent.load(Relaxed)),
        dropped: state.departed.dropped_packets
            + live(|c| c.counters.dropped_packets.load(Relaxed)),
        bytes: state.departed.bytes_sent + live(|c| c.counters.bytes_sent.load(Relaxed)),
    }
}

#[derive(Serialize)]
struct SessionJson<'a> {
    packets_sent: u64,
    dropped_packets: u64,
    network_latency_ms: LatencySummary,
    timing_error_ms: LatencySummary,
    memory_usage_mb: f64,
    memory_bytes: usize,
    is_running: bool,
    is_paused: bool,
    connections: usize,
    connections_closed: u64,
    clients_stalled: u64,
    clients_protocol_error: u64,
    clients_message_too_big: u64,
    bytes_sent: u64,
    bandwidth_bps: f64,
    packets_generated: u64,
    sequence_number: u64,
    noise: NoiseConfig,
    frame_pool_misses: u64,
    schedule_resets: u64,
    timing_thread: TimingThreadJson,
    windows: WindowsJson,
    clients: Vec<ClientJson>,
    lsl: Option<LslJson<'a>>,
}

#[derive(Serialize)]
struct TimingThreadJson {
    core: i64,
    sched_fifo: bool,
}

/// The windows of [`WINDOWS`], by name.
struct WindowsJson([WindowJson; 3]);

#[derive(Serialize)]
struct WindowJson {
    timing_error_ms: LatencySummary,
    network_latency_ms: LatencySummary,
}

impl Serialize for WindowsJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(WINDOWS.iter().map(|(name, _)| name).zip(&self.0))
    }
}

fn session_json<'a>(
    session: &'a Session,
    state: &SessionState,
    now: Instant,
    wall: SystemTime,
) -> SessionJson<'a> {
    let status = session.status();
    let totals = totals(state);
    let memory = session.heap_bytes(state);
    let age = session.age().as_secs_f64().max(1e-3);
    let lateness = state.lateness_windows.summaries(&status.lateness, now, 1e6);
    let latency = state.latency_windows.summaries(&status.latency, now, 1e6);
    let windows = WindowsJson(std::array::from_fn(|i| WindowJson {
        timing_error_ms: lateness[i],
        network_latency_ms: latency[i],
    }));
    SessionJson {
        packets_sent: totals.packets_sent,
        dropped_packets: totals.dropped,
        network_latency_ms: summary(&status.latency),
        timing_error_ms: summary(&status.lateness),
        memory_usage_mb: memory as f64 / (1024.0 * 1024.0),
        memory_bytes: memory,
        is_running: status.running.load(Relaxed) && status.started.load(Relaxed),
        is_paused: status.paused.load(Relaxed),
        connections: state.clients.len(),
        connections_closed: state.departed.clients,
        clients_stalled: status.clients_stalled.load(Relaxed),
        clients_protocol_error: status.clients_protocol_error.load(Relaxed),
        clients_message_too_big: status.clients_message_too_big.load(Relaxed),
        bytes_sent: totals.bytes,
        bandwidth_bps: totals.bytes as f64 * 8.0 / age,
        packets_generated: status.packets_generated.load(Relaxed),
        sequence_number: status.sequence.load(Relaxed),
        noise: state.noise,
        frame_pool_misses: status.frame_pool_misses.load(Relaxed),
        schedule_resets: status.schedule_resets.load(Relaxed),
        timing_thread: TimingThreadJson {
            core: status.core.load(Relaxed),
            sched_fifo: status.fifo.load(Relaxed),
        },
        windows,
        clients: state.clients.iter().map(|c| client_json(c, wall)).collect(),
        lsl: lsl_json(session),
    }
}

/// The session's LSL outlets (`null` without them): push latency (tick deadline → the
/// three pushes returned), ticks pushed, ticks dropped because the LSL thread fell behind.
#[derive(Serialize)]
struct LslJson<'a> {
    streams: &'a [String],
    push_latency_ms: LatencySummary,
    samples: u64,
    dropped: u64,
    errors: u64,
    attached: bool,
}

fn lsl_json(session: &Session) -> Option<LslJson<'_>> {
    let tap = session.tap().filter(|t| t.kind == "lsl")?;
    let status = session.status();
    Some(LslJson {
        streams: &tap.streams,
        push_latency_ms: summary(&tap.latency),
        samples: tap.samples.load(Relaxed),
        dropped: status.tap_dropped.load(Relaxed),
        errors: tap.errors.load(Relaxed),
        attached: status.tap_attached.load(Relaxed),
    })
}

/// Bucket bounds of Prometheus latency histograms, seconds: 1 µs to 25 ms.
const BUCKETS_SECONDS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
];

/// The last bucket of `hist` (nanoseconds) whose highest value is at most `bound` seconds;
/// `None` when even the first one reaches above.
fn last_bucket_within(hist: &AtomicHistogram, bound: f64) -> Option<usize> {
    let within = |i: usize| hist.bucket_highest(i) as f64 / 1e9 <= bound;
    let mut index = hist.index_of((bound * 1e9).ceil() as u64);
    while index + 1 < hist.bucket_len() && within(index + 1) {
        index += 1;
    }
    loop {
        if within(index) {
            return Some(index);
        }
        index = index.checked_sub(1)?;
    }
}

/// Writes Prometheus text: families with HELP and TYPE, then samples. Every sample is a few
/// string pushes into the one buffer (labels built once per session and client, integers
/// through `itoa`): with a thousand clients the exposition is megabytes.
struct Exposition {
    out: String,
    openmetrics: bool,
    /// `le="…"` labels of [`BUCKETS_SECONDS`], as `{bound}` prints them.
    le: [String; BUCKETS_SECONDS.len()],
    /// Per histogram configuration, the last bucket within each bound of [`BUCKETS_SECONDS`].
    cutoffs: Vec<(HistConfig, [Option<usize>; BUCKETS_SECONDS.len()])>,
    integers: itoa::Buffer,
}

/// A sample's value: integers written with `itoa`, floats as `Display` prints them.
trait SampleValue {
    fn write(self, x: &mut Exposition);
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn write(self, x: &mut Exposition) {
                x.out.push_str(x.integers.format(self));
            }
        }
    )*};
}
integer_value!(u8, u64, usize);

impl SampleValue for f64 {
    fn write(self, x: &mut Exposition) {
        let _ = write!(x.out, "{self}");
    }
}

impl Exposition {
    fn new(openmetrics: bool, capacity: usize) -> Self {
        Self {
            out: String::with_capacity(capacity),
            openmetrics,
            le: BUCKETS_SECONDS.map(|bound| format!("le=\"{bound}\"")),
            cutoffs: Vec::new(),
            integers: itoa::Buffer::new(),
        }
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // OpenMetrics names a counter family without `_total` and requires it on the samples.
        let shown = if self.openmetrics && kind == "counter" {
            name.trim_end_matches("_total")
        } else {
            name
        };
        let _ = writeln!(self.out, "# HELP {shown} {help}");
        let _ = writeln!(self.out, "# TYPE {shown} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl SampleValue) {
        self.line(name, "", labels, "", value);
    }

    /// `{name}{suffix}{labels,extra} value`, the braces left out when both are empty.
    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &str,
        extra: &str,
        value: impl SampleValue,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() || !extra.is_empty() {
            self.out.push('{');
            self.out.push_str(labels);
            if !labels.is_empty() && !extra.is_empty() {
                self.out.push(',');
            }
            self.out.push_str(extra);
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(self);
        self.out.push('\n');
    }

    /// `_bucket`, `_sum` and `_count` of a histogram of nanoseconds. Each bucket counts the
    /// HDR counts whose whole equivalent range lies at or below its bound, so `_count` equals
    /// the JSON `count` exactly; `_sum` is the exact sum of the values.
    fn histogram(&mut self, name: &str, labels: &str, hist: &AtomicHistogram) {
        let config = hist.config();
        let cutoffs = match self.cutoffs.iter().find(|(c, _)| *c == config) {
            Some((_, cutoffs)) => *cutoffs,
            None => {
                let cutoffs = BUCKETS_SECONDS.map(|bound| last_bucket_within(hist, bound));
                self.cutoffs.push((config, cutoffs));
                cutoffs
            }
        };
        let mut cumulative = [0u64; BUCKETS_SECONDS.len()];
        let total = cumulative_counts(hist, &cutoffs, &mut cumulative);
        let sum = hist.sum() as f64;
        for (i, count) in cumulative.into_iter().enumerate() {
            let le = std::mem::take(&mut self.le[i]);
            self.line(name, "_bucket", labels, &le, count);
            self.le[i] = le;
        }
        self.line(name, "_bucket", labels, "le=\"+Inf\"", total);
        self.line(name, "_sum", labels, "", sum / 1e9);
        self.line(name, "_count", labels, "", total);
    }

    /// A summary with quantiles 0.5, 0.9, 0.99; values divided by `per_unit`.
    fn summary(&mut self, name: &str, labels: &str, hist: &AtomicHistogram, per_unit: f64) {
        let summary = LatencySummary::from_blocks(hist, per_unit);
        for (q, value) in [
            ("quantile=\"0.5\"", summary.p50),
            ("quantile=\"0.9\"", summary.p90),
            ("quantile=\"0.99\"", summary.p99),
        ] {
            self.line(name, "", labels, q, value);
        }
        self.line(name, "_sum", labels, "", hist.sum() as f64 / per_unit);
        self.line(name, "_count", labels, "", summary.count);
    }
}

/// A session locked for the exposition, with its labels built once.
struct Row<'a> {
    session: &'a Session,
    state: std::sync::MutexGuard<'a, SessionState>,
    /// `session="CODE"`.
    label: String,
    /// `session="CODE",client="ID"`, one per client of `state`.
    clients: Vec<String>,
}

/// Every client that has answered as a decoder, with its `session=…,client=…` label.
fn decoders<'a>(rows: &'a [Row<'a>]) -> impl Iterator<Item = (&'a DecoderStats, &'a str)> + 'a {
    rows.iter().flat_map(|row| {
        row.state
            .clients
            .iter()
            .zip(&row.clients)
            .filter_map(|(c, label)| c.decoder.get().map(|d| (&**d, label.as_str())))
    })
}

/// The Prometheus text exposition (0.0.4, or OpenMetrics 1.0 ending in `# EOF`).
pub fn prometheus(registry: &Registry, only: Option<&str>, openmetrics: bool) -> String {
    let mut x = Exposition::new(openmetrics, 16 * 1024 + registry.live_clients() * 4096);
    let sessions: Vec<Arc<Session>> = registry
        .sessions()
        .into_iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
        .collect();
    x.family("phantomlink_sessions", "gauge", "Sessions on the server.");
    x.sample("phantomlink_sessions", "", registry.sessions().len());
    x.family(
        "phantomlink_clients",
        "gauge",
        "Connected WebSocket clients.",
    );
    x.sample("phantomlink_clients", "", registry.live_clients());
    x.family(
        "phantomlink_connections_total",
        "counter",
        "WebSocket connections accepted.",
    );
    x.sample(
        "phantomlink_connections_total",
        "",
        registry.connections_opened(),
    );

    let rows: Vec<Row> = sessions
        .iter()
        .map(|session| {
            let state = session.state();
            let label = format!("session=\"{}\"", session.code());
            let clients = state
                .clients
                .iter()
                .map(|c| format!("{label},client=\"{}\"", c.id))
                .collect();
            Row {
                session,
                state,
                label,
                clients,
            }
        })
        .collect();

    type SessionValue = fn(&Session, &SessionState) -> u64;
    let per_session: [(&str, &str, &str, SessionValue); 8] = [
        (
            "phantomlink_packets_generated_total",
            "counter",
            "Packets generated by the session's timing thread.",
            |s, _| s.status().packets_generated.load(Relaxed),
        ),
        (
            "phantomlink_packets_sent_total",
            "counter",
            "Packets written to sockets, all clients of the session, departed ones included.",
            |_, st| totals(st).packets_sent,
        ),
        (
            "phantomlink_packets_dropped_total",
            "counter",
            "Packets dropped because a client's buffer was full, departed clients included.",
            |_, st| totals(st).dropped,
        ),
        (
            "phantomlink_bytes_sent_total",
            "counter",
            "Bytes written to sockets, all clients of the session.",
            |_, st| totals(st).bytes,
        ),
        (
            "phantomlink_clients_stalled_total",
            "counter",
            "Clients closed (1008) because they stopped reading.",
            |s, _| s.status().clients_stalled.load(Relaxed),
        ),
        (
            "phantomlink_clients_protocol_error_total",
            "counter",
            "Clients closed (1002) because they broke the WebSocket protocol.",
            |s, _| s.status().clients_protocol_error.load(Relaxed),
        ),
        (
            "phantomlink_clients_message_too_big_total",
            "counter",
            "Clients closed (1009) because they sent a message over the limit.",
            |s, _| s.status().clients_message_too_big.load(Relaxed),
        ),
        (
            "phantomlink_session_memory_bytes",
            "gauge",
            "Bytes the session holds: frame pools, rings, histograms, windows.",
            |s, st| s.heap_bytes(st) as u64,
        ),
    ];
    for (name, kind, help, value) in per_session {
        x.family(name, kind, help);
        for Row {
            session: s,
            state: st,
            label,
            ..
        } in &rows
        {
            x.sample(name, label, value(s, st));
        }
    }
    x.family(
        "phantomlink_session_connections",
        "gauge",
        "Clients connected to the session.",
    );
    for Row {
        state: st, label, ..
    } in &rows
    {
        x.sample("phantomlink_session_connections", label, st.clients.len());
    }
    x.family(
        "phantomlink_session_paused",
        "gauge",
        "1 while the session is paused.",
    );
    for Row {
        session: s, label, ..
    } in &rows
    {
        x.sample(
            "phantomlink_session_paused",
            label,
            u8::from(s.status().paused.load(Relaxed)),
        );
    }

    type ClientValue = fn(&ClientShared) -> u64;
    let per_client: [(&str, &str, &str, ClientValue); 4] = [
        (
            "phantomlink_client_packets_sent_total",
            "counter",
            "Packets written to the client's socket.",
            |c| c.counters.packets_sent.load(Relaxed),
        ),
        (
            "phantomlink_client_packets_dropped_total",
            "counter",
            "Packets dropped for the client because its buffer was full.",
            |c| c.counters.dropped_packets.load(Relaxed),
        ),
        (
            "phantomlink_client_bytes_sent_total",
            "counter",
            "Bytes written to the client's socket.",
            |c| c.counters.bytes_sent.load(Relaxed),
        ),
        (
            "phantomlink_client_ring_high_water",
            "gauge",
            "Most packets ever waiting in the client's buffer.",
            |c| c.counters.ring_high_water.load(Relaxed) as u64,
        ),
    ];
    for (name, kind, help, value) in per_client {
        x.family(name, kind, help);
        for Row {
            state: st,
            clients: labels,
            ..
        } in &rows
        {
            for (c, client_label) in st.clients.iter().zip(labels) {
                x.sample(name, client_label, value(c));
            }
        }
    }

    x.family(
        "phantomlink_tick_lateness_seconds",
        "histogram",
        "Timing thread wake time minus the tick's absolute deadline.",
    );
    for Row {
        session: s, label, ..
    } in &rows
    {
        x.histogram(
            "phantomlink_tick_lateness_seconds",
            label,
            &s.status().lateness,
        );
    }
    x.family(
        "phantomlink_network_latency_seconds",
        "histogram",
        "Tick to the write to the client's socket returning.",
    );
    for Row {
        state: st,
        clients: labels,
        ..
    } in &rows
    {
        for (c, client_label) in st.clients.iter().zip(labels) {
            x.histogram(
                "phantomlink_network_latency_seconds",
                client_label,
                &c.latency,
            );
        }
    }
    x.family(
        "phantomlink_ring_wait_seconds",
        "histogram",
        "Tick to the client's writer taking the packet from its buffer.",
    );
    for Row {
        state: st,
        clients: labels,
        ..
    } in &rows
    {
        for (c, client_label) in st.clients.iter().zip(labels) {
            x.histogram("phantomlink_ring_wait_seconds", client_label, &c.ring_wait);
        }
    }
    let lsl: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            let tap = r.session.tap().filter(|t| t.kind == "lsl")?;
            Some((r.session, r.label.as_str(), tap))
        })
        .collect();
    x.family(
        "phantomlink_lsl_push_latency_seconds",
        "histogram",
        "Tick deadline to the session's LSL pushes returning.",
    );
    for &(_, label, tap) in &lsl {
        x.histogram("phantomlink_lsl_push_latency_seconds", label, &tap.latency);
    }
    x.family(
        "phantomlink_lsl_samples_total",
        "counter",
        "Ticks pushed to the session's LSL outlets.",
    );
    for &(_, label, tap) in &lsl {
        x.sample(
            "phantomlink_lsl_samples_total",
            label,
            tap.samples.load(Relaxed),
        );
    }
    x.family(
        "phantomlink_lsl_dropped_total",
        "counter",
        "Ticks dropped for the session's LSL outlets because their thread fell behind.",
    );
    for &(s, label, _) in &lsl {
        x.sample(
            "phantomlink_lsl_dropped_total",
            label,
            s.status().tap_dropped.load(Relaxed),
        );
    }
    x.family(
        "phantomlink_decoder_round_trip_seconds",
        "histogram",
        "Packet written to a client's decoder answer for it received.",
    );
    for (d, client_label) in decoders(&rows) {
        x.histogram(
            "phantomlink_decoder_round_trip_seconds",
            client_label,
            &d.round_trip,
        );
    }
    x.family(
        "phantomlink_decoder_messages_total",
        "counter",
        "Decoder messages by outcome: matched, late, unknown (never sent), malformed.",
    );
    for (d, client_label) in decoders(&rows) {
        for (outcome, n) in [
            ("outcome=\"matched\"", &d.matched),
            ("outcome=\"late\"", &d.late),
            ("outcome=\"unknown\"", &d.unknown),
            ("outcome=\"malformed\"", &d.malformed),
        ] {
            x.line(
                "phantomlink_decoder_messages_total",
                "",
                client_label,
                outcome,
                n.load(Relaxed),
            );
        }
    }
    for (name, help, unit_scale, pick) in [
        (
            "phantomlink_decoder_velocity_error_mm_per_second",
            "Magnitude of decoded minus true velocity.",
            1e3,
            0usize,
        ),
        (
            "phantomlink_decoder_position_error_mm",
            "Distance of decoded from true position.",
            1e3,
            1,
        ),
    ] {
        x.family(name, "summary", help);
        for (d, client_label) in decoders(&rows) {
            let hist = if pick == 0 {
                &d.velocity_error
            } else {
                &d.position_error
            };
            x.summary(name, client_label, hist, unit_scale);
        }
    }
    drop(rows);

    let process = ProcessStats::read();
    x.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    x.sample("process_resident_memory_bytes", "", process.rss_bytes);
    x.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    x.sample("process_cpu_seconds_total", "", process.cpu_seconds);
    x.family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    x.sample("process_start_time_seconds", "", process.start_time_seconds);
    x.family(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
    );
    x.sample("process_threads", "", process.threads);
    if openmetrics {
        x.out.push_str("# EOF\n");
    }
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireFormat;
    use crate::dataset::synthetic::{generate, SyntheticConfig};
    use crate::dataset::PacketTable;
    use crate::engine::EngineConfig;
    use std::time::Duration;

    /// The bytes serde_json's own formatting gives `value`.
    fn reference(value: f64) -> String {
        serde_json::to_string(&value).unwrap()
    }

    fn ours(value: f64) -> String {
        let mut out = Vec::new();
        write_json(&mut out, &value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_print_as_serde_json_prints_them() {
        // Every nanosecond up to 3 ms, then a spread up to and past 2³² ms.
        for ns in 0..3_000_000u64 {
            let value = ns as f64 / 1e6;
            assert_eq!(ours(value), reference(value), "{ns} ns");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1_000_000 {
            let ns = next() >> (next() % 64);
            for value in [
                ns as f64 / 1e6,
                ns as f64 / 1e3,
                f64::from_bits(next()),
                (ns as f64 / 1e6).next_up(),
            ] {
                assert_eq!(ours(value), reference(value), "{value:e}");
            }
        }
        for value in [
            0.0,
            -0.0,
            1e-5,
            4_294_967_296.0,
            4_294_967_295.999_999,
            1e15,
        ] {
            assert_eq!(ours(value), reference(value), "{value:e}");
        }
    }

    /// Sessions with clients attached without sockets, their histograms filled.
    fn registry(sessions: usize, clients: usize) -> Registry {
        let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
        let registry = Registry::new(
            table,
            EngineConfig {
                max_sessions: sessions,
                ..EngineConfig::default()
            },
        );
        for s in 0..sessions {
            let session = registry.create(Some(&format!("render-{s:02}"))).unwrap();
            // Sessions of unequal sizes, some empty, so that runs differ in length.
            for c in 0..(s * 7) % (clients + 1) {
                let id = (s * clients + c) as u64;
                let remote = format!("127.0.0.1:{}", 20_000 + id).parse().unwrap();
                let shared = Arc::new(ClientShared::new(id, remote, WireFormat::ALL[c % 2], 64));
                for v in 0..500u64 {
                    shared.latency.record(40_000 + v * v * 37 + id);
                    shared.ring_wait.record(1_000 + v * 113);
                    session.status().latency.record(40_000 + v * 991);
                }
                session
                    .attach(shared, None, registry.table().playlist_all(), clients)
                    .unwrap();
            }
            for v in 0..300u64 {
                session.status().lateness.record(150 + v * 61);
            }
        }
        registry
    }

    fn entries(sessions: &[&Session], clock: Clock, threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        session_entries(&mut out, sessions, clock, threads);
        out
    }

    #[test]
    fn parallel_render_is_the_serial_render() {
        let registry = registry(37, 6);
        let all = registry.sessions();
        let sessions: Vec<&Session> = all.iter().map(|s| &**s).collect();
        let clock = Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        };
        // Timing threads publish their core and scheduling as they start: a comparison
        // counts when the serial render before and after it agree.
        let mut serial = entries(&sessions, clock, 1);
        // The entries make a valid object, every session in order.
        let object: serde_json::Value =
            serde_json::from_slice(&[b"{", &serial[..], b"}"].concat()).unwrap();
        let codes: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(codes.len(), 37);
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        for threads in [2, 3, 4, 8] {
            let mut attempts = 0;
            loop {
                let parallel = entries(&sessions, clock, threads);
                let after = entries(&sessions, clock, 1);
                if after == serial {
                    assert!(parallel == serial, "{threads} threads render other bytes");
                    break;
                }
                attempts += 1;
                assert!(attempts < 50, "the figures never hold still");
                std::thread::sleep(Duration::from_millis(20));
                serial = after;
            }
        }
        // The whole document, rendered serially and in parallel, is the same JSON apart
        // from the figures that move with time (timestamp, uptime, process).
        let document = |threads| -> serde_json::Value {
            let mut v: serde_json::Value =
                serde_json::from_slice(&json_with(&registry, None, threads)).unwrap();
            v["timestamp"] = 0.into();
            v["metrics"]["uptime_seconds"] = 0.into();
            v["process"] = 0.into();
            v
        };
        assert_eq!(document(1), document(4));
        let only = json_with(&registry, Some("render-03"), 4);
        let only: serde_json::Value = serde_json::from_slice(&only).unwrap();
        assert_eq!(only["metrics"]["total_sessions"], 37);
        assert_eq!(
            only["metrics"]["sessions"].as_object().unwrap().len(),
            1,
            "{only}"
        );
        registry.shut_down(Instant::now() + Duration::from_secs(2));
    }
}
