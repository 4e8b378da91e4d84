//! Where the load goes: a `ws://` URL restricted to loopback, and a minimal blocking HTTP
//! client for the REST calls the load generator makes (create, pause, delete, `/metrics`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

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
        let mut stream = self.connect(timeout)?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.host_header()
        )?;
        let mut raw = Vec::with_capacity(64 * 1024);
        stream.read_to_end(&mut raw)?;
        HttpResponse::parse(&raw)
    }
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
