//! The Prometheus text exposition of `GET /metrics` (format 0.0.4, or OpenMetrics 1.0):
//! `phantomlink_` families in base units, histograms with exact bucket counts derived from
//! the HDR counts, labels `session` and `client`, and the standard `process_*` metrics.
//!
//! Sessions are read under their locks into rows (figures, labels and the clients' `Arc`s),
//! the locks released, then the text is written; the clients' histogram families, most of
//! the text, are written in parallel by the render pool's helpers. Must never: hold a lock
//! while writing.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::bounded;

use super::{totals, SESSIONS_PER_THREAD};
use crate::engine::feedback::DecoderStats;
use crate::engine::{ClientShared, Registry, Session, SessionState};
use crate::metrics::histogram::{cumulative_counts, AtomicHistogram, HistConfig};
use crate::metrics::process::ProcessStats;
use crate::metrics::render_pool::{render_threads, RenderPool};
use crate::metrics::LatencySummary;

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
    /// The start of a histogram's bucket lines, `name_bucket{labels,`.
    prefix: String,
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
            prefix: String::new(),
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
    /// The last bucket of `hist` within each bound of [`BUCKETS_SECONDS`] (computed once per
    /// histogram configuration).
    fn cutoffs_of(&mut self, hist: &AtomicHistogram) -> [Option<usize>; BUCKETS_SECONDS.len()] {
        let config = hist.config();
        match self.cutoffs.iter().find(|(c, _)| *c == config) {
            Some((_, cutoffs)) => *cutoffs,
            None => {
                let cutoffs = BUCKETS_SECONDS.map(|bound| last_bucket_within(hist, bound));
                self.cutoffs.push((config, cutoffs));
                cutoffs
            }
        }
    }

    fn histogram(&mut self, name: &str, labels: &str, hist: &AtomicHistogram) {
        let cutoffs = self.cutoffs_of(hist);
        let mut cumulative = [0u64; BUCKETS_SECONDS.len()];
        let total = cumulative_counts(hist, &cutoffs, &mut cumulative);
        let sum = hist.sum() as f64;
        // `name_bucket{labels,` is built once and copied whole into each bucket line
        // (fifteen per histogram, two histograms per client).
        self.prefix.clear();
        self.prefix.push_str(name);
        self.prefix.push_str("_bucket{");
        if !labels.is_empty() {
            self.prefix.push_str(labels);
            self.prefix.push(',');
        }
        let les = self.le.iter().map(String::as_str).chain(["le=\"+Inf\""]);
        for (le, count) in les.zip(cumulative.into_iter().chain([total])) {
            self.out.push_str(&self.prefix);
            self.out.push_str(le);
            self.out.push_str("} ");
            self.out.push_str(self.integers.format(count));
            self.out.push('\n');
        }
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

/// A session's figures for the exposition, read under its lock (released before any text
/// is written), with its labels built once. Clients are held by `Arc`, so that helper
/// threads can write their histograms.
struct Row {
    session: Arc<Session>,
    /// `session="CODE"`.
    label: String,
    /// The values of [`PER_SESSION`], in order.
    values: [u64; PER_SESSION.len()],
    /// Clients connected, each with its `session="CODE",client="ID"` label.
    clients: Vec<(Arc<ClientShared>, String)>,
}

impl Row {
    fn read(session: Arc<Session>) -> Self {
        let state = session.state();
        let label = format!("session=\"{}\"", session.code());
        let values = PER_SESSION.map(|(.., value)| value(&session, &state));
        let clients = state
            .clients
            .iter()
            .map(|c| (Arc::clone(c), format!("{label},client=\"{}\"", c.id)))
            .collect();
        drop(state);
        Row {
            session,
            label,
            values,
            clients,
        }
    }
}

type SessionValue = fn(&Session, &SessionState) -> u64;

/// Per-session families: name, type, help, and how the value is read (under the lock).
const PER_SESSION: [(&str, &str, &str, SessionValue); 10] = [
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
    (
        "phantomlink_session_connections",
        "gauge",
        "Clients connected to the session.",
        |_, st| st.clients.len() as u64,
    ),
    (
        "phantomlink_session_paused",
        "gauge",
        "1 while the session is paused.",
        |s, _| u64::from(s.status().paused.load(Relaxed)),
    ),
];

type ClientValue = fn(&ClientShared) -> u64;

/// Per-client counter families.
const PER_CLIENT: [(&str, &str, &str, ClientValue); 4] = [
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

type ClientHistogram = fn(&ClientShared) -> &AtomicHistogram;

/// Per-client histogram families.
const CLIENT_HISTOGRAMS: [(&str, &str, ClientHistogram); 2] = [
    (
        "phantomlink_network_latency_seconds",
        "Tick to the write to the client's socket returning.",
        |c| &c.latency,
    ),
    (
        "phantomlink_ring_wait_seconds",
        "Tick to the client's writer taking the packet from its buffer.",
        |c| &c.ring_wait,
    ),
];

/// The per-client families, [`PER_CLIENT`] then [`CLIENT_HISTOGRAMS`]: most of the text
/// (over twenty lines per client), so they are the part written in parallel.
const CLIENT_FAMILIES: usize = PER_CLIENT.len() + CLIENT_HISTOGRAMS.len();

/// The samples of the `family`-th of the [`CLIENT_FAMILIES`] for the clients of `rows`.
fn client_family(x: &mut Exposition, rows: &[Row], family: usize) {
    let clients = rows.iter().flat_map(|r| &r.clients);
    match family.checked_sub(PER_CLIENT.len()) {
        None => {
            let (name, _, _, value) = PER_CLIENT[family];
            for (c, label) in clients {
                x.sample(name, label, value(c));
            }
        }
        Some(histogram) => {
            let (name, _, pick) = CLIENT_HISTOGRAMS[histogram];
            let clients: Vec<_> = clients.collect();
            for (k, (c, label)) in clients.iter().enumerate() {
                // Two clients ahead the histogram's fields, one ahead the lines its buckets
                // will be read from: the misses overlap with this client's work.
                if let Some((next, _)) = clients.get(k + 2) {
                    pick(next).prefetch_header();
                }
                if let Some((next, _)) = clients.get(k + 1) {
                    let hist = pick(next);
                    let cutoffs = x.cutoffs_of(hist);
                    hist.prefetch_buckets(cutoffs.into_iter().flatten());
                }
                x.histogram(name, label, pick(c));
            }
        }
    }
}

/// Every client that has answered as a decoder, with its `session=…,client=…` label.
fn decoders(rows: &[Row]) -> impl Iterator<Item = (&DecoderStats, &str)> + '_ {
    rows.iter().flat_map(|row| {
        row.clients
            .iter()
            .filter_map(|(c, label)| c.decoder.get().map(|d| (&**d, label.as_str())))
    })
}

/// The Prometheus text exposition (0.0.4, or OpenMetrics 1.0 ending in `# EOF`). With many
/// sessions the clients' histogram families are written in parallel (see
/// `render_threads`); the text is that of a serial render.
pub fn prometheus(registry: &Registry, only: Option<&str>, openmetrics: bool) -> String {
    prometheus_with(registry, only, openmetrics, render_threads())
}

/// [`prometheus`] in up to `threads` parts.
fn prometheus_with(
    registry: &Registry,
    only: Option<&str>,
    openmetrics: bool,
    threads: usize,
) -> String {
    let mut x = Exposition::new(openmetrics, 16 * 1024 + registry.live_clients() * 4096);
    let sessions = registry.sessions();
    let rows: Vec<Row> = sessions
        .iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
        .map(|s| Row::read(Arc::clone(s)))
        .collect();
    let rows = Arc::new(rows);

    // The client families of all runs of rows but the first go to helpers first, to be
    // written while this thread writes everything before them.
    let threads = threads.min(rows.len() / SESSIONS_PER_THREAD).max(1);
    // This thread also writes the session families and the tick lateness histograms, and
    // appends the helpers' text: it takes 4/5 of an equal share of the client rows.
    let first_run = if threads == 1 {
        rows.len()
    } else {
        rows.len() * 4 / (5 * threads)
    };
    let per_run = (rows.len() - first_run)
        .div_ceil((threads - 1).max(1))
        .max(1);
    let pool = RenderPool::global();
    let others: Vec<_> = (first_run..rows.len())
        .step_by(per_run)
        .map(|start| {
            let rows = Arc::clone(&rows);
            // Each family's text is sent as soon as it is written, so that this thread
            // appends it while the helper writes the next one.
            let (texts, received) = bounded(CLIENT_FAMILIES);
            let done = pool.spawn(move || {
                let run = &rows[start..(start + per_run).min(rows.len())];
                let clients: usize = run.iter().map(|r| r.clients.len()).sum();
                for family in 0..CLIENT_FAMILIES {
                    let per_client = if family < PER_CLIENT.len() { 100 } else { 1800 };
                    let mut x = Exposition::new(openmetrics, 256 + clients * per_client);
                    client_family(&mut x, run, family);
                    if texts.send(x.out).is_err() {
                        return;
                    }
                }
            });
            (received, done)
        })
        .collect();

    x.family("phantomlink_sessions", "gauge", "Sessions on the server.");
    x.sample("phantomlink_sessions", "", sessions.len());
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
    for (i, (name, kind, help, _)) in PER_SESSION.iter().enumerate() {
        x.family(name, kind, help);
        for row in rows.iter() {
            x.sample(name, &row.label, row.values[i]);
        }
    }
    // This thread's run of each client family, then the helpers' runs, in order. A helper
    // that panicked sends no more; its panic resumes below, once this thread is done.
    let first = &rows[..first_run];
    let client_family_with_others = |x: &mut Exposition, family: usize| {
        client_family(x, first, family);
        for (texts, _) in &others {
            if let Ok(text) = texts.recv() {
                x.out.push_str(&text);
            }
        }
    };
    for (family, (name, kind, help, _)) in PER_CLIENT.iter().enumerate() {
        x.family(name, kind, help);
        client_family_with_others(&mut x, family);
    }
    x.family(
        "phantomlink_tick_lateness_seconds",
        "histogram",
        "Timing thread wake time minus the tick's absolute deadline.",
    );
    for row in rows.iter() {
        x.histogram(
            "phantomlink_tick_lateness_seconds",
            &row.label,
            &row.session.status().lateness,
        );
    }
    for (i, (name, help, _)) in CLIENT_HISTOGRAMS.iter().enumerate() {
        x.family(name, "histogram", help);
        client_family_with_others(&mut x, PER_CLIENT.len() + i);
    }
    for (_, done) in others {
        done.join();
    }
    let lsl: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            let tap = r.session.tap().filter(|t| t.kind == "lsl")?;
            Some((&*r.session, r.label.as_str(), tap))
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
    for (d, client_label) in decoders(&rows[..]) {
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
    for (d, client_label) in decoders(&rows[..]) {
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
        for (d, client_label) in decoders(&rows[..]) {
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
    for (name, kind, help, value) in [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            process.rss_bytes as f64,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            process.cpu_seconds,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            process.start_time_seconds,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            process.threads as f64,
        ),
    ] {
        // Whole numbers (bytes, threads) print without a fraction: `{}` of an f64.
        x.family(name, kind, help);
        x.sample(name, "", value);
    }
    if openmetrics {
        x.out.push_str("# EOF\n");
    }
    x.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report::testing::{registry, same_as_serial};
    use std::time::{Duration, Instant};

    #[test]
    fn parallel_exposition_is_the_serial_exposition() {
        let registry = registry(29, 5);
        // Process figures move with time: the comparison stops before them.
        let render = |threads| {
            let mut text = prometheus_with(&registry, None, true, threads);
            text.truncate(text.find("# HELP process_").unwrap());
            text
        };
        assert!(render(1).contains("phantomlink_ring_wait_seconds_bucket{session=\"render-28\""));
        same_as_serial(&[2, 3, 8], render);
        registry.shut_down(Instant::now() + Duration::from_secs(2));
    }
}
