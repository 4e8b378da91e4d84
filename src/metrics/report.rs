//! `/metrics` as JSON (the reference schema, extended) and as Prometheus text.
//!
//! Readers only: drains the histogram pipes into the sessions' totals under the session
//! state lock (never held by a timing thread or by a writer while it streams) and formats.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::process::ProcessStats;
use super::{Hist, LatencySummary};
use crate::engine::{Registry, Session, SessionState};

/// Bytes of heap a histogram holds (its counts array).
fn hist_bytes(hist: &Hist) -> usize {
    hist.distinct_values() * std::mem::size_of::<u64>()
}

/// Bytes a session really holds: frame pools, rings, histograms (both ends of every pipe).
fn session_memory(session: &Session, state: &SessionState) -> usize {
    let pools = session.status().frame_pool_bytes.load(Relaxed);
    let lateness = hist_bytes(&state.lateness_total) * 3; // total + the pipe's two
    let latency = hist_bytes(&state.latency_total);
    let clients: usize = state
        .clients
        .iter()
        .map(|c| {
            c.shared.ring_capacity * std::mem::size_of::<usize>()
                + hist_bytes(&c.latency_total) * 3
                + std::mem::size_of_val(&*c.shared)
        })
        .sum();
    pools + lateness + latency + clients
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The JSON document of `GET /metrics`, for every session or only `only`.
pub fn json(registry: &Registry, only: Option<&str>) -> Value {
    let sessions = registry.sessions();
    let mut per_session = Map::new();
    let mut active = 0;
    for session in sessions
        .iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
    {
        let mut state = session.state();
        state.collect();
        if !state.clients.is_empty() {
            active += 1;
        }
        per_session.insert(session.code().to_string(), session_json(session, &state));
    }
    json!({
        "timestamp": now_unix(),
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

fn session_json(session: &Session, state: &SessionState) -> Value {
    let status = session.status();
    let now = SystemTime::now();
    let clients: Vec<Value> = state
        .clients
        .iter()
        .map(|c| {
            let counters = &c.shared.counters;
            let bytes = counters.bytes_sent.load(Relaxed);
            let connected = now
                .duration_since(c.shared.connected_at)
                .unwrap_or_default()
                .as_secs_f64()
                .max(1e-3);
            json!({
                "id": c.shared.id,
                "remote": c.shared.remote.to_string(),
                "format": c.shared.format,
                "connected_at": c.shared.connected_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
                "packets_sent": counters.packets_sent.load(Relaxed),
                "dropped_packets": counters.dropped_packets.load(Relaxed),
                "bytes_sent": bytes,
                "bandwidth_bps": bytes as f64 * 8.0 / connected,
                "network_latency_ms": LatencySummary::from_nanos(&c.latency_total),
                "ring_high_water": counters.ring_high_water.load(Relaxed),
                "ring_capacity": c.shared.ring_capacity,
                "messages_received": counters.messages_received.load(Relaxed),
            })
        })
        .collect();
    let live = |f: fn(&crate::engine::ClientCounters) -> u64| -> u64 {
        state.clients.iter().map(|c| f(&c.shared.counters)).sum()
    };
    let packets_sent = state.departed.packets_sent + live(|c| c.packets_sent.load(Relaxed));
    let dropped = state.departed.dropped_packets + live(|c| c.dropped_packets.load(Relaxed));
    let bytes_sent = state.departed.bytes_sent + live(|c| c.bytes_sent.load(Relaxed));
    let memory = session_memory(session, state);
    let age = session.age().as_secs_f64().max(1e-3);
    json!({
        "packets_sent": packets_sent,
        "dropped_packets": dropped,
        "network_latency_ms": LatencySummary::from_nanos(&state.latency_total),
        "timing_error_ms": LatencySummary::from_nanos(&state.lateness_total),
        "memory_usage_mb": memory as f64 / (1024.0 * 1024.0),
        "memory_bytes": memory,
        "is_running": status.running.load(Relaxed) && status.started.load(Relaxed),
        "is_paused": status.paused.load(Relaxed),
        "connections": state.clients.len(),
        "connections_closed": state.departed.clients,
        "bytes_sent": bytes_sent,
        "bandwidth_bps": bytes_sent as f64 * 8.0 / age,
        "packets_generated": status.packets_generated.load(Relaxed),
        "sequence_number": status.sequence.load(Relaxed),
        "frame_pool_misses": status.frame_pool_misses.load(Relaxed),
        "schedule_resets": status.schedule_resets.load(Relaxed),
        "timing_thread": {
            "core": status.core.load(Relaxed),
            "sched_fifo": status.fifo.load(Relaxed),
        },
        "clients": clients,
    })
}

/// Bucket bounds of Prometheus latency histograms, seconds: 1 µs to 25 ms.
const BUCKETS_SECONDS: [f64; 14] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
];

/// The Prometheus text exposition (0.0.4, or OpenMetrics 1.0 with `# EOF`).
pub fn prometheus(registry: &Registry, only: Option<&str>, openmetrics: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let sessions = registry.sessions();
    let process = ProcessStats::read();
    // OpenMetrics names counter families without `_total` and requires it on the samples.
    let counter_family = |name: &str| {
        if openmetrics {
            name.trim_end_matches("_total").to_string()
        } else {
            name.to_string()
        }
    };
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let shown = if kind == "counter" {
            counter_family(name)
        } else {
            name.to_string()
        };
        let _ = writeln!(out, "# HELP {shown} {help}");
        let _ = writeln!(out, "# TYPE {shown} {kind}");
    };

    family(
        &mut out,
        "phantomlink_sessions",
        "gauge",
        "Sessions on the server.",
    );
    let _ = writeln!(out, "phantomlink_sessions {}", sessions.len());
    family(
        &mut out,
        "phantomlink_clients",
        "gauge",
        "Connected WebSocket clients.",
    );
    let _ = writeln!(out, "phantomlink_clients {}", registry.live_clients());
    family(
        &mut out,
        "phantomlink_connections_total",
        "counter",
        "WebSocket connections accepted.",
    );
    let _ = writeln!(
        out,
        "phantomlink_connections_total {}",
        registry.connections_opened()
    );

    let selected: Vec<_> = sessions
        .iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
        .collect();
    let mut states: Vec<_> = selected
        .iter()
        .map(|s| {
            let mut state = s.state();
            state.collect();
            (s, state)
        })
        .collect();

    family(
        &mut out,
        "phantomlink_packets_generated_total",
        "counter",
        "Packets generated by a session's timing thread.",
    );
    for (s, _) in &states {
        let _ = writeln!(
            out,
            "phantomlink_packets_generated_total{{session=\"{}\"}} {}",
            s.code(),
            s.status().packets_generated.load(Relaxed)
        );
    }
    family(
        &mut out,
        "phantomlink_session_memory_bytes",
        "gauge",
        "Bytes a session holds (frame pools, rings, histograms).",
    );
    for (s, state) in &states {
        let _ = writeln!(
            out,
            "phantomlink_session_memory_bytes{{session=\"{}\"}} {}",
            s.code(),
            session_memory(s, state)
        );
    }
    for (name, help, pick) in [
        (
            "phantomlink_client_packets_sent_total",
            "Packets written to a client's socket.",
            0usize,
        ),
        (
            "phantomlink_client_packets_dropped_total",
            "Packets dropped for a client because its buffer was full.",
            1,
        ),
        (
            "phantomlink_client_bytes_sent_total",
            "Bytes written to a client's socket.",
            2,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for (s, state) in &states {
            for c in &state.clients {
                let counters = &c.shared.counters;
                let value = match pick {
                    0 => counters.packets_sent.load(Relaxed),
                    1 => counters.dropped_packets.load(Relaxed),
                    _ => counters.bytes_sent.load(Relaxed),
                };
                let _ = writeln!(
                    out,
                    "{name}{{session=\"{}\",client=\"{}\"}} {value}",
                    s.code(),
                    c.shared.id
                );
            }
        }
    }

    family(
        &mut out,
        "phantomlink_tick_lateness_seconds",
        "histogram",
        "Timing thread wake time minus the tick's absolute deadline.",
    );
    for (s, state) in &states {
        write_histogram(
            &mut out,
            "phantomlink_tick_lateness_seconds",
            &format!("session=\"{}\"", s.code()),
            &state.lateness_total,
        );
    }
    family(
        &mut out,
        "phantomlink_network_latency_seconds",
        "histogram",
        "Tick to the client's socket write returning.",
    );
    for (s, state) in &mut states {
        for c in &state.clients {
            write_histogram(
                &mut out,
                "phantomlink_network_latency_seconds",
                &format!("session=\"{}\",client=\"{}\"", s.code(), c.shared.id),
                &c.latency_total,
            );
        }
    }
    drop(states);

    family(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let _ = writeln!(out, "process_resident_memory_bytes {}", process.rss_bytes);
    family(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    let _ = writeln!(out, "process_cpu_seconds_total {}", process.cpu_seconds);
    family(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(
        out,
        "process_start_time_seconds {}",
        process.start_time_seconds
    );
    family(
        &mut out,
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
    );
    let _ = writeln!(out, "process_threads {}", process.threads);
    if openmetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// Writes `_bucket`, `_sum` and `_count` of an HDR histogram of nanoseconds; bucket counts
/// are sums of the HDR counts at or below each bound, so they agree with the JSON counts.
fn write_histogram(out: &mut String, name: &str, labels: &str, hist: &Hist) {
    let mut cumulative = [0u64; BUCKETS_SECONDS.len()];
    for value in hist.iter_recorded() {
        let ns = hist.highest_equivalent(value.value_iterated_to());
        let seconds = ns as f64 / 1e9;
        for (bound, slot) in BUCKETS_SECONDS.iter().zip(cumulative.iter_mut()) {
            if seconds <= *bound {
                *slot += value.count_at_value();
            }
        }
    }
    for (bound, count) in BUCKETS_SECONDS.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", hist.len());
    let _ = writeln!(
        out,
        "{name}_sum{{{labels}}} {}",
        hist.mean() * hist.len() as f64 / 1e9
    );
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", hist.len());
}
