//! `phantomlink`: serve the dataset (default) or inspect an NWB file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use phantomlink::config::{Cli, CliCommand, ServeArgs};
use phantomlink::dataset::load_dataset;
use phantomlink::engine::realtime::{self, RealtimeMode};
use phantomlink::engine::Registry;
use phantomlink::net::Server;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_WITHIN: Duration = Duration::from_millis(900);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(CliCommand::Inspect { file }) => {
            init_logging("warn");
            match phantomlink::dataset::nwb::inspect(&file) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(CliCommand::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn init_logging(level: &str) {
    env_logger::Builder::new()
        .parse_filters(level)
        .format_timestamp_millis()
        .init();
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(&args.log_level);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Once, on stderr, whatever the log level (env_logger writes to stderr too, so
            // logging it as well would print every fatal error twice).
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &ServeArgs) -> Result<(), String> {
    let started = Instant::now();
    if args.lsl && !cfg!(feature = "lsl") {
        return Err(
            "--lsl (PHANTOM_LSL_ENABLED): this binary was built without LSL support; \
             rebuild with `cargo build --release --features lsl` (needs cmake and a C++ compiler)"
                .into(),
        );
    }
    raise_open_file_limit();
    args.noise_config()
        .map_err(|e| format!("noise options: {e}"))?;
    let mut engine = args.engine_config();
    engine.cores = realtime::available_cores(&args.cores).map_err(|e| format!("--cores: {e}"))?;
    match (args.realtime, realtime::probe_fifo()) {
        (RealtimeMode::On, Err(e)) => return Err(format!("--realtime on: {e}")),
        (RealtimeMode::Auto, Err(e)) => {
            log::warn!("timing threads run without SCHED_FIFO (expect more jitter under load): {e}")
        }
        (RealtimeMode::Off, _) => log::info!("SCHED_FIFO disabled (--realtime off)"),
        (_, Ok(())) => log::info!("timing threads run SCHED_FIFO"),
    }
    let table = load_dataset(&args.dataset, args.seed).map_err(|e| e.to_string())?;
    let registry = Arc::new(with_lsl(Registry::new(Arc::new(table), engine), args));
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("signal handlers: {e}"))?;
    let server = Server::start(registry, args.server_config())
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = server.local_addr();
    log::info!(
        "PhantomLink {} listening on http://{addr} (ws://{addr}/stream/{{code}}), ready in {:.0} ms",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64() * 1e3
    );
    let first = signals.forever().next();
    log::info!("signal {first:?}: shutting down (a second signal exits at once)");
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
    });
    let clean = server.shut_down(SHUTDOWN_WITHIN);
    if !clean {
        log::warn!("some clients did not close in time");
    }
    log::info!("stopped");
    Ok(())
}

/// With `--lsl`, every session publishes LSL outlets.
#[cfg(feature = "lsl")]
fn with_lsl(registry: Registry, args: &ServeArgs) -> Registry {
    if !args.lsl {
        return registry;
    }
    match std::env::var_os("LSLAPICFG") {
        Some(path) => log::info!("LSL on; liblsl configuration: {}", path.to_string_lossy()),
        None => log::warn!(
            "LSL on without LSLAPICFG: liblsl uses ./lsl_api.cfg, ~/lsl_api/lsl_api.cfg, \
             /etc/lsl_api/lsl_api.cfg or its defaults (discovery on the local network)"
        ),
    }
    let source = phantomlink::lsl::LslSource::new(args.lsl_config());
    registry.with_tap_source(Arc::new(source))
}

#[cfg(not(feature = "lsl"))]
fn with_lsl(registry: Registry, _args: &ServeArgs) -> Registry {
    registry
}

/// Each WebSocket client holds four descriptors (tiny_http's two, the writer's and the
/// reader's); the usual soft limit of 1024 would cap the server near 250 clients, so raise the
/// soft limit to the hard one.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                let wanted = limit.rlim_max;
                limit.rlim_cur = wanted;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    log::warn!("could not raise the open-file limit to {wanted}");
                }
            }
        }
    }
}
