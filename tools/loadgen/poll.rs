//! `--metrics-every MS`: during the measurement window, one thread asks the server for
//! `GET /metrics` as JSON and `GET /metrics?format=prometheus` in turn, one request every MS
//! milliseconds, each over a fresh connection the way a scraper asks, and times the answers:
//! just before connecting → the body read to its end (what the scraper waits), and request
//! written → first byte (the server's render and queueing, without connect and transfer).
//! Failures are counted, never fatal; the loop ends with the window, at the hard deadline, or
//! after [`MAX_REQUESTS`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::client::{hist, Hist};
use crate::target::Target;
use crate::worker::{Shared, PHASE_MEASURE, PHASE_WARMUP};

/// Most requests in one run, whatever the window and interval.
pub const MAX_REQUESTS: u64 = 100_000;
/// Longest sleep before the phase is looked at again, so the poller stops with the window.
const STEP: Duration = Duration::from_millis(5);

/// The two answers asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    Prometheus,
}

impl Kind {
    fn path_and_accept(self) -> (&'static str, &'static str) {
        match self {
            Self::Json => ("/metrics", "application/json"),
            Self::Prometheus => ("/metrics?format=prometheus", "text/plain"),
        }
    }
}

/// What one format's requests came to.
pub struct FormatTimes {
    /// Requests sent (started).
    pub requests: u64,
    /// Answered 200 (only these are timed).
    pub ok: u64,
    /// Answered with another status.
    pub non_200: u64,
    /// Failed to connect, send, read or parse.
    pub io_errors: u64,
    /// Just before connecting → body read to its end, ns.
    pub total: Hist,
    /// Request written → first byte of the answer, ns.
    pub first_byte: Hist,
    /// Σ body bytes of the 200 answers.
    pub bytes_sum: u64,
    /// Largest 200 body.
    pub bytes_max: u64,
}

impl FormatTimes {
    fn new() -> Self {
        Self {
            requests: 0,
            ok: 0,
            non_200: 0,
            io_errors: 0,
            total: hist(),
            first_byte: hist(),
            bytes_sum: 0,
            bytes_max: 0,
        }
    }
}

/// What the poller hands back.
pub struct PollResult {
    /// Time between requests.
    pub interval: Duration,
    pub json: FormatTimes,
    pub prometheus: FormatTimes,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Stopped at [`MAX_REQUESTS`] before the window ended.
    pub capped: bool,
}

impl PollResult {
    /// Nothing measured yet.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            json: FormatTimes::new(),
            prometheus: FormatTimes::new(),
            first_error: None,
            capped: false,
        }
    }

    fn record(&mut self, kind: Kind, outcome: std::io::Result<crate::target::Timed>) {
        let times = match kind {
            Kind::Json => &mut self.json,
            Kind::Prometheus => &mut self.prometheus,
        };
        times.requests += 1;
        let error = match outcome {
            Ok(timed) if timed.response.status == 200 => {
                let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
                times.ok += 1;
                times.total.saturating_record(ns(timed.total));
                times.first_byte.saturating_record(ns(timed.first_byte));
                let bytes = timed.response.body.len() as u64;
                times.bytes_sum += bytes;
                times.bytes_max = times.bytes_max.max(bytes);
                return;
            }
            Ok(timed) => {
                times.non_200 += 1;
                format!("HTTP {} {}", timed.response.status, timed.response.text())
            }
            Err(e) => {
                times.io_errors += 1;
                e.to_string()
            }
        };
        self.first_error
            .get_or_insert_with(|| format!("{kind:?}: {error}"));
    }
}

/// Polls `/metrics` every `interval` while `shared` is in the measurement window (waiting for
/// it to open first), each request bounded by `timeout`.
pub fn run(
    target: Target,
    interval: Duration,
    timeout: Duration,
    shared: &Shared,
    hard_deadline: Instant,
) -> PollResult {
    let mut result = PollResult::new(interval);
    loop {
        if Instant::now() >= hard_deadline {
            return result;
        }
        match shared.phase.load(Relaxed) {
            PHASE_WARMUP => std::thread::sleep(STEP),
            PHASE_MEASURE => break,
            _ => return result,
        }
    }
    let mut next = Instant::now();
    let mut sent = 0u64;
    while shared.phase.load(Relaxed) == PHASE_MEASURE && Instant::now() < hard_deadline {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(STEP));
            continue;
        }
        if sent >= MAX_REQUESTS {
            result.capped = true;
            break;
        }
        let kind = if sent % 2 == 0 {
            Kind::Json
        } else {
            Kind::Prometheus
        };
        let (path, accept) = kind.path_and_accept();
        let outcome = target.request("GET", path, accept, timeout);
        result.record(kind, outcome);
        sent += 1;
        // A slow answer delays the next request instead of bunching the missed ones after it.
        next = (next + interval).max(Instant::now());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{HttpResponse, Timed};

    fn answer(status: u16, body: &[u8], ms: u64) -> std::io::Result<Timed> {
        Ok(Timed {
            first_byte: Duration::from_millis(ms / 2),
            total: Duration::from_millis(ms),
            response: HttpResponse {
                status,
                body: body.to_vec(),
            },
        })
    }

    #[test]
    fn failures_are_counted_and_only_200_answers_timed() {
        let mut result = PollResult::new(Duration::from_millis(50));
        result.record(Kind::Json, answer(200, b"{}", 2));
        result.record(Kind::Prometheus, answer(503, b"busy", 1));
        result.record(
            Kind::Json,
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        result.record(Kind::Prometheus, answer(200, b"# HELP", 4));
        let (j, p) = (&result.json, &result.prometheus);
        assert_eq!((j.requests, j.ok, j.non_200, j.io_errors), (2, 1, 0, 1));
        assert_eq!((p.requests, p.ok, p.non_200, p.io_errors), (2, 1, 1, 0));
        assert_eq!(
            (j.total.len(), p.total.len(), p.first_byte.len()),
            (1, 1, 1)
        );
        assert_eq!((j.bytes_sum, p.bytes_max), (2, 6));
        let first = result.first_error.unwrap_or_default();
        assert!(first.starts_with("Prometheus: HTTP 503"), "{first}");
    }
}
