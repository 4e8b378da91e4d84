//! Shared helpers of the integration tests: an in-process server that stops when dropped, a
//! raw HTTP/1.1 client (raw so tests can send malformed input), and a WebSocket client that
//! decodes JSON text and MessagePack binary frames into `serde_json::Value`.
//!
//! Every loop here is bounded in time; every socket has read and write timeouts, so a server
//! that stops answering fails a test instead of hanging it.

#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::result_large_err)] // tungstenite::Error is what these helpers pass on

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use phantomlink::dataset::{load_dataset, PacketTable};
use phantomlink::engine::realtime::RealtimeMode;
use phantomlink::engine::{EngineConfig, Registry};
use phantomlink::net::{Server, ServerConfig};
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// Packets in the synthetic recording.
pub const TOTAL_PACKETS: u64 = 11_748;
/// Units (channels) per packet.
pub const NUM_CHANNELS: usize = 142;
/// How long any single socket operation may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The synthetic dataset (seed 42, as the binary serves by default), built once per test
/// binary and shared by every server in it.
pub fn table() -> Arc<PacketTable> {
    static TABLE: OnceLock<Arc<PacketTable>> = OnceLock::new();
    Arc::clone(
        TABLE.get_or_init(|| {
            Arc::new(load_dataset("synthetic", 42).expect("synthetic dataset loads"))
        }),
    )
}

/// Engine settings for tests: no SCHED_FIFO and little spinning, so that many test servers
/// running in parallel do not hog the machine's cores.
pub fn test_engine_config() -> EngineConfig {
    EngineConfig {
        realtime: RealtimeMode::Off,
        spin: Some(Duration::from_micros(20)),
        cores: Vec::new(),
        ..EngineConfig::default()
    }
}

/// Network settings for tests: a free port on the loopback interface.
pub fn test_server_config() -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        http_workers: 4,
        ..ServerConfig::default()
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// In-process server

/// A server on a free port of 127.0.0.1, shut down when dropped.
pub struct TestServer {
    server: Option<Server>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestServer {
    /// A server with the test engine and network settings.
    pub fn start() -> Self {
        Self::with(|_, _| {})
    }

    /// A server whose test settings `tweak` adjusts.
    pub fn with(tweak: impl FnOnce(&mut EngineConfig, &mut ServerConfig)) -> Self {
        let mut engine = test_engine_config();
        let mut network = test_server_config();
        tweak(&mut engine, &mut network);
        Self::with_configs(engine, network)
    }

    /// A server with exactly these settings (the port is forced to 0, the host to loopback).
    pub fn with_configs(engine: EngineConfig, network: ServerConfig) -> Self {
        Self::serving(table(), engine, network)
    }

    /// A server of another dataset, with test settings.
    pub fn of(dataset: Arc<PacketTable>) -> Self {
        Self::serving(dataset, test_engine_config(), test_server_config())
    }

    fn serving(dataset: Arc<PacketTable>, engine: EngineConfig, network: ServerConfig) -> Self {
        Self::of_registry(Registry::new(dataset, engine), network)
    }

    /// A server of a registry set up by the test (a tap source, say), on loopback.
    pub fn of_registry(registry: Registry, mut network: ServerConfig) -> Self {
        network.host = "127.0.0.1".into();
        network.port = 0;
        let registry = Arc::new(registry);
        let server = Server::start(registry, network).expect("test server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            addr,
        }
    }

    /// The server's sessions.
    pub fn registry(&self) -> &Arc<Registry> {
        self.server.as_ref().expect("server is running").registry()
    }

    /// `ws://127.0.0.1:port{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// An HTTP request with `headers` and an optional body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        http(self.addr, method, path, body, headers)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None, &[])
    }

    /// `POST path` without a body.
    pub fn post(&self, path: &str) -> HttpResponse {
        self.request("POST", path, None, &[])
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        let body = body.to_string();
        self.request(
            "POST",
            path,
            Some(body.as_bytes()),
            &[("Content-Type", "application/json")],
        )
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> HttpResponse {
        self.request("DELETE", path, None, &[])
    }

    /// `GET /api/sessions/{code}`, which must answer 200.
    pub fn session(&self, code: &str) -> Value {
        self.get(&format!("/api/sessions/{code}")).ok_json()
    }

    /// `GET /api/control/{code}/position`, which must answer 200.
    pub fn position(&self, code: &str) -> Value {
        self.get(&format!("/api/control/{code}/position")).ok_json()
    }

    /// `POST /api/control/{code}/{action}{query}`, which must answer 200.
    pub fn control(&self, code: &str, action_and_query: &str) -> Value {
        self.post(&format!("/api/control/{code}/{action_and_query}"))
            .ok_json()
    }

    /// `GET /metrics` as JSON, which must answer 200.
    pub fn metrics(&self) -> Value {
        self.get("/metrics").ok_json()
    }

    /// Waits until the session has `clients` connected clients (as `GET /api/sessions/{code}`
    /// reports them).
    pub fn wait_for_clients(&self, code: &str, clients: u64, timeout: Duration) {
        let mut last = Value::Null;
        let reached = wait_until(timeout, || {
            last = self.session(code);
            last["active_connections"] == clients
        });
        assert!(
            reached,
            "session {code} did not reach {clients} client(s) within {timeout:?}: {last}"
        );
    }

    /// Waits until the session's timing thread reports it paused (a pause or stop applied).
    pub fn wait_paused(&self, code: &str, paused: bool) -> Value {
        let mut last = Value::Null;
        let reached = wait_until(Duration::from_secs(3), || {
            last = self.position(code);
            last["paused"] == paused
        });
        assert!(
            reached,
            "session {code} never reported paused={paused}: {last}"
        );
        last
    }

    /// A WebSocket client on `path` (`/stream/{code}` or `/stream/binary/{code}`).
    pub fn ws(&self, path: &str) -> WsClient {
        WsClient::connect(self.addr, path)
            .unwrap_or_else(|e| panic!("WebSocket connect to {path} failed: {e}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let clean = server.shut_down(Duration::from_secs(2));
            if !clean && !std::thread::panicking() {
                eprintln!(
                    "warning: test server at {} did not shut down cleanly",
                    self.addr
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics, showing the body, if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts status 200 with a JSON content type, and returns the JSON.
    #[track_caller]
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.text());
        self.assert_json_content_type();
        self.json()
    }

    #[track_caller]
    fn assert_json_content_type(&self) {
        let content_type = self.header("Content-Type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "Content-Type {content_type:?} is not JSON"
        );
    }

    /// Asserts an error reply: `status`, JSON `{"detail": "..."}` with a non-empty sentence.
    /// Returns the detail.
    #[track_caller]
    pub fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "expected {status}, got {}: {}",
            self.status,
            self.text()
        );
        self.assert_json_content_type();
        let body = self.json();
        let detail = body["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("error body has no string detail: {body}"));
        assert!(
            detail.len() > 5,
            "detail too short to help anyone: {detail:?}"
        );
        detail.to_string()
    }
}

/// Sends one request and reads the response. Adds `Host`, `Connection: close` and
/// `Content-Length` unless `headers` has them.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !has("Host") {
        raw.push_str(&format!("Host: {addr}\r\n"));
    }
    if !has("Connection") {
        raw.push_str("Connection: close\r\n");
    }
    if let Some(body) = body {
        if !has("Content-Length") {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    http_raw(addr, &bytes)
}

/// Sends `request` as is and reads one response.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = connect_tcp(addr);
    // The server may answer (413) before reading all of a large body; a failed write is then
    // fine as long as the response can be read.
    let _ = stream.write_all(request);
    read_response(&mut stream)
        .unwrap_or_else(|e| panic!("no HTTP response to {:?}: {e}", preview(request)))
}

fn preview(request: &[u8]) -> String {
    let line_end = request
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(request.len().min(80));
    String::from_utf8_lossy(&request[..line_end]).into_owned()
}

/// A TCP connection to `addr` with read and write timeouts.
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads the status line and headers (byte by byte, so nothing after them is consumed).
pub fn read_head(stream: &mut impl Read) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("response head over 64 KiB"));
        }
        match stream.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&head)),
                ))
            }
            _ => head.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

fn read_response(stream: &mut TcpStream) -> io::Result<HttpResponse> {
    let (status, headers) = read_head(stream)?;
    read_body(stream, status, headers)
}

fn read_body(
    stream: &mut TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
) -> io::Result<HttpResponse> {
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = response
        .header("Content-Length")
        .and_then(|v| v.parse::<usize>().ok());
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    if chunked {
        let mut rest = Vec::new();
        read_to_end_bounded(stream, &mut rest)?;
        response.body = dechunk(&rest)?;
    } else if let Some(length) = length {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body)?;
        response.body = body;
    } else {
        read_to_end_bounded(stream, &mut response.body)?;
    }
    Ok(response)
}

fn read_to_end_bounded(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline && out.len() < 16 << 20 {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "response body did not end",
    ))
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::other(format!("bad chunked body: {what}"));
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("no chunk size line"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(size_text))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Headers of a valid WebSocket upgrade request (for tests that expect it to be refused
/// before the upgrade, and look at the HTTP answer).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Sends a WebSocket upgrade request for `path` (headers of a real client) and returns the
/// answer: status 101 with no body when upgraded (the connection is then dropped), or the
/// HTTP error reply.
pub fn upgrade_request(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream = connect_tcp(addr);
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in UPGRADE_HEADERS {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    stream.write_all(raw.as_bytes()).unwrap();
    let (status, headers) =
        read_head(&mut stream).unwrap_or_else(|e| panic!("no answer to upgrade {path}: {e}"));
    if status == 101 {
        return HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
    }
    read_body(&mut stream, status, headers)
        .unwrap_or_else(|e| panic!("unreadable answer to upgrade {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// What a WebSocket client received, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A JSON text message.
    Text(Value),
    /// A MessagePack binary message, decoded into the same value model.
    Binary(Value),
    /// A ping (tungstenite answers it by itself).
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// A close frame: code and reason.
    Close(Option<(u16, String)>),
}

/// A WebSocket client over a plain `TcpStream` with timeouts.
pub struct WsClient {
    /// The connection.
    pub ws: WebSocket<TcpStream>,
    /// Path it connected to.
    pub path: String,
    binary: bool,
    last_sequence: Option<u64>,
}

impl WsClient {
    /// Connects to `path` on `addr`.
    pub fn connect(addr: SocketAddr, path: &str) -> Result<Self, tungstenite::Error> {
        let stream = connect_tcp(addr);
        Self::over(stream, addr, path)
    }

    /// Completes the WebSocket handshake for `path` over an already connected `stream`.
    pub fn over(
        stream: TcpStream,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Self, tungstenite::Error> {
        let url = format!("ws://{addr}{path}");
        let (ws, response) = tungstenite::client(url.as_str(), stream).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(io::Error::new(io::ErrorKind::TimedOut, "handshake"))
            }
        })?;
        assert_eq!(response.status().as_u16(), 101);
        Ok(Self {
            ws,
            path: path.to_string(),
            binary: path.starts_with("/stream/binary/"),
            last_sequence: None,
        })
    }

    /// The client's local address (as the server sees it in `/metrics`).
    pub fn local_addr(&self) -> SocketAddr {
        self.ws.get_ref().local_addr().unwrap()
    }

    /// Reads one frame, waiting at most `timeout`. `Ok(None)` on timeout; errors otherwise
    /// (connection closed, reset, protocol error). Text must be JSON and binary MessagePack.
    pub fn read(&mut self, timeout: Duration) -> Result<Option<Received>, tungstenite::Error> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.ws.get_ref().set_read_timeout(Some(timeout))?;
        let message = match self.ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(Some(match message {
            Message::Text(text) => {
                Received::Text(serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("{}: text frame is not JSON ({e}): {text:?}", self.path)
                }))
            }
            Message::Binary(bytes) => {
                Received::Binary(rmp_serde::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!(
                        "{}: binary frame is not MessagePack ({e}): {} bytes",
                        self.path,
                        bytes.len()
                    )
                }))
            }
            Message::Ping(data) => Received::Ping(data),
            Message::Pong(data) => Received::Pong(data),
            Message::Close(frame) => {
                Received::Close(frame.map(|f| (u16::from(f.code), f.reason.into_owned())))
            }
            Message::Frame(_) => unreachable!("tungstenite does not return raw frames on read"),
        }))
    }

    /// The next message (text or binary, in the format this endpoint must use), skipping
    /// pings and pongs; `None` if nothing arrives within `timeout`. Panics on a close or error.
    pub fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read(left) {
                Ok(None) => return None,
                Ok(Some(Received::Text(value))) => {
                    assert!(!self.binary, "{}: text frame on a binary stream", self.path);
                    return Some(value);
                }
                Ok(Some(Received::Binary(value))) => {
                    assert!(self.binary, "{}: binary frame on a JSON stream", self.path);
                    return Some(value);
                }
                Ok(Some(Received::Ping(_) | Received::Pong(_))) => {}
                Ok(Some(Received::Close(frame))) => {
                    panic!("{}: server closed the stream: {frame:?}", self.path)
                }
                Err(e) => panic!("{}: read failed: {e}", self.path),
            }
        }
    }

    /// The first message, which must be the metadata message.
    pub fn metadata(&mut self) -> Value {
        let message = self
            .next_message(IO_TIMEOUT)
            .unwrap_or_else(|| panic!("{}: no metadata message", self.path));
        assert_eq!(message["type"], "metadata", "first message: {message}");
        message
    }

    /// The next data message's `data` object (within 2 s). Checks that sequence numbers
    /// seen by this client never go backwards.
    pub fn next_data(&mut self) -> Value {
        self.try_next_data(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("{}: no data packet within 2 s", self.path))
    }

    /// The next data message's `data` object, or `None` after `timeout`.
    pub fn try_next_data(&mut self, timeout: Duration) -> Option<Value> {
        let message = self.next_message(timeout)?;
        assert_eq!(message["type"], "data", "{}: {message}", self.path);
        let data = message["data"].clone();
        let sequence = seq(&data);
        if let Some(last) = self.last_sequence {
            assert!(sequence > last, "sequence went from {last} to {sequence}");
        }
        self.last_sequence = Some(sequence);
        Some(data)
    }

    /// `n` data packets, waiting at most `timeout` in all.
    pub fn data_n(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::with_capacity(n);
        while packets.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_next_data(left) {
                Some(data) => packets.push(data),
                None => panic!(
                    "{}: only {} of {n} packets within {timeout:?}",
                    self.path,
                    packets.len()
                ),
            }
        }
        packets
    }

    /// Data packets received during `duration`.
    pub fn data_for(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = Instant::now() + duration;
        let mut packets = Vec::new();
        while packets.len() < 100_000 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(data) = self.try_next_data(left) {
                packets.push(data);
            }
        }
        packets
    }

    /// Reads data packets until none arrives for `quiet` (at most `max` in all).
    pub fn drain_until_quiet(&mut self, quiet: Duration, max: Duration) -> Vec<Value> {
        let deadline = Instant::now() + max;
        let mut packets = Vec::new();
        while Instant::now() < deadline {
            match self.try_next_data(quiet) {
                Some(data) => packets.push(data),
                None => return packets,
            }
        }
        panic!(
            "{}: packets kept arriving for {max:?} ({} read)",
            self.path,
            packets.len()
        );
    }

    /// Reads data packets until one satisfies `wanted` (at most `max_packets` or `timeout`);
    /// returns every packet read, the matching one last.
    pub fn data_until(
        &mut self,
        max_packets: usize,
        timeout: Duration,
        mut wanted: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        while packets.len() < max_packets {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(data) = self.try_next_data(left) else {
                break;
            };
            let done = wanted(&data);
            packets.push(data);
            if done {
                return packets;
            }
        }
        let tail: Vec<_> = packets.iter().rev().take(3).map(|p| bin(p)).collect();
        panic!(
            "{}: no wanted packet in {} packets / {timeout:?} (last bins {tail:?})",
            self.path,
            packets.len()
        );
    }

    /// Sends a close frame and reads until the server's close reply; returns its code.
    pub fn close_handshake(&mut self, code: u16) -> Option<(u16, String)> {
        self.ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: "test done".into(),
            }))
            .expect("close frame sent");
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.read(Duration::from_millis(200)) {
                Ok(Some(Received::Close(frame))) => return frame,
                Ok(_) => {}
                Err(e) => panic!("{}: no close reply, connection ended: {e}", self.path),
            }
        }
        panic!("{}: no close reply within {IO_TIMEOUT:?}", self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

/// `sequence_number` of a data object.
#[track_caller]
pub fn seq(data: &Value) -> u64 {
    data["sequence_number"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer sequence_number in {data}"))
}

/// `bin_index` of a data object.
#[track_caller]
pub fn bin(data: &Value) -> u64 {
    data["bin_index"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer bin_index in {data}"))
}

/// Asserts that the packets' sequence numbers rise by exactly one each.
#[track_caller]
pub fn assert_contiguous(packets: &[Value], what: &str) {
    for pair in packets.windows(2) {
        assert_eq!(
            seq(&pair[1]),
            seq(&pair[0]) + 1,
            "{what}: sequence gap between packets {} and {}",
            seq(&pair[0]),
            seq(&pair[1])
        );
    }
}

/// `value` as it reads after a trip through JSON text: floats then compare exactly with what
/// a JSON decoder made of the server's text (serde_json's default float parsing is not
/// always the closest double, but it is deterministic).
pub fn via_json_text(value: &Value) -> Value {
    serde_json::from_str(&value.to_string()).expect("re-parsing our own JSON")
}

/// The wire `data` object the server must send for table row `bin`, without `timestamp` and
/// `sequence_number` (which the session adds), built from the dataset itself.
pub fn expected_row(table: &PacketTable, bin: u32) -> Value {
    let row = table.row(bin);
    via_json_text(&json!({
        "spikes": {
            "channel_ids": table.channel_ids(),
            "spike_counts": row.spike_counts,
            "bin_size_ms": 25.0,
        },
        "kinematics": {"vx": row.vx, "vy": row.vy, "x": row.x, "y": row.y},
        "intention": {
            "target_id": row.target_id,
            "target_x": row.target_x,
            "target_y": row.target_y,
            "distance_to_target": row.distance_to_target,
        },
        "trial_id": row.trial_id,
        "trial_time_ms": row.trial_time_ms,
        "bin_index": row.bin_index,
        "trial_elapsed_ms": row.trial_elapsed_ms,
    }))
}

/// `data` without the fields that vary per session (`timestamp`, `sequence_number`),
/// normalised through JSON text.
pub fn row_part(data: &Value) -> Value {
    let mut copy = data.clone();
    let object = copy.as_object_mut().expect("data is an object");
    object.remove("timestamp");
    object.remove("sequence_number");
    via_json_text(&copy)
}

/// How a raw connection ended when read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// The server closed it (read returned 0).
    Eof,
    /// The server reset it.
    Reset,
    /// Another read error.
    Error,
    /// Still open after the time allowed.
    StillOpen,
}

/// Reads everything the server sends on a raw socket until the connection ends or `within`
/// passes, polling every `poll`.
pub fn read_raw_until_end(
    stream: &mut TcpStream,
    within: Duration,
    poll: Duration,
) -> (Vec<u8>, RawEnd) {
    stream.set_read_timeout(Some(poll)).unwrap();
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        if Instant::now() >= deadline {
            break RawEnd::StillOpen;
        }
        match stream.read(&mut buf) {
            Ok(0) => break RawEnd::Eof,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break RawEnd::Reset,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break RawEnd::Error,
        }
    };
    (bytes, end)
}

/// The server frames in `bytes` as `(opcode, payload)`, stopping at a frame cut off at the
/// end. Panics on a masked frame: server frames never are.
pub fn server_frames(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        assert_eq!(bytes[at + 1] & 0x80, 0, "server frames are never masked");
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 if at + 10 <= bytes.len() => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            short => (short as usize, 2),
        };
        let Some(payload) = bytes.get(at + header..at + header + len) else {
            break; // cut off mid-frame
        };
        frames.push((opcode, payload));
        at += header + len;
    }
    frames
}

/// The status code of a close frame's payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// A client frame: `fin`, `rsv` bits, `opcode`, masked unless told, with the length encoded in
/// its shortest form — for tests that send the server frames a library would refuse to build.
pub fn client_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A TCP connection upgraded by hand to `path` (so the test controls every byte after it).
/// `recv_buffer` shrinks the receive buffer (a client that will not read).
pub fn raw_upgrade(addr: SocketAddr, path: &str, recv_buffer: Option<usize>) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in UPGRADE_HEADERS {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let (status, _) = read_head(&mut stream).unwrap();
    assert_eq!(status, 101, "{path}: not upgraded");
    stream
}

/// Runs `phantomlink-loadgen` against `server` (2 sessions × 2 clients, 0.5 s of warm-up,
/// `seconds` measured, plus `args`) and returns its JSON report. The load generator bounds
/// its own run (connect budget, window, hard deadline).
pub fn loadgen_report(server: &TestServer, seconds: &str, args: &[&str]) -> Value {
    let url = format!("ws://{}", server.addr);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_phantomlink-loadgen"))
        .args(["--url", &url, "--sessions", "2", "--clients", "2"])
        .args(["--seconds", seconds, "--warmup", "0.5", "--json", "--quiet"])
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("loadgen binary runs");
    assert!(output.status.success(), "loadgen exit {:?}", output.status);
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}
