//! The `/metrics` JSON document, typed. Fields of the reference schema are required; the
//! PhantomLink extensions are optional, so the monitor also reads the reference server.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Unix seconds when the document was made.
    pub timestamp: f64,
    /// Service name.
    pub service: String,
    /// Server version.
    pub version: String,
    /// Server-wide and per-session figures.
    pub metrics: Global,
    /// The server process (PhantomLink only).
    #[serde(default)]
    pub process: Option<Process>,
}

/// `metrics`.
#[derive(Debug, Clone, Deserialize)]
pub struct Global {
    pub total_sessions: u64,
    pub active_sessions: u64,
    pub total_connections: u64,
    #[serde(default)]
    pub connections_opened: Option<u64>,
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
    #[serde(default)]
    pub dataset_bytes: Option<u64>,
    pub sessions: BTreeMap<String, Session>,
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub std: f64,
    pub max: f64,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub p50: Option<f64>,
    #[serde(default)]
    pub p90: Option<f64>,
    #[serde(default)]
    pub p99: Option<f64>,
    #[serde(default)]
    pub p999: Option<f64>,
    #[serde(default)]
    pub count: Option<u64>,
}

/// One session.
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub packets_sent: u64,
    pub dropped_packets: u64,
    pub network_latency_ms: Latency,
    pub timing_error_ms: Latency,
    pub memory_usage_mb: f64,
    pub is_running: bool,
    pub is_paused: bool,
    pub connections: u64,
    #[serde(default)]
    pub bytes_sent: Option<u64>,
    #[serde(default)]
    pub bandwidth_bps: Option<f64>,
    #[serde(default)]
    pub packets_generated: Option<u64>,
    #[serde(default)]
    pub clients_stalled: Option<u64>,
    #[serde(default)]
    pub connections_closed: Option<u64>,
    #[serde(default)]
    pub schedule_resets: Option<u64>,
    #[serde(default)]
    pub windows: BTreeMap<String, Window>,
    #[serde(default)]
    pub clients: Vec<Client>,
}

/// One sliding window of a session.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Window {
    pub timing_error_ms: Latency,
    pub network_latency_ms: Latency,
}

/// One connected client.
#[derive(Debug, Clone, Deserialize)]
pub struct Client {
    pub id: u64,
    pub remote: String,
    pub format: String,
    pub connected_at: f64,
    pub packets_sent: u64,
    pub dropped_packets: u64,
    pub bytes_sent: u64,
    pub bandwidth_bps: f64,
    pub network_latency_ms: Latency,
    #[serde(default)]
    pub ring_wait_ms: Option<Latency>,
    pub ring_high_water: u64,
    #[serde(default)]
    pub ring_capacity: Option<u64>,
    /// Closed-loop figures, once the client answers packets with `decoded` messages.
    #[serde(default)]
    pub decoder: Option<Decoder>,
}

/// `clients[].decoder`: how a client's decoder answers (docs/CLOSED_LOOP.md).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Decoder {
    pub round_trip_ms: Latency,
    /// mm/s
    pub velocity_error: Latency,
    pub matched: u64,
    pub late: u64,
    pub malformed: u64,
}

/// `process`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Process {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
}

/// Which statistic of a latency object a threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stat {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
}

impl Stat {
    /// Name as shown.
    pub fn name(self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P99 => "p99",
            Stat::P999 => "p99.9",
            Stat::Max => "max",
            Stat::Mean => "mean",
        }
    }
}

impl Latency {
    /// The statistic asked for, with the name of what was really used: a server without
    /// percentiles (the reference) is judged by its max, which is never below a percentile.
    pub fn stat(&self, stat: Stat) -> (f64, &'static str) {
        let percentile = match stat {
            Stat::P50 => self.p50,
            Stat::P90 => self.p90,
            Stat::P99 => self.p99,
            Stat::P999 => self.p999,
            Stat::Max => return (self.max, "max"),
            Stat::Mean => return (self.mean, "mean"),
        };
        match percentile {
            Some(v) => (v, stat.name()),
            None => (self.max, "max"),
        }
    }

    /// Whether anything was measured (servers without `count` are taken at their word).
    pub fn is_empty(&self) -> bool {
        self.count == Some(0)
    }
}

/// Fraction of the packets meant for clients that were dropped: dropped / (sent + dropped).
pub fn drop_rate(sent: u64, dropped: u64) -> f64 {
    let total = sent + dropped;
    if total == 0 {
        0.0
    } else {
        dropped as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decoder_figures_of_closed_loop_clients() {
        let doc = r#"{"id": 3, "remote": "127.0.0.1:5", "format": "json", "connected_at": 1.0,
          "packets_sent": 10, "dropped_packets": 0, "bytes_sent": 100, "bandwidth_bps": 8.0,
          "network_latency_ms": {"mean": 0.1, "std": 0.0, "max": 0.2}, "ring_high_water": 1,
          "decoder": {"round_trip_ms": {"mean": 0.4, "std": 0.1, "max": 0.9, "p99": 0.8},
                      "velocity_error": {"mean": 61.0, "std": 9.0, "max": 240.0, "p99": 200.0},
                      "position_error": {"mean": 0.0, "std": 0.0, "max": 0.0},
                      "matched": 9, "late": 1, "unknown": 0, "malformed": 0, "messages": 10}}"#;
        let client: Client = serde_json::from_str(doc).unwrap();
        let decoder = client.decoder.expect("decoder figures");
        assert_eq!((decoder.matched, decoder.late), (9, 1));
        assert_eq!(decoder.round_trip_ms.p99, Some(0.8));
        let without: Client =
            serde_json::from_str(&doc.replace(r#""decoder""#, r#""other""#)).unwrap();
        assert!(without.decoder.is_none());
    }

    #[test]
    fn reads_the_reference_schema() {
        let doc = r#"{"timestamp": 1705075200.1, "service": "PhantomLink Core", "version": "0.2.0",
          "metrics": {"total_sessions": 1, "active_sessions": 1, "total_connections": 1,
            "sessions": {"swift-neural-42": {"packets_sent": 100, "dropped_packets": 1,
              "network_latency_ms": {"mean": 1.2, "std": 0.4, "max": 5.6},
              "timing_error_ms": {"mean": 0.5, "std": 0.1, "max": 2.0},
              "memory_usage_mb": 12.5, "is_running": true, "is_paused": false, "connections": 1}}}}"#;
        let report: Report = serde_json::from_str(doc).unwrap();
        let session = &report.metrics.sessions["swift-neural-42"];
        assert_eq!(session.network_latency_ms.stat(Stat::P99), (5.6, "max"));
        assert!(session.clients.is_empty() && report.process.is_none());
        assert!((drop_rate(99, 1) - 0.01).abs() < 1e-12);
        assert_eq!(drop_rate(0, 0), 0.0);
    }
}
