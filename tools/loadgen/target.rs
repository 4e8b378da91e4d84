//! Where the load goes: a `ws://` URL restricted to loopback, and a minimal blocking HTTP
//! client for the REST calls the load generator makes (create, pause, delete, `/metrics`),
//! which also times each answer for `--metrics-every`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A server on this host.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its address (always loopback).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `ws://HOST:PORT[/...]`; HOST must be a loopback address or `localhost`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| {
            format!(
                "{url:?}: only ws:// URLs are supported (the load generator is for a local server)"
            )
        })?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6
                    .split_once("]:")
                    .ok_or_else(|| format!("{url:?}: expected [IPV6]:PORT"))?;
                (host, port)
            }
            None => authority.rsplit_once(':').ok_or_else(|| {
                format!("{url:?}: the URL needs a port, e.g. ws://127.0.0.1:8000")
            })?,
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| format!("{url:?}: host must be a loopback IP address or localhost"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "refusing {ip}: the load generator only targets servers on this host (127.0.0.0/8, ::1)"
            ));
        }
        Ok(Self {
            addr: SocketAddr::new(ip, port),
        })
    }

    /// Value of the `Host` header.
    pub fn host_header(&self) -> String {
        self.addr.to_string()
    }

    /// A TCP connection to the server.
    pub fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }

    /// One HTTP/1.1 request with an empty body (`Connection: close`); the whole answer.
    pub fn http(&self, method: &str, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
        self.request(method, path, "application/json", timeout)
            .map(|timed| timed.response)
    }

    /// One HTTP/1.1 request with an empty body over a fresh connection (`Connection: close`),
    /// asking for `accept`; the whole answer and how long it took. `timeout` bounds the whole
    /// request, not only each socket call, so a server trickling its answer cannot stall a run.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        timeout: Duration,
    ) -> io::Result<Timed> {
        // One write: `write!` on a bare socket would send the request in several segments.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.host_header()
        );
        let start = Instant::now();
        let mut stream = self.connect(timeout)?;
        stream.write_all(request.as_bytes())?;
        let sent = Instant::now();
        let mut first_byte = None;
        // Grown by doubling and truncated once, so zeroing costs little of the time measured.
        let mut raw = vec![0; READ_CHUNK];
        let mut filled = 0;
        loop {
            if start.elapsed() > timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no complete answer within {timeout:?}"),
                ));
            }
            if raw.len() - filled < READ_CHUNK / 4 {
                raw.resize(raw.len() * 2, 0);
            }
            match stream.read(&mut raw[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    first_byte.get_or_insert_with(|| sent.elapsed());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        raw.truncate(filled);
        let total = start.elapsed();
        let response = HttpResponse::parse(&raw)?;
        Ok(Timed {
            first_byte: first_byte.unwrap_or(total),
            total,
            response,
        })
    }
}

/// Initial size of the buffer an HTTP answer is read into.
const READ_CHUNK: usize = 64 * 1024;

/// An HTTP answer and its timing.
#[derive(Debug)]
pub struct Timed {
    /// Request written → first byte of the answer read.
    pub first_byte: Duration,
    /// Just before connecting → the answer read to its end (what a scraper waits).
    pub total: Duration,
    /// The answer.
    pub response: HttpResponse,
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn parse(raw: &[u8]) -> io::Result<Self> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of HTTP headers"))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 headers"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no HTTP status"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = &raw[end + 4..];
        let body = if chunked {
            dechunk(body).ok_or_else(|| bad("bad chunked body"))?
        } else {
            body.to_vec()
        };
        Ok(Self { status, body })
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("HTTP {}: {e}", self.status))
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect()
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// First position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("ws://127.0.0.1:8000").is_ok());
        assert!(Target::parse("ws://127.0.0.1:8000/stream/x").is_ok());
        assert!(Target::parse("ws://localhost:9").is_ok());
        assert!(Target::parse("ws://[::1]:9").is_ok());
        assert!(Target::parse("ws://10.0.0.1:8000").is_err());
        assert!(Target::parse("ws://example.com:8000").is_err());
        assert!(Target::parse("ws://0.0.0.0:8000").is_err());
        assert!(Target::parse("wss://127.0.0.1:8000").is_err());
        assert!(Target::parse("ws://127.0.0.1").is_err());
    }

    #[test]
    fn a_request_is_answered_and_timed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target {
            addr: listener.local_addr().unwrap(),
        };
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        let timed = target
            .request(
                "GET",
                "/metrics?format=prometheus",
                "text/plain",
                Duration::from_secs(5),
            )
            .unwrap();
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /metrics?format=prometheus HTTP/1.1\r\n"));
        assert!(request.contains("\r\nAccept: text/plain\r\n"), "{request}");
        assert_eq!(
            (timed.response.status, timed.response.body.as_slice()),
            (200, &b"hello"[..])
        );
        assert!(timed.first_byte > Duration::ZERO && timed.first_byte <= timed.total);
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = HttpResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((plain.status, plain.body.as_slice()), (200, &b"{}"[..]));
        let chunked = HttpResponse::parse(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.body.as_slice()),
            (404, &b"abcde"[..])
        );
    }
}
