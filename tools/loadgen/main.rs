//! `phantomlink-loadgen`: S sessions × C WebSocket clients against a PhantomLink server on
//! this host, for T seconds or N packets per client, measuring what the clients see (rate,
//! sequence gaps, tick→receive latency, inter-arrival jitter), what the server spends (CPU,
//! RSS, CPU per thread group, from `/proc` given its PID) and whether the server's own
//! `/metrics` agrees with what was received. With `--metrics-every MS` it also times the
//! server's answers to `GET /metrics` (JSON and Prometheus in turn, one every MS ms over a
//! fresh connection) while the load runs.
//!
//! ```sh
//! phantomlink-loadgen --url ws://127.0.0.1:8000 --sessions 100 --clients 10 --seconds 20 \
//!     --server-pid "$(pgrep -nx phantomlink)" [--metrics-every 100] [--json]
//! ```

mod client;
mod decode;
mod poll;
mod procfs;
mod report;
mod run;
mod stamp;
mod target;
mod worker;
mod ws;

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// Wire formats of the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// Every client JSON (`/stream/{code}`).
    Json,
    /// Every client MessagePack (`/stream/binary/{code}`).
    Msgpack,
    /// Alternating JSON and MessagePack within each session.
    Mixed,
}

/// Load generator for a PhantomLink server on this host.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "phantomlink-loadgen", version, about)]
pub struct Args {
    /// Server to load: ws://127.0.0.1:PORT (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// Sessions to open.
    #[arg(long, short = 's', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub sessions: u64,
    /// Clients per session.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// Wire format of the clients.
    #[arg(long, value_enum, default_value_t = FormatChoice::Json)]
    pub format: FormatChoice,
    /// Length of the measurement window, seconds (after connecting and warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Instead of --seconds: end the window when every client has received N packets in it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub packets: Option<u64>,
    /// Seconds between the last client connecting and the window opening.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Worker threads reading the sockets (epoll each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub threads: u64,
    /// Microseconds a worker waits after a wakeup before reading, so that one wakeup serves
    /// many sockets. Latency and jitter use the kernel's receive stamps, so this only trades
    /// the load generator's own CPU against the user-space read latency it also reports.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub coalesce_us: u64,
    /// Run the reading workers SCHED_FIFO at this priority (1-99; the server's writers use 40,
    /// its timing threads 50; 45 measures a loaded server best). On a machine shared with the
    /// server, a load generator below the writers can be kept off the CPU for tens of
    /// milliseconds; its late reads then merge frames, and a merged read carries one kernel
    /// timestamp, so its latency would be its own, not the server's.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    pub fifo: Option<u8>,
    /// Threads opening connections in parallel.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub connect_threads: u64,
    /// PID of the server, to sample its CPU, RSS and per-thread CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Create the sessions over REST before connecting (measures RSS per idle session).
    #[arg(long)]
    pub precreate: bool,
    /// Session codes are PREFIX-0, PREFIX-1, ... (default: lg plus this process's id).
    #[arg(long)]
    pub session_prefix: Option<String>,
    /// Fully decode and check every Nth packet of each client (0: never).
    #[arg(long, default_value_t = 1000)]
    pub verify_every: u64,
    /// Seconds to wait for the server to answer /health before giving up.
    #[arg(long, default_value_t = 5.0)]
    pub wait_for_server: f64,
    /// Seconds one connection attempt (TCP + WebSocket handshake) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Server sampling interval, milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub sample_ms: u64,
    /// Leave the sessions on the server afterwards (they are paused, then deleted, by default).
    #[arg(long)]
    pub keep_sessions: bool,
    /// Closed loop: every client answers every data packet it receives, right after the read,
    /// with a decoder message `{"type":"decoded","sequence_number":N,"vx":0,"vy":0}` (a masked
    /// text frame; the server takes JSON text on MessagePack streams too), and the report adds
    /// the server's round trip and matched/late/unknown/malformed counts. The velocities are
    /// zeros: the fast path reads only the sequence number and timestamp, and this measures the
    /// round trip, not decoding quality. An answer the socket cannot take is skipped, counted.
    #[arg(long)]
    pub closed_loop: bool,
    /// During the window, one more thread asks `GET /metrics` every MS milliseconds, JSON and
    /// `?format=prometheus` in turn, each over a fresh connection as a scraper would (at most
    /// 100 000 requests), and the report adds their response times per format (0: off). The
    /// thread runs at normal priority, so its times include its own scheduling, like a real
    /// scraper's; its CPU counts in the load generator's.
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub metrics_every: u64,
    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// List every client in the human report.
    #[arg(long)]
    pub per_client: bool,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run::run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("loadgen: cannot encode the report: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", report.render(args.per_client));
            }
            if report.clients.connected == 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(2)
        }
    }
}
