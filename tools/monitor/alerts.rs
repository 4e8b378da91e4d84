//! Alert thresholds, after the reference's example monitor (latency 10 ms, drop rate 1 %,
//! memory 50 MB per session, timing error 5 ms), judged on a percentile (p99 by default)
//! instead of a mean that hides the spikes a decoder feels.

use crate::model::{drop_rate, Latency, Report, Stat};

/// Which span latency and timing-error thresholds look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Span {
    /// Everything since the session (or client) started.
    Lifetime,
    /// The session's last minute (45-60 s: windows are cut every 15 s).
    #[value(name = "1m")]
    OneMinute,
    /// The session's last 5 minutes.
    #[value(name = "5m")]
    FiveMinutes,
    /// The session's last 15 minutes.
    #[value(name = "15m")]
    FifteenMinutes,
}

impl Span {
    /// Key in the session's `windows` object, or `None` for lifetime figures.
    pub fn window_key(self) -> Option<&'static str> {
        match self {
            Span::Lifetime => None,
            Span::OneMinute => Some("1m"),
            Span::FiveMinutes => Some("5m"),
            Span::FifteenMinutes => Some("15m"),
        }
    }
}

/// The limits; a value strictly above its limit is a violation.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Network latency (tick to socket), ms, of each session and each client.
    pub max_latency_ms: f64,
    /// Tick lateness (timing error), ms, of each session.
    pub max_timing_error_ms: f64,
    /// dropped / (sent + dropped), of each session and each client.
    pub max_drop_rate: f64,
    /// `memory_usage_mb` of each session.
    pub max_memory_mb: f64,
    /// Resident memory of the server process, MB, if checked.
    pub max_rss_mb: Option<f64>,
    /// Statistic the latency and timing-error limits apply to.
    pub stat: Stat,
    /// Span the latency and timing-error limits apply to.
    pub span: Span,
}

/// One threshold crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Session code, if the violation belongs to one.
    pub session: Option<String>,
    /// Client id, if it belongs to one client.
    pub client: Option<u64>,
    /// What crossed, with value and limit.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.session, self.client) {
            (Some(s), Some(c)) => write!(f, "session {s} client {c}: {}", self.message),
            (Some(s), None) => write!(f, "session {s}: {}", self.message),
            _ => write!(f, "server: {}", self.message),
        }
    }
}

impl Thresholds {
    /// One line describing the limits.
    pub fn describe(&self) -> String {
        let span = match self.span.window_key() {
            Some(key) => format!(" ({key})"),
            None => String::new(),
        };
        let mut text = format!(
            "network latency {stat}{span} <= {} ms, timing error {stat}{span} <= {} ms, drop rate <= {}%, memory <= {} MB/session",
            self.max_latency_ms,
            self.max_timing_error_ms,
            self.max_drop_rate * 100.0,
            self.max_memory_mb,
            stat = self.stat.name(),
        );
        if let Some(rss) = self.max_rss_mb {
            text.push_str(&format!(", process RSS <= {rss} MB"));
        }
        text
    }

    /// Every threshold the report crosses.
    pub fn check(&self, report: &Report) -> Vec<Violation> {
        let mut out = Vec::new();
        if let (Some(limit), Some(process)) = (self.max_rss_mb, report.process) {
            let mb = process.rss_bytes as f64 / 1e6;
            if mb > limit {
                out.push(Violation {
                    session: None,
                    client: None,
                    message: format!("process RSS {mb:.1} MB > {limit} MB"),
                });
            }
        }
        for (code, session) in &report.metrics.sessions {
            let mut push = |client: Option<u64>, message: String| {
                out.push(Violation {
                    session: Some(code.clone()),
                    client,
                    message,
                })
            };
            let window = self
                .span
                .window_key()
                .and_then(|key| session.windows.get(key).map(|w| (key, w)));
            let (latency, timing, span) = match window {
                Some((key, w)) => (w.network_latency_ms, w.timing_error_ms, format!(" ({key})")),
                None => (
                    session.network_latency_ms,
                    session.timing_error_ms,
                    String::new(),
                ),
            };
            if let Some(m) = self.latency("network latency", &latency, self.max_latency_ms, &span) {
                push(None, m);
            }
            if let Some(m) = self.latency("timing error", &timing, self.max_timing_error_ms, &span)
            {
                push(None, m);
            }
            if let Some(m) = self.drops(session.packets_sent, session.dropped_packets) {
                push(None, m);
            }
            if session.memory_usage_mb > self.max_memory_mb {
                push(
                    None,
                    format!(
                        "memory {:.2} MB > {} MB",
                        session.memory_usage_mb, self.max_memory_mb
                    ),
                );
            }
            for client in &session.clients {
                // Clients have lifetime figures only.
                if self.span == Span::Lifetime {
                    if let Some(m) = self.latency(
                        "network latency",
                        &client.network_latency_ms,
                        self.max_latency_ms,
                        "",
                    ) {
                        push(Some(client.id), m);
                    }
                }
                if let Some(m) = self.drops(client.packets_sent, client.dropped_packets) {
                    push(Some(client.id), m);
                }
            }
        }
        out
    }

    fn latency(&self, what: &str, latency: &Latency, limit: f64, span: &str) -> Option<String> {
        if latency.is_empty() {
            return None;
        }
        let (value, used) = latency.stat(self.stat);
        (value > limit).then(|| format!("{what} {used}{span} {value:.3} ms > {limit} ms"))
    }

    fn drops(&self, sent: u64, dropped: u64) -> Option<String> {
        let rate = drop_rate(sent, dropped);
        (rate > self.max_drop_rate).then(|| {
            format!(
                "drop rate {:.3}% ({dropped} of {}) > {}%",
                rate * 100.0,
                sent + dropped,
                self.max_drop_rate * 100.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(p99: f64, dropped: u64) -> Report {
        let doc = serde_json::json!({
            "timestamp": 1.0, "service": "PhantomLink", "version": "0",
            "metrics": {"total_sessions": 1, "active_sessions": 1, "total_connections": 1,
              "sessions": {"a": {
                "packets_sent": 99, "dropped_packets": dropped,
                "network_latency_ms": {"mean": 0.1, "std": 0.0, "max": 9.0, "p99": p99, "count": 99},
                "timing_error_ms": {"mean": 0.0, "std": 0.0, "max": 0.0, "p99": 0.0, "count": 0},
                "memory_usage_mb": 0.5, "is_running": true, "is_paused": false, "connections": 1,
                "clients": [{"id": 7, "remote": "127.0.0.1:1", "format": "json", "connected_at": 1.0,
                  "packets_sent": 99, "dropped_packets": dropped, "bytes_sent": 1, "bandwidth_bps": 1.0,
                  "network_latency_ms": {"mean": 0.1, "std": 0.0, "max": 9.0, "p99": p99, "count": 99},
                  "ring_high_water": 3}]}}}});
        serde_json::from_value(doc).unwrap()
    }

    fn limits() -> Thresholds {
        Thresholds {
            max_latency_ms: 1.0,
            max_timing_error_ms: 1.0,
            max_drop_rate: 0.01,
            max_memory_mb: 50.0,
            max_rss_mb: None,
            stat: Stat::P99,
            span: Span::Lifetime,
        }
    }

    #[test]
    fn judges_the_chosen_percentile() {
        assert!(
            limits().check(&report(0.5, 0)).is_empty(),
            "max 9 ms is not judged"
        );
        let v = limits().check(&report(2.0, 0));
        assert_eq!(v.len(), 2, "session and client: {v:?}");
        assert_eq!(v[1].client, Some(7));
        assert!(v[0].message.contains("p99"), "{}", v[0]);
        let max = Thresholds {
            stat: Stat::Max,
            ..limits()
        };
        assert_eq!(max.check(&report(0.5, 0)).len(), 2);
    }

    #[test]
    fn drop_rate_counts_what_was_meant_for_clients() {
        assert!(
            limits().check(&report(0.5, 1)).is_empty(),
            "1 of 100 is 1 %, not above"
        );
        let v = limits().check(&report(0.5, 2));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].to_string().starts_with("session a: drop rate"),
            "{}",
            v[0]
        );
    }
}
