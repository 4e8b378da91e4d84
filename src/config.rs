//! Command line and environment: what a user can set, with the reference's `PHANTOM_*`
//! variables honoured, and its translation into the engine's and server's settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::realtime::RealtimeMode;
use crate::engine::{EngineConfig, NoiseConfig};
use crate::net::ServerConfig;

/// PhantomLink: replays a motor-cortex recording at 40 Hz over WebSocket.
#[derive(Debug, Parser)]
#[command(
    name = "phantomlink",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// Server options when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
// Parsed once at startup; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Serve the dataset (the default).
    Serve(ServeArgs),
    /// Describe an NWB file: units, spikes, trials, series, and whether it can be served.
    Inspect {
        /// The NWB file.
        file: PathBuf,
    },
}

/// Options of `phantomlink serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; use 0.0.0.0 to serve a lab network (put TLS in front of it).
    #[arg(long, env = "PHANTOM_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port for HTTP and WebSocket.
    #[arg(long, env = "PHANTOM_PORT", default_value_t = 8000)]
    pub port: u16,
    /// `synthetic` (built in) or the path of an MC_Maze-layout NWB file.
    #[arg(long, env = "PHANTOM_DATASET", default_value = "synthetic")]
    pub dataset: String,
    /// Seed of the synthetic dataset (same seed, same recording).
    #[arg(long, env = "PHANTOM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Cores for timing threads, round-robin, e.g. `2,3` (default: all).
    #[arg(long, env = "PHANTOM_CORES", value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// SCHED_FIFO for timing threads: auto (when permitted), on (required), off.
    #[arg(long, env = "PHANTOM_REALTIME", value_enum, default_value_t = RealtimeMode::Auto)]
    pub realtime: RealtimeMode,
    /// Most sessions at once (least recently used idle sessions are evicted beyond it).
    #[arg(long, env = "PHANTOM_MAX_SESSIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_sessions: u64,
    /// Most clients on one session.
    #[arg(long, env = "PHANTOM_MAX_CLIENTS_PER_SESSION", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_clients_per_session: u64,
    /// Most clients on the server.
    #[arg(long, env = "PHANTOM_MAX_CLIENTS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_clients: u64,
    /// Seconds a session without clients may stay unused before cleanup removes it.
    #[arg(long, env = "PHANTOM_SESSION_TTL", default_value = "3600", value_parser = parse_seconds)]
    pub session_ttl: Duration,
    /// Seconds a client may leave its buffer full (or a write blocked) before it is closed (1008).
    #[arg(long, env = "PHANTOM_CLIENT_STALL_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub client_stall_timeout: Duration,
    /// Packets buffered per client before packets are dropped for it (64 = 1.6 s).
    #[arg(long, env = "PHANTOM_CLIENT_BUFFER", default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=65_536))]
    pub client_buffer: u64,
    /// Microseconds a timing thread spins before each deadline (more: less jitter, more CPU).
    /// Default: automatic, 100 µs up to 16 streaming sessions, then 1600 µs shared among them.
    #[arg(long, env = "PHANTOM_SPIN_US", value_parser = clap::value_parser!(u64).range(0..=25_000))]
    pub spin_us: Option<u64>,
    /// Threads answering HTTP requests.
    #[arg(long, env = "PHANTOM_HTTP_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub http_workers: u64,
    /// Threads writing to WebSocket clients, each serving many clients (default: one per
    /// core).
    #[arg(long, env = "PHANTOM_WRITER_THREADS", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub writer_threads: Option<u64>,
    /// Largest HTTP request body accepted, bytes (413 beyond).
    #[arg(long, env = "PHANTOM_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// Seconds a plain HTTP connection may go without opening or completing a request
    /// (slow clients, unfinished handshakes, idle keep-alive) before it is closed.
    #[arg(long, env = "PHANTOM_HTTP_IDLE_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub http_idle_timeout: Duration,
    /// Bearer token required on create, delete, cleanup and control routes.
    #[arg(long, env = "PHANTOM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Require the API token on streams too (header or `?token=`).
    #[arg(long, env = "PHANTOM_STREAM_TOKEN", requires = "api_token")]
    pub stream_token: bool,
    /// Value of Access-Control-Allow-Origin.
    #[arg(long, env = "PHANTOM_CORS_ORIGIN", default_value = "*", value_parser = parse_cors_origin)]
    pub cors_origin: String,
    /// Default impairment of new sessions: off, light, moderate, intense, extreme.
    #[arg(long, env = "PHANTOM_NOISE", default_value = "off", value_parser = parse_preset)]
    pub noise: NoiseConfig,
    /// Gaussian noise, fraction of (count + 1); overrides the preset.
    #[arg(long, env = "PHANTOM_NOISE_STD")]
    pub noise_std: Option<f64>,
    /// Drift amplitude, fraction of (count + 1); overrides the preset.
    #[arg(long, env = "PHANTOM_DRIFT_AMPLITUDE")]
    pub drift_amplitude: Option<f64>,
    /// Period of the slow drift, seconds.
    #[arg(long, env = "PHANTOM_DRIFT_PERIOD_SECONDS")]
    pub drift_period_seconds: Option<f64>,
    /// Fraction of units silenced (0–1).
    #[arg(long, env = "PHANTOM_DROPOUT")]
    pub dropout: Option<f64>,
    /// Delay added to every packet, ms (0–1000).
    #[arg(long, env = "PHANTOM_STREAM_LATENCY_MS")]
    pub stream_latency_ms: Option<f64>,
    /// Extra random delay per packet, ms (0–1000).
    #[arg(long, env = "PHANTOM_STREAM_JITTER_MS")]
    pub stream_jitter_ms: Option<f64>,
    /// Decoder answers more than this many packets behind are counted late, not matched.
    #[arg(long, env = "PHANTOM_FEEDBACK_WINDOW", default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub feedback_window: u64,
    /// Publish each session as Lab Streaming Layer outlets (needs a build with `--features lsl`).
    #[arg(long, env = "PHANTOM_LSL_ENABLED")]
    pub lsl: bool,
    /// Prefix of LSL stream names: `{prefix}-Neural-{code}`, `-Kinematics-`, `-Intention-`.
    #[arg(long, env = "PHANTOM_LSL_STREAM_NAME", default_value = "PhantomLink", value_parser = parse_lsl_part)]
    pub lsl_stream_name: String,
    /// Prefix of LSL source ids: `{source_id}-{code}-neural`, `-kinematics`, `-intention`.
    #[arg(long, env = "PHANTOM_LSL_SOURCE_ID", default_value = "phantomlink", value_parser = parse_lsl_part)]
    pub lsl_source_id: String,
    /// Log level: error, warn, info, debug, trace (or an env_logger filter).
    #[arg(long, env = "PHANTOM_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ServeArgs {
    /// The default impairment: the preset with any field given on its own overriding it.
    pub fn noise_config(&self) -> Result<NoiseConfig, String> {
        let mut noise = self.noise;
        let overrides = [
            (&mut noise.noise_std, self.noise_std),
            (&mut noise.drift_amplitude, self.drift_amplitude),
            (&mut noise.drift_period_seconds, self.drift_period_seconds),
            (&mut noise.dropout, self.dropout),
            (&mut noise.latency_ms, self.stream_latency_ms),
            (&mut noise.jitter_ms, self.stream_jitter_ms),
        ];
        for (field, value) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        noise.validate()?;
        Ok(noise)
    }

    /// The engine settings these options ask for (cores not yet validated; noise as given
    /// by [`ServeArgs::noise_config`], which the caller checks first).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_sessions: self.max_sessions as usize,
            max_clients_per_session: self.max_clients_per_session as usize,
            max_clients_total: self.max_clients as usize,
            session_ttl: self.session_ttl,
            stall_timeout: self.client_stall_timeout,
            ring_capacity: self.client_buffer as usize,
            cores: self.cores.clone(),
            realtime: self.realtime,
            spin: self.spin_us.map(Duration::from_micros),
            seed: self.seed,
            noise: self.noise_config().unwrap_or(NoiseConfig::OFF),
            feedback_window: self.feedback_window as usize,
        }
    }

    /// The LSL naming these options ask for.
    pub fn lsl_config(&self) -> LslConfig {
        LslConfig {
            stream_name: self.lsl_stream_name.clone(),
            source_id: self.lsl_source_id.clone(),
        }
    }

    /// The network settings these options ask for.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            host: self.host.clone(),
            port: self.port,
            http_workers: self.http_workers as usize,
            writer_threads: self
                .writer_threads
                .map_or_else(crate::net::default_writer_threads, |n| n as usize),
            max_body_bytes: self.max_body_bytes,
            cors_origin: self.cors_origin.clone(),
            http_idle_timeout: self.http_idle_timeout,
            api_token: self.api_token.clone().filter(|t| !t.is_empty()),
            stream_token: self.stream_token,
            ..ServerConfig::default()
        }
    }
}

/// How LSL streams are named (used with the `lsl` feature; always parsed so that `--lsl`
/// without it can be refused clearly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LslConfig {
    /// Prefix of stream names (`PhantomLink`).
    pub stream_name: String,
    /// Prefix of source ids (`phantomlink`).
    pub source_id: String,
}

impl Default for LslConfig {
    fn default() -> Self {
        Self {
            stream_name: "PhantomLink".into(),
            source_id: "phantomlink".into(),
        }
    }
}

fn parse_lsl_part(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "{raw:?}: use 1-64 characters from A-Z a-z 0-9 - _ ."
        ))
    }
}

fn parse_preset(raw: &str) -> Result<NoiseConfig, String> {
    NoiseConfig::preset(raw.trim()).ok_or_else(|| {
        format!(
            "unknown noise preset {raw:?}; use one of {}",
            NoiseConfig::PRESETS.join(", ")
        )
    })
}

fn parse_cors_origin(raw: &str) -> Result<String, String> {
    if crate::net::is_header_value(raw) {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "{raw:?} is not a valid header value: use printable ASCII (an origin such as https://lab.example.org, or *)"
        ))
    }
}

fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let seconds: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 1e9) {
        return Err(format!("{raw:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let cli = Cli::try_parse_from(["phantomlink"]).unwrap();
        assert!(cli.command.is_none());
        let args = cli.serve;
        assert_eq!((args.host.as_str(), args.port), ("127.0.0.1", 8000));
        assert_eq!(args.dataset, "synthetic");
        assert_eq!(args.session_ttl, Duration::from_secs(3600));
        assert_eq!(args.client_stall_timeout, Duration::from_secs(10));
        assert_eq!(args.engine_config().max_sessions, 64);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["phantomlink", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["phantomlink", "--session-ttl", "-1"]).is_err());
        assert!(Cli::try_parse_from(["phantomlink", "--realtime", "maybe"]).is_err());
        let cli = Cli::try_parse_from(["phantomlink", "--cores", "0,1"]).unwrap();
        assert_eq!(cli.serve.cores, vec![0, 1]);
        assert!(Cli::try_parse_from(["phantomlink", "--noise", "loud"]).is_err());
        assert!(
            Cli::try_parse_from(["phantomlink", "--cors-origin", "https://exämple.org"]).is_err()
        );
        let cli = Cli::try_parse_from(["phantomlink", "--noise", "moderate", "--noise-std", "0.1"])
            .unwrap();
        let noise = cli.serve.noise_config().unwrap();
        assert_eq!((noise.noise_std, noise.drift_amplitude), (0.1, 0.3));
        let cli = Cli::try_parse_from(["phantomlink", "--dropout", "2"]).unwrap();
        assert!(cli.serve.noise_config().unwrap_err().contains("dropout"));
        assert!(Cli::try_parse_from(["phantomlink", "--lsl-stream-name", "a b"]).is_err());
        let cli =
            Cli::try_parse_from(["phantomlink", "--lsl", "--lsl-source-id", "lab-1"]).unwrap();
        assert!(cli.serve.lsl);
        assert_eq!(cli.serve.lsl_config().source_id, "lab-1");
        assert_eq!(cli.serve.lsl_config().stream_name, "PhantomLink");
        let cli = Cli::try_parse_from(["phantomlink", "inspect", "x.nwb"]).unwrap();
        assert!(matches!(cli.command, Some(CliCommand::Inspect { .. })));
    }
}
