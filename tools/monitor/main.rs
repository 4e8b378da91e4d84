//! `phantomlink-monitor`: watches a PhantomLink server's `/metrics` in the terminal, or checks
//! it once against alert thresholds for CI.
//!
//! ```sh
//! phantomlink-monitor --url http://127.0.0.1:8000 --interval 1      # live view
//! phantomlink-monitor --check --max-latency-ms 5                    # exit 0 ok, 1 alert, 2 unreachable
//! ```
//!
//! Exit status: 0 when every sample is within the thresholds, 1 when one crossed a threshold,
//! 2 when the server could not be read (no connection, timeout, not 200, not the metrics
//! JSON) or the arguments are wrong.

mod alerts;
mod fetch;
mod model;
mod render;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use alerts::{Span, Thresholds};
use fetch::{Endpoint, FetchError};
use model::{Report, Stat};

/// Watch a PhantomLink server's /metrics, or check it against alert thresholds.
#[derive(Debug, Parser)]
#[command(name = "phantomlink-monitor", version, about, long_about = None)]
struct Args {
    /// Base URL of the server (a trailing /metrics is accepted).
    #[arg(
        long,
        env = "PHANTOM_MONITOR_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    interval: f64,
    /// Only this session (`/metrics?session=CODE`).
    #[arg(long)]
    session: Option<String>,
    /// Poll, print the thresholds crossed, and exit: 0 fine, 1 threshold crossed, 2 unreachable.
    #[arg(long)]
    check: bool,
    /// Polls to make, `--interval` apart (default: 1 with --check, unlimited otherwise).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    samples: Option<u64>,
    /// Alert when the network latency (tick to socket) of a session or client exceeds this,
    /// judged on --stat (p99 by default).
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    max_latency_ms: f64,
    /// Alert when a session's timing error (tick lateness) exceeds this, judged on --stat
    /// (p99 by default).
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    max_timing_error_ms: f64,
    /// Alert when dropped / (sent + dropped) of a session or client exceeds this fraction
    /// (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01, value_parser = fraction)]
    max_drop_rate: f64,
    /// Alert when a session's memory_usage_mb exceeds this.
    #[arg(long, default_value_t = 50.0, value_parser = non_negative)]
    max_memory_mb: f64,
    /// Alert when the server process's resident memory exceeds this many MB (off by default).
    #[arg(long, value_parser = non_negative)]
    max_rss_mb: Option<f64>,
    /// Statistic the latency and timing-error limits apply to.
    #[arg(long, value_enum, default_value_t = Stat::P99)]
    stat: Stat,
    /// Span the latency and timing-error limits apply to: lifetime, or a session window.
    #[arg(long, value_enum, default_value_t = Span::Lifetime)]
    window: Span,
    /// Seconds to wait for the server on each poll.
    #[arg(long, default_value_t = 5.0, value_parser = positive)]
    timeout: f64,
    /// No ANSI colours (also when NO_COLOR is set or stdout is not a terminal).
    #[arg(long)]
    no_color: bool,
}

fn parse_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is not finite"))
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be above 0 (seconds, at most a day)"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} must not be negative"))
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    let v = parse_f64(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{s} must be a fraction between 0 and 1 (0.01 = 1 %)"
        ))
    }
}

/// What a poll can fail with, all meaning "cannot tell".
fn poll(endpoint: &Endpoint, query: &str, timeout: Duration) -> Result<Report, String> {
    let body = fetch::get(endpoint, query, timeout).map_err(|e| match e {
        FetchError::Unreachable(why) => why,
        status @ FetchError::Status(..) => format!("{}/metrics: {status}", endpoint.authority()),
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{}/metrics did not answer with the metrics JSON: {e}",
            endpoint.authority()
        )
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let endpoint = match Endpoint::parse(&args.url) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("phantomlink-monitor: {e}");
            return ExitCode::from(2);
        }
    };
    let query = match &args.session {
        Some(code) => format!(
            "/metrics?session={}",
            form_urlencoded::byte_serialize(code.as_bytes()).collect::<String>()
        ),
        None => "/metrics".to_string(),
    };
    let thresholds = Thresholds {
        max_latency_ms: args.max_latency_ms,
        max_timing_error_ms: args.max_timing_error_ms,
        max_drop_rate: args.max_drop_rate,
        max_memory_mb: args.max_memory_mb,
        max_rss_mb: args.max_rss_mb,
        stat: args.stat,
        span: args.window,
    };
    let timeout = Duration::from_secs_f64(args.timeout);
    let interval = Duration::from_secs_f64(args.interval);
    let target = format!("{}{}", endpoint.authority(), endpoint.prefix);
    if args.check {
        check(
            &endpoint,
            &query,
            &target,
            &thresholds,
            args.samples.unwrap_or(1),
            interval,
            timeout,
        )
    } else {
        let terminal = std::io::stdout().is_terminal();
        let style = render::Style {
            color: terminal && !args.no_color && std::env::var_os("NO_COLOR").is_none(),
        };
        watch(
            &endpoint,
            &query,
            &target,
            &thresholds,
            args.samples,
            interval,
            timeout,
            style,
            terminal,
        )
    }
}

/// `--check`: every sample is judged; 2 if any could not be read, else 1 if any crossed.
fn check(
    endpoint: &Endpoint,
    query: &str,
    target: &str,
    thresholds: &Thresholds,
    samples: u64,
    interval: Duration,
    timeout: Duration,
) -> ExitCode {
    let start = Instant::now();
    let mut crossed = 0usize;
    let mut unreadable = 0u64;
    let mut sessions_seen = 0usize;
    println!("checking {target}: {}", thresholds.describe());
    for n in 0..samples {
        if n > 0 {
            sleep_until(start + interval * n as u32);
        }
        let prefix = if samples > 1 {
            format!("[{}/{samples}] ", n + 1)
        } else {
            String::new()
        };
        match poll(endpoint, query, timeout) {
            Ok(report) => {
                sessions_seen = sessions_seen.max(report.metrics.sessions.len());
                for v in thresholds.check(&report) {
                    println!("{prefix}VIOLATION {v}");
                    crossed += 1;
                }
            }
            Err(e) => {
                eprintln!("{prefix}ERROR {e}");
                unreadable += 1;
            }
        }
    }
    if unreadable > 0 {
        println!("UNKNOWN: {unreadable} of {samples} poll(s) failed");
        ExitCode::from(2)
    } else if crossed > 0 {
        println!("FAIL: {crossed} threshold violation(s) in {samples} poll(s)");
        ExitCode::from(1)
    } else {
        println!("OK: {sessions_seen} session(s) within thresholds in {samples} poll(s)");
        ExitCode::SUCCESS
    }
}

/// The live view, until interrupted or `samples` polls are done.
#[allow(clippy::too_many_arguments)]
fn watch(
    endpoint: &Endpoint,
    query: &str,
    target: &str,
    thresholds: &Thresholds,
    samples: Option<u64>,
    interval: Duration,
    timeout: Duration,
    style: render::Style,
    terminal: bool,
) -> ExitCode {
    let start = Instant::now();
    let mut previous: Option<Report> = None;
    let mut n: u64 = 0;
    loop {
        let screen = match poll(endpoint, query, timeout) {
            Ok(report) => {
                let violations = thresholds.check(&report);
                let prev = previous.as_ref().map(|p| render::Previous {
                    report: p,
                    seconds: report.timestamp - p.timestamp,
                });
                let text = render::screen(
                    &report,
                    prev.as_ref(),
                    target,
                    thresholds,
                    &violations,
                    style,
                );
                previous = Some(report);
                text
            }
            Err(e) => format!(
                "phantomlink-monitor: {e}\n(retrying every {:.1} s)\n",
                interval.as_secs_f64()
            ),
        };
        let mut stdout = std::io::stdout().lock();
        let written = if terminal {
            // Home, clear screen, then the frame: no flicker of a scrolled history.
            write!(stdout, "\x1b[H\x1b[2J{screen}")
        } else {
            writeln!(stdout, "{screen}{}", "-".repeat(72))
        };
        if written.and_then(|_| stdout.flush()).is_err() {
            return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
        }
        drop(stdout);
        n += 1;
        if samples.is_some_and(|limit| n >= limit) {
            return ExitCode::SUCCESS;
        }
        sleep_until(start + interval.mul_f64(n as f64));
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
