//! Shared by the `metrics_*` integration tests: an in-process server on 127.0.0.1, a plain
//! HTTP/1.1 client, WebSocket receivers that measure what they get, and a strict parser of
//! the Prometheus text exposition format (0.0.4 and OpenMetrics 1.0).
#![allow(dead_code)] // each test binary uses part of it

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::realtime::RealtimeMode;
use phantomlink::engine::{EngineConfig, Registry};
use phantomlink::net::{Server, ServerConfig};
use serde_json::Value;
use tungstenite::Message;

/// The synthetic dataset, generated once per test binary.
pub fn table() -> Arc<PacketTable> {
    static TABLE: OnceLock<Arc<PacketTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).expect("table"))
        })
        .clone()
}

/// Engine settings for tests on a shared machine: no SCHED_FIFO, no spinning.
pub fn engine() -> EngineConfig {
    EngineConfig {
        realtime: RealtimeMode::Off,
        spin: Some(Duration::ZERO),
        ..EngineConfig::default()
    }
}

/// A server on an ephemeral port of 127.0.0.1, shut down when dropped.
pub struct TestServer {
    server: Option<Server>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(engine: EngineConfig) -> Self {
        let registry = Arc::new(Registry::new(table(), engine));
        let config = ServerConfig {
            host: "127.0.0.1".into(),
            port: 0,
            http_workers: 2,
            ..ServerConfig::default()
        };
        let server = Server::start(registry, config).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            addr,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http(self.addr, "GET", path, headers)
    }

    pub fn post(&self, path: &str) -> HttpResponse {
        http(self.addr, "POST", path, &[])
    }

    /// `GET /metrics` (or with a query) as JSON, asserting 200.
    pub fn metrics_json(&self, query: &str) -> Value {
        let r = self.get(&format!("/metrics{query}"), &[]);
        assert_eq!(r.status, 200, "GET /metrics{query}: {}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        serde_json::from_str(&r.body).expect("/metrics is JSON")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shut_down(Duration::from_secs(5));
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One request on its own connection (`Connection: close`), read to the end, 10 s at most.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line]).unwrap().trim(), 16).unwrap();
        data = &data[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// The load generator's kernel receive stamps, the very code it measures with.
#[path = "../../tools/loadgen/stamp.rs"]
mod stamp;

/// What a receiver saw of one data packet.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub sequence: u64,
    /// The packet's `timestamp` (its tick, Unix seconds).
    pub sent: f64,
    /// Arrival (Unix time, when the reader got the message) minus `sent`, ms.
    pub latency_ms: f64,
    /// The kernel's receive time of the last data read with the message (`SO_TIMESTAMPNS`,
    /// Unix seconds), when it gave one.
    pub kernel: Option<f64>,
}

/// A TCP stream whose reads keep the kernel's receive time of the data they return: when it
/// reached the socket, however late the reader thread got to run.
struct StampedStream {
    tcp: TcpStream,
    last: Option<f64>,
}

impl Read for StampedStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let (n, at) = stamp::recv_stamped(self.tcp.as_raw_fd(), buf)?;
        if n > 0 && at.is_some() {
            self.last = at;
        }
        Ok(n)
    }
}

impl Write for StampedStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A WebSocket client on its own thread that reads everything and measures it.
pub struct Receiver {
    /// The client's address, as the server's `remote`.
    pub local: SocketAddr,
    /// Data packets received so far.
    pub count: Arc<AtomicU64>,
    /// Payload bytes of every message, metadata included.
    pub payload_bytes: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Connects to `url` (`/stream/...` for JSON, `/stream/binary/...` for MessagePack).
    pub fn connect(url: &str) -> Self {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws://host:port/... URL");
        let tcp = TcpStream::connect(authority).expect("TCP connect");
        stamp::enable_rx_timestamps(&tcp).expect("SO_TIMESTAMPNS");
        let local = tcp.local_addr().unwrap();
        let stream = StampedStream { tcp, last: None };
        let (mut ws, response) = tungstenite::client(url, stream).expect("WebSocket connect");
        assert_eq!(response.status().as_u16(), 101);
        ws.get_mut()
            .tcp
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let payload_bytes = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, b, s, st) = (
            count.clone(),
            payload_bytes.clone(),
            seen.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(120);
            let mut first = true;
            while !st.load(Relaxed) && Instant::now() < give_up {
                let value: Value = match ws.read() {
                    Ok(Message::Text(text)) => {
                        b.fetch_add(text.len() as u64, Relaxed);
                        serde_json::from_str(&text).expect("JSON message")
                    }
                    Ok(Message::Binary(bytes)) => {
                        b.fetch_add(bytes.len() as u64, Relaxed);
                        rmp_serde::from_slice(&bytes).expect("MessagePack message")
                    }
                    Ok(_) => continue,
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                };
                let arrived = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                if first {
                    assert_eq!(value["type"], "metadata", "first message: {value}");
                    first = false;
                    continue;
                }
                assert_eq!(value["type"], "data");
                let data = &value["data"];
                let sent = data["timestamp"].as_f64().expect("timestamp");
                s.lock().unwrap().push(Seen {
                    sequence: data["sequence_number"].as_u64().expect("sequence_number"),
                    sent,
                    latency_ms: (arrived - sent) * 1e3,
                    kernel: ws.get_ref().last,
                });
                c.fetch_add(1, Relaxed);
            }
            let _ = ws.close(None);
            let _ = ws.flush();
        });
        Self {
            local,
            count,
            payload_bytes,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Packets missing between the first and last sequence numbers seen.
    pub fn gaps(&self) -> u64 {
        let seen = self.seen.lock().unwrap();
        seen.windows(2)
            .map(|w| w[1].sequence.saturating_sub(w[0].sequence + 1))
            .sum()
    }

    /// Nearest-rank quantile of the latencies seen (HdrHistogram's rule), ms.
    pub fn latency_quantile(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.latency_ms)
            .collect();
        assert!(!v.is_empty());
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    /// Nearest-rank quantile of the kernel-stamped latencies (receive stamp − tick), ms, a
    /// lower bound of the true one: a packet whose stamp may belong to later data — the read
    /// that completed it reached past the next packet's tick — or that has no stamp counts
    /// as 0 ms, the least it can be.
    pub fn kernel_latency_quantile(&self, q: f64) -> f64 {
        let seen = self.seen.lock().unwrap();
        let mut v: Vec<f64> = seen
            .iter()
            .enumerate()
            .map(|(i, s)| match (s.kernel, seen.get(i + 1)) {
                (Some(at), Some(next)) if at < next.sent => (at - s.sent) * 1e3,
                _ => 0.0,
            })
            .collect();
        assert!(!v.is_empty());
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    /// Packets whose kernel stamp counts in [`kernel_latency_quantile`].
    pub fn kernel_stamped(&self) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.windows(2)
            .filter(|w| w[0].kernel.is_some_and(|at| at < w[1].sent))
            .count()
    }

    /// Stops reading and closes the connection.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("receiver thread");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family: its TYPE, HELP and samples, in order.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug)]
pub struct Exposition {
    pub families: Vec<Family>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t if t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            t.parse().map_err(|_| format!("bad value {t:?}"))
        }
        t => Err(format!("bad value {t:?}")),
    }
}

/// `name{a="b",c="d"} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            if let Some(r) = s.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = s
                .find('=')
                .ok_or_else(|| format!("label without '=' in {line:?}"))?;
            let label = &s[..eq];
            if !valid_label_name(label) {
                return Err(format!("bad label name {label:?} in {line:?}"));
            }
            s = s[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("unquoted label value in {line:?}"))?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let close = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    Some((_, '\n')) | None => {
                        return Err(format!("unterminated value in {line:?}"))
                    }
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(label.to_string(), value).is_some() {
                return Err(format!("label {label} twice in {line:?}"));
            }
            s = &s[close + 1..];
            if let Some(r) = s.strip_prefix(',') {
                if r.starts_with('}') {
                    return Err(format!("trailing comma in {line:?}"));
                }
                s = r;
            } else if !s.starts_with('}') {
                return Err(format!("expected ',' or '}}' in {line:?}"));
            }
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("expected one space before the value in {line:?}"))?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(ts) = fields.next() {
        ts.parse::<f64>()
            .map_err(|_| format!("bad timestamp in {line:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("trailing fields in {line:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Sample names a family of `kind` may hold.
fn sample_names(family: &str, kind: &str, openmetrics: bool) -> Vec<String> {
    match (kind, openmetrics) {
        ("counter", true) => vec![format!("{family}_total"), format!("{family}_created")],
        ("histogram", _) => {
            let mut names = vec![
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ];
            if openmetrics {
                names.push(format!("{family}_created"));
            }
            names
        }
        _ => vec![family.to_string()],
    }
}

impl Exposition {
    /// Parses strictly: HELP and TYPE once per family and before its samples, each family's
    /// lines in one group, every sample in its declared family, no duplicate series, no other
    /// comments, no blank lines; histograms with increasing `le`, cumulative non-decreasing
    /// integer buckets ending in `+Inf` equal to `_count`, and a `_sum`. OpenMetrics: counter
    /// families named without `_total`, and the text ends with `# EOF`.
    pub fn parse(text: &str, openmetrics: bool) -> Result<Self, String> {
        let body = text
            .strip_suffix('\n')
            .ok_or("the exposition must end with a newline")?;
        let body = if openmetrics {
            body.strip_suffix("# EOF")
                .ok_or("OpenMetrics must end with '# EOF'")?
                .strip_suffix('\n')
                .unwrap_or("")
        } else {
            body
        };
        let kinds: &[&str] = if openmetrics {
            &[
                "counter",
                "gauge",
                "histogram",
                "gaugehistogram",
                "stateset",
                "info",
                "summary",
                "unknown",
            ]
        } else {
            &["counter", "gauge", "histogram", "summary", "untyped"]
        };
        let mut families: Vec<Family> = Vec::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
        for (n, line) in body.split('\n').enumerate() {
            let at = |e: String| format!("line {}: {e}", n + 1);
            if line.is_empty() {
                return Err(at("blank line".into()));
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut parts = comment.splitn(4, ' ');
                let (empty, keyword, name) = (parts.next(), parts.next(), parts.next());
                let rest = parts.next();
                if empty != Some("") || name.is_none() {
                    return Err(at(format!("unexpected comment {line:?}")));
                }
                let name = name.unwrap();
                if !valid_metric_name(name) {
                    return Err(at(format!("bad family name {name:?}")));
                }
                if closed.contains(name) {
                    return Err(at(format!("family {name} is not in one group")));
                }
                let current = families.last().is_some_and(|f| f.name == name);
                if !current {
                    if let Some(prev) = families.last() {
                        closed.insert(prev.name.clone());
                    }
                    families.push(Family {
                        name: name.to_string(),
                        kind: String::new(),
                        help: None,
                        samples: Vec::new(),
                    });
                }
                let family = families.last_mut().unwrap();
                if !family.samples.is_empty() {
                    return Err(at(format!("metadata of {name} after its samples")));
                }
                match keyword {
                    Some("HELP") => {
                        if family
                            .help
                            .replace(rest.unwrap_or("").to_string())
                            .is_some()
                        {
                            return Err(at(format!("second HELP for {name}")));
                        }
                    }
                    Some("TYPE") => {
                        let kind = rest.unwrap_or("");
                        if !kinds.contains(&kind) {
                            return Err(at(format!("unknown type {kind:?}")));
                        }
                        if !family.kind.is_empty() {
                            return Err(at(format!("second TYPE for {name}")));
                        }
                        if openmetrics && kind == "counter" && name.ends_with("_total") {
                            return Err(at(format!(
                                "OpenMetrics counter family {name} ends in _total"
                            )));
                        }
                        family.kind = kind.to_string();
                    }
                    _ => return Err(at(format!("unexpected comment {line:?}"))),
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family = families
                .last_mut()
                .filter(|f| sample_names(&f.name, &f.kind, openmetrics).contains(&sample.name))
                .ok_or_else(|| {
                    at(format!(
                        "sample {} is not in the family declared just before it",
                        sample.name
                    ))
                })?;
            if family.kind.is_empty() {
                return Err(at(format!("{} has no TYPE", family.name)));
            }
            if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
                return Err(at(format!("negative counter {line:?}")));
            }
            if sample.labels.contains_key("le") != sample.name.ends_with("_bucket") {
                return Err(at(format!("'le' belongs to buckets only: {line:?}")));
            }
            if !series.insert((sample.name.clone(), sample.labels.clone())) {
                return Err(at(format!("duplicate series {line:?}")));
            }
            family.samples.push(sample);
        }
        for family in &families {
            if family.kind.is_empty() {
                return Err(format!("{} has no TYPE", family.name));
            }
            if family.kind == "histogram" {
                check_histogram(family)?;
            }
        }
        Ok(Self { families })
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the series with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Every sample of that name.
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .collect()
    }
}

fn check_histogram(family: &Family) -> Result<(), String> {
    type Key = BTreeMap<String, String>;
    let mut buckets: HashMap<Key, Vec<(f64, f64)>> = HashMap::new();
    let mut sums: HashMap<Key, f64> = HashMap::new();
    let mut counts: HashMap<Key, f64> = HashMap::new();
    let base = &family.name;
    for s in &family.samples {
        let mut key = s.labels.clone();
        if s.name == format!("{base}_bucket") {
            let le = key.remove("le").unwrap();
            let le = parse_value(&le).map_err(|e| format!("{base}: le {e}"))?;
            if s.value.fract() != 0.0 || s.value < 0.0 {
                return Err(format!("{base}: bucket count {} is not a count", s.value));
            }
            buckets.entry(key).or_default().push((le, s.value));
        } else if s.name == format!("{base}_sum") {
            sums.insert(key, s.value);
        } else if s.name == format!("{base}_count") {
            counts.insert(key, s.value);
        }
    }
    for (key, list) in &buckets {
        for pair in list.windows(2) {
            if pair[1].0 <= pair[0].0 {
                return Err(format!("{base}{key:?}: le not increasing: {list:?}"));
            }
            if pair[1].1 < pair[0].1 {
                return Err(format!("{base}{key:?}: buckets not cumulative: {list:?}"));
            }
        }
        let (last_le, last_count) = *list.last().unwrap();
        if last_le != f64::INFINITY {
            return Err(format!("{base}{key:?}: no +Inf bucket"));
        }
        let count = counts
            .get(key)
            .ok_or_else(|| format!("{base}{key:?}: no _count"))?;
        if *count != last_count {
            return Err(format!(
                "{base}{key:?}: +Inf bucket {last_count} != _count {count}"
            ));
        }
        let sum = sums
            .get(key)
            .ok_or_else(|| format!("{base}{key:?}: no _sum"))?;
        if sum.is_nan() || *sum < 0.0 {
            return Err(format!("{base}{key:?}: _sum {sum}"));
        }
    }
    if counts.len() != buckets.len() || sums.len() != buckets.len() {
        return Err(format!("{base}: _count or _sum without buckets"));
    }
    Ok(())
}
