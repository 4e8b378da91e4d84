//! `/metrics` as JSON (the reference schema, extended) and as Prometheus text.
//!
//! Readers only: snapshots of atomic counters and histograms, taken under the session state
//! lock (which no timing thread or streaming writer ever takes), then formatted.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::histogram::{cumulative_counts, AtomicHistogram};
use super::process::ProcessStats;
use super::window::WINDOWS;
use super::LatencySummary;
use crate::engine::feedback::DecoderStats;
use crate::engine::{ClientShared, Registry, Session, SessionState};

fn unix(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn summary(hist: &AtomicHistogram) -> LatencySummary {
    LatencySummary::of(hist)
}

/// The JSON document of `GET /metrics`, for every session or only `only`.
pub fn json(registry: &Registry, only: Option<&str>) -> Value {
    let sessions = registry.sessions();
    let mut per_session = Map::new();
    // Server-wide, like total_sessions and total_connections, also when narrowed by `only`.
    let active = sessions.iter().filter(|s| s.client_count() > 0).count();
    let now = Instant::now();
    for session in sessions
        .iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
    {
        let state = session.state();
        per_session.insert(
            session.code().to_string(),
            session_json(session, &state, now),
        );
    }
    json!({
        "timestamp": unix(SystemTime::now()),
        "service": "PhantomLink",
        "version": env!("CARGO_PKG_VERSION"),
        "metrics": {
            "total_sessions": sessions.len(),
            "active_sessions": active,
            "total_connections": registry.live_clients(),
            "connections_opened": registry.connections_opened(),
            "uptime_seconds": registry.uptime().as_secs_f64(),
            "dataset_bytes": registry.table().heap_bytes(),
            "sessions": per_session,
        },
        "process": ProcessStats::read(),
    })
}

fn client_json(client: &ClientShared, now: SystemTime) -> Value {
    let counters = &client.counters;
    let bytes = counters.bytes_sent.load(Relaxed);
    let connected = now
        .duration_since(client.connected_at)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    json!({
        "id": client.id,
        "remote": client.remote.to_string(),
        "format": client.format,
        "connected_at": unix(client.connected_at),
        "packets_sent": counters.packets_sent.load(Relaxed),
        "dropped_packets": counters.dropped_packets.load(Relaxed),
        "bytes_sent": bytes,
        "bandwidth_bps": bytes as f64 * 8.0 / connected,
        "network_latency_ms": summary(&client.latency),
        "ring_wait_ms": summary(&client.ring_wait),
        "ring_high_water": counters.ring_high_water.load(Relaxed),
        "ring_capacity": client.ring_capacity,
        "messages_received": counters.messages_received.load(Relaxed),
        "memory_bytes": client.heap_bytes(),
        "decoder": client.decoder.get().map(|d| decoder_json(d)),
    })
}

fn decoder_json(d: &DecoderStats) -> Value {
    let total = d.target_total.load(Relaxed);
    json!({
        "round_trip_ms": summary(&d.round_trip),
        "velocity_error": LatencySummary::from_blocks(&d.velocity_error, 1e3),
        "position_error": LatencySummary::from_blocks(&d.position_error, 1e3),
        "target_accuracy": (total > 0).then(|| d.target_correct.load(Relaxed) as f64 / total as f64),
        "target_answers": total,
        "messages": d.messages.load(Relaxed),
        "matched": d.matched.load(Relaxed),
        "late": d.late.load(Relaxed),
        "unknown": d.unknown.load(Relaxed),
        "malformed": d.malformed.load(Relaxed),
    })
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

fn session_json(session: &Session, state: &SessionState, now: Instant) -> Value {
    let status = session.status();
    let wall = SystemTime::now();
    let clients: Vec<Value> = state.clients.iter().map(|c| client_json(c, wall)).collect();
    let totals = totals(state);
    let memory = session.heap_bytes(state);
    let age = session.age().as_secs_f64().max(1e-3);
    let lateness = state.lateness_windows.summaries(&status.lateness, now, 1e6);
    let latency = state.latency_windows.summaries(&status.latency, now, 1e6);
    let mut windows = Map::new();
    for (i, (name, _)) in WINDOWS.iter().enumerate() {
        windows.insert(
            name.to_string(),
            json!({ "timing_error_ms": lateness[i], "network_latency_ms": latency[i] }),
        );
    }
    json!({
        "packets_sent": totals.packets_sent,
        "dropped_packets": totals.dropped,
        "network_latency_ms": summary(&status.latency),
        "timing_error_ms": summary(&status.lateness),
        "memory_usage_mb": memory as f64 / (1024.0 * 1024.0),
        "memory_bytes": memory,
        "is_running": status.running.load(Relaxed) && status.started.load(Relaxed),
        "is_paused": status.paused.load(Relaxed),
        "connections": state.clients.len(),
        "connections_closed": state.departed.clients,
        "clients_stalled": status.clients_stalled.load(Relaxed),
        "clients_protocol_error": status.clients_protocol_error.load(Relaxed),
        "clients_message_too_big": status.clients_message_too_big.load(Relaxed),
        "bytes_sent": totals.bytes,
        "bandwidth_bps": totals.bytes as f64 * 8.0 / age,
        "packets_generated": status.packets_generated.load(Relaxed),
        "sequence_number": status.sequence.load(Relaxed),
        "noise": state.noise,
        "frame_pool_misses": status.frame_pool_misses.load(Relaxed),
        "schedule_resets": status.schedule_resets.load(Relaxed),
        "timing_thread": {
            "core": status.core.load(Relaxed),
            "sched_fifo": status.fifo.load(Relaxed),
        },
        "windows": windows,
        "clients": clients,
        "lsl": lsl_json(session),
    })
}

/// The session's LSL outlets (`null` without them): push latency (tick deadline → the
/// three pushes returned), ticks pushed, ticks dropped because the LSL thread fell behind.
fn lsl_json(session: &Session) -> Value {
    let Some(tap) = session.tap().filter(|t| t.kind == "lsl") else {
        return Value::Null;
    };
    let status = session.status();
    json!({
        "streams": tap.streams,
        "push_latency_ms": summary(&tap.latency),
        "samples": tap.samples.load(Relaxed),
        "dropped": status.tap_dropped.load(Relaxed),
        "errors": tap.errors.load(Relaxed),
        "attached": status.tap_attached.load(Relaxed),
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

/// Writes Prometheus text: families with HELP and TYPE, then samples.
struct Exposition {
    out: String,
    openmetrics: bool,
}

impl Exposition {
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

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// `_bucket`, `_sum` and `_count` of a histogram of nanoseconds. Each bucket counts the
    /// HDR counts whose whole equivalent range lies at or below its bound, so `_count` equals
    /// the JSON `count` exactly; `_sum` is the exact sum of the values.
    fn histogram(&mut self, name: &str, labels: &str, hist: &AtomicHistogram) {
        let cutoffs = BUCKETS_SECONDS.map(|bound| last_bucket_within(hist, bound));
        let mut cumulative = [0u64; BUCKETS_SECONDS.len()];
        let total = cumulative_counts(hist, &cutoffs, &mut cumulative);
        let sum = hist.sum() as f64;
        for (bound, count) in BUCKETS_SECONDS.iter().zip(cumulative) {
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels},le=\"{bound}\""),
                count,
            );
        }
        self.sample(
            &format!("{name}_bucket"),
            &format!("{labels},le=\"+Inf\""),
            total,
        );
        self.sample(&format!("{name}_sum"), labels, sum / 1e9);
        self.sample(&format!("{name}_count"), labels, total);
    }
}

impl Exposition {
    /// A summary with quantiles 0.5, 0.9, 0.99; values divided by `per_unit`.
    fn summary(&mut self, name: &str, labels: &str, hist: &AtomicHistogram, per_unit: f64) {
        let summary = LatencySummary::from_blocks(hist, per_unit);
        for (q, value) in [(0.5, summary.p50), (0.9, summary.p90), (0.99, summary.p99)] {
            self.sample(name, &format!("{labels},quantile=\"{q}\""), value);
        }
        self.sample(
            &format!("{name}_sum"),
            labels,
            summary.mean * summary.count as f64,
        );
        self.sample(&format!("{name}_count"), labels, summary.count);
    }
}

/// The Prometheus text exposition (0.0.4, or OpenMetrics 1.0 ending in `# EOF`).
pub fn prometheus(registry: &Registry, only: Option<&str>, openmetrics: bool) -> String {
    let mut x = Exposition {
        out: String::with_capacity(16 * 1024),
        openmetrics,
    };
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

    let states: Vec<_> = sessions.iter().map(|s| (s, s.state())).collect();
    let session_label = |s: &Session| format!("session=\"{}\"", s.code());
    let client_label =
        |s: &Session, c: &ClientShared| format!("session=\"{}\",client=\"{}\"", s.code(), c.id);

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
        for (s, st) in &states {
            x.sample(name, &session_label(s), value(s, st));
        }
    }
    x.family(
        "phantomlink_session_connections",
        "gauge",
        "Clients connected to the session.",
    );
    for (s, st) in &states {
        x.sample(
            "phantomlink_session_connections",
            &session_label(s),
            st.clients.len(),
        );
    }
    x.family(
        "phantomlink_session_paused",
        "gauge",
        "1 while the session is paused.",
    );
    for (s, _) in &states {
        x.sample(
            "phantomlink_session_paused",
            &session_label(s),
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
        for (s, st) in &states {
            for c in &st.clients {
                x.sample(name, &client_label(s, c), value(c));
            }
        }
    }

    x.family(
        "phantomlink_tick_lateness_seconds",
        "histogram",
        "Timing thread wake time minus the tick's absolute deadline.",
    );
    for (s, _) in &states {
        x.histogram(
            "phantomlink_tick_lateness_seconds",
            &session_label(s),
            &s.status().lateness,
        );
    }
    x.family(
        "phantomlink_network_latency_seconds",
        "histogram",
        "Tick to the write to the client's socket returning.",
    );
    for (s, st) in &states {
        for c in &st.clients {
            x.histogram(
                "phantomlink_network_latency_seconds",
                &client_label(s, c),
                &c.latency,
            );
        }
    }
    x.family(
        "phantomlink_ring_wait_seconds",
        "histogram",
        "Tick to the client's writer taking the packet from its buffer.",
    );
    for (s, st) in &states {
        for c in &st.clients {
            x.histogram(
                "phantomlink_ring_wait_seconds",
                &client_label(s, c),
                &c.ring_wait,
            );
        }
    }
    let lsl: Vec<_> = states
        .iter()
        .filter_map(|(s, _)| s.tap().filter(|t| t.kind == "lsl").map(|t| (s, t)))
        .collect();
    x.family(
        "phantomlink_lsl_push_latency_seconds",
        "histogram",
        "Tick deadline to the session's LSL pushes returning.",
    );
    for (s, tap) in &lsl {
        x.histogram(
            "phantomlink_lsl_push_latency_seconds",
            &session_label(s),
            &tap.latency,
        );
    }
    x.family(
        "phantomlink_lsl_samples_total",
        "counter",
        "Ticks pushed to the session's LSL outlets.",
    );
    for (s, tap) in &lsl {
        x.sample(
            "phantomlink_lsl_samples_total",
            &session_label(s),
            tap.samples.load(Relaxed),
        );
    }
    x.family(
        "phantomlink_lsl_dropped_total",
        "counter",
        "Ticks dropped for the session's LSL outlets because their thread fell behind.",
    );
    for (s, _) in &lsl {
        x.sample(
            "phantomlink_lsl_dropped_total",
            &session_label(s),
            s.status().tap_dropped.load(Relaxed),
        );
    }
    x.family(
        "phantomlink_decoder_round_trip_seconds",
        "histogram",
        "Packet written to a client's decoder answer for it received.",
    );
    for (s, st) in &states {
        for c in &st.clients {
            if let Some(d) = c.decoder.get() {
                x.histogram(
                    "phantomlink_decoder_round_trip_seconds",
                    &client_label(s, c),
                    &d.round_trip,
                );
            }
        }
    }
    x.family(
        "phantomlink_decoder_messages_total",
        "counter",
        "Decoder messages by outcome: matched, late, unknown (never sent), malformed.",
    );
    for (s, st) in &states {
        for c in &st.clients {
            if let Some(d) = c.decoder.get() {
                for (outcome, n) in [
                    ("matched", &d.matched),
                    ("late", &d.late),
                    ("unknown", &d.unknown),
                    ("malformed", &d.malformed),
                ] {
                    x.sample(
                        "phantomlink_decoder_messages_total",
                        &format!("{},outcome=\"{outcome}\"", client_label(s, c)),
                        n.load(Relaxed),
                    );
                }
            }
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
        for (s, st) in &states {
            for c in &st.clients {
                if let Some(d) = c.decoder.get() {
                    let hist = if pick == 0 {
                        &d.velocity_error
                    } else {
                        &d.position_error
                    };
                    x.summary(name, &client_label(s, c), hist, unit_scale);
                }
            }
        }
    }
    drop(states);

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
