//! The HTTP server: one listening socket, tiny_http request parsing, a pool of worker threads,
//! and a housekeeping thread (metrics collection, TTL cleanup).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::Request;

use super::api;
use super::http::{header_value, is_header_value};
use super::reaper::Reaper;
use super::writer_pool::WriterPool;
use crate::codec::Metadata;
use crate::engine::Registry;

/// Network settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (127.0.0.1 by default; 0.0.0.0 for lab networks).
    pub host: String,
    /// Port for HTTP and WebSocket (0 picks a free one).
    pub port: u16,
    /// Threads answering HTTP requests.
    pub http_workers: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// `Access-Control-Allow-Origin` value.
    pub cors_origin: String,
    /// How often expired sessions are removed.
    pub cleanup_interval: Duration,
    /// A plain HTTP connection that neither opens nor completes a request for this long is
    /// closed (slow or stalled clients, idle keep-alive, unfinished WebSocket handshakes).
    pub http_idle_timeout: Duration,
    /// Threads writing to WebSocket clients (each serves many clients).
    pub writer_threads: usize,
    /// Bearer token required on state-changing routes, if set.
    pub api_token: Option<String>,
    /// Whether streams need the token too.
    pub stream_token: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            http_workers: 4,
            max_body_bytes: 64 * 1024,
            cors_origin: "*".into(),
            cleanup_interval: Duration::from_secs(60),
            http_idle_timeout: Duration::from_secs(10),
            writer_threads: default_writer_threads(),
            api_token: None,
            stream_token: false,
        }
    }
}

/// What request handlers share.
pub struct Context {
    /// The sessions.
    pub registry: Arc<Registry>,
    /// Network settings.
    pub config: ServerConfig,
    /// Dataset description (the metadata message and `/api/metadata`).
    pub metadata: Metadata,
    /// Address actually bound.
    pub local_addr: SocketAddr,
    /// When the server started.
    pub started: Instant,
    /// Closes HTTP connections that hold a thread without finishing a request.
    pub reaper: Reaper,
    /// Threads writing to WebSocket clients.
    pub writers: WriterPool,
    stopping: AtomicBool,
}

impl Context {
    /// `ws://host:port` (or `wss://` behind a TLS proxy that sets `X-Forwarded-Proto: https`),
    /// using the request's Host header when there is one.
    pub fn public_ws_base(&self, request: Option<&Request>) -> String {
        let https = request
            .and_then(|r| header_value(r, "X-Forwarded-Proto"))
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        let scheme = if https { "wss" } else { "ws" };
        format!("{scheme}://{}", self.public_host(request))
    }

    fn public_host(&self, request: Option<&Request>) -> String {
        let from_header = request
            .and_then(|r| header_value(r, "Host"))
            .map(str::trim)
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
            });
        match from_header {
            Some(host) => host.to_string(),
            None => self.local_addr.to_string(),
        }
    }

    /// Whether the server is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }
}

/// A running server.
pub struct Server {
    ctx: Arc<Context>,
    http: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds the port and starts serving `registry`.
    pub fn start(registry: Arc<Registry>, config: ServerConfig) -> io::Result<Self> {
        if !is_header_value(&config.cors_origin) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--cors-origin {:?} is not a valid header value (printable ASCII only)",
                    config.cors_origin
                ),
            ));
        }
        let listener = bind(&config.host, config.port)?;
        let local_addr = listener.local_addr()?;
        let http = Arc::new(
            tiny_http::Server::from_listener(listener, None)
                .map_err(|e| io::Error::other(e.to_string()))?,
        );
        let table = registry.table();
        let metadata = Metadata {
            dataset: table.name().to_string(),
            total_packets: table.num_bins(),
            frequency_hz: 40,
            num_channels: table.num_units(),
            duration_seconds: table.duration_seconds(),
            num_trials: table.trials().len(),
        };
        let reaper = Reaper::new(local_addr.port(), config.http_idle_timeout);
        let writers = WriterPool::start(
            config.writer_threads,
            registry.config().max_clients_total,
            registry.config().realtime,
        )?;
        let ctx = Arc::new(Context {
            registry,
            reaper,
            writers,
            config,
            metadata,
            local_addr,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for n in 0..ctx.config.http_workers.max(1) {
            let ctx = Arc::clone(&ctx);
            let http = Arc::clone(&http);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{n}"))
                    .spawn(move || serve(&ctx, &http))?,
            );
        }
        let housekeeping_ctx = Arc::clone(&ctx);
        threads.push(
            std::thread::Builder::new()
                .name("housekeeping".into())
                .spawn(move || housekeeping(&housekeeping_ctx))?,
        );
        Ok(Self { ctx, http, threads })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr
    }

    /// The sessions it serves.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.ctx.registry
    }

    /// Stops accepting, closes every client with 1001, stops every session, joins every
    /// thread. Returns whether everything ended within `within`.
    pub fn shut_down(self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        self.ctx.stopping.store(true, Relaxed);
        let clients_done = self.ctx.registry.shut_down(deadline);
        for _ in 0..self.threads.len() {
            self.http.unblock();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        clients_done
    }
}

/// One writer thread per core: enough to keep up with the timing threads, and no more
/// context switches than that.
pub fn default_writer_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} resolves to no address"),
        )
    })?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit TCP_NODELAY on Linux: HTTP replies and the 101 go out at once.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn serve(ctx: &Arc<Context>, http: &tiny_http::Server) {
    while !ctx.is_stopping() {
        match http.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => {
                // A handler bug must not cost the server a worker: the request (answered 500
                // by tiny_http when dropped unanswered) is lost, the worker goes on.
                let handled =
                    std::panic::catch_unwind(AssertUnwindSafe(|| api::handle(ctx, request)));
                if handled.is_err() {
                    log::error!("an HTTP handler panicked; the request was answered 500");
                }
            }
            Ok(None) => {}
            Err(e) => {
                if ctx.is_stopping() {
                    break;
                }
                log::warn!("HTTP accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// How often idle HTTP connections are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Cuts sliding-window intervals, retunes the timing threads' spin, closes idle HTTP
/// connections, and removes expired sessions every `cleanup_interval`.
fn housekeeping(ctx: &Context) {
    let mut last_cleanup = Instant::now();
    let mut last_reap = Instant::now();
    while !ctx.is_stopping() {
        std::thread::park_timeout(Duration::from_millis(200));
        let now = Instant::now();
        for session in ctx.registry.sessions() {
            session.rotate_windows(now);
        }
        ctx.registry.tune_spin();
        if now.duration_since(last_reap) >= REAP_EVERY {
            last_reap = now;
            let reaped = ctx.reaper.reap(now);
            if reaped > 0 {
                log::info!("closed {reaped} idle or unfinished HTTP connection(s)");
            }
        }
        if last_cleanup.elapsed() >= ctx.config.cleanup_interval {
            last_cleanup = Instant::now();
            let removed = ctx.registry.cleanup_expired();
            if !removed.is_empty() {
                log::info!(
                    "removed {} expired session(s): {}",
                    removed.len(),
                    removed.join(", ")
                );
            }
        }
    }
}
