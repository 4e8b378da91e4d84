//! A minimal HTTP/1.1 GET over `std::net::TcpStream`: enough for `/metrics`, no HTTP crate.
//!
//! One request per connection (`Connection: close`), bounded by a timeout on connect, on
//! every read and on the whole exchange, and by a cap on the body size. `Content-Length`,
//! chunked and read-to-close bodies are understood; TLS is not (put the monitor next to the
//! server, or behind an SSH tunnel).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response accepted.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Where the server is: `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix before `/metrics` (empty, or starting with `/` without a trailing one).
    pub prefix: String,
}

impl Endpoint {
    /// Parses a base URL; a trailing `/metrics` is accepted and removed.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(format!(
                "{url}: https is not supported; monitor over plain HTTP next to the server or through an SSH tunnel"
            ));
        } else if url.contains("://") {
            return Err(format!("{url}: only http:// URLs are supported"));
        } else {
            url
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!("{url}: credentials in the URL are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed '[' in the host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{url}: expected ':port' after ']'"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        let prefix = path.strip_suffix("/metrics").unwrap_or(path).to_string();
        Ok(Self {
            host: host.to_string(),
            port,
            prefix,
        })
    }

    /// `host:port` as sent in the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// No connection, a timeout or a broken response: the server cannot be read.
    Unreachable(String),
    /// The server answered with a status other than 200.
    Status(u16, String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(why) => f.write_str(why),
            FetchError::Status(code, detail) => write!(f, "HTTP {code}: {detail}"),
        }
    }
}

/// `GET {prefix}{path_and_query}`, returning the body of a 200 answer.
pub fn get(
    endpoint: &Endpoint,
    path_and_query: &str,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let started = Instant::now();
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        FetchError::Unreachable(format!("{what} {}: {e}", endpoint.authority()))
    };
    let addrs: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| unreachable("cannot resolve", &e))?
        .collect();
    let mut last_error = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| match last_error {
        Some(e) => unreachable("cannot connect to", &e),
        None => unreachable("no address for", &"resolution returned nothing"),
    })?;
    let io = |e: std::io::Error| unreachable("reading from", &e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: phantomlink-monitor/{}\r\nConnection: close\r\n\r\n",
        endpoint.prefix,
        path_and_query,
        endpoint.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut response = Vec::with_capacity(64 * 1024);
    let mut buf = [0u8; 16 * 1024];
    loop {
        if started.elapsed() > timeout {
            return Err(unreachable(
                "timed out reading from",
                &format!("no complete answer within {timeout:?}"),
            ));
        }
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() > MAX_RESPONSE {
            return Err(unreachable(
                "answer too large from",
                &format!("more than {MAX_RESPONSE} bytes"),
            ));
        }
        if let Some(body) = complete_body(&response)? {
            return finish(body);
        }
    }
    // The server closed the connection: whatever follows the head is the body.
    match complete_body(&response)? {
        Some(body) => finish(body),
        None => match parse_head(&response)? {
            Some(head) if head.length.is_none() && !head.chunked => finish(Response {
                status: head.status,
                body: response[head.size..].to_vec(),
            }),
            _ => Err(unreachable(
                "truncated answer from",
                &"connection closed mid-response",
            )),
        },
    }
}

fn finish(response: Response) -> Result<Vec<u8>, FetchError> {
    if response.status == 200 {
        return Ok(response.body);
    }
    // The server's errors are JSON {"detail": "..."}.
    let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        });
    Err(FetchError::Status(response.status, detail))
}

struct Head {
    status: u16,
    /// Bytes of the status line and headers, blank line included.
    size: usize,
    length: Option<usize>,
    chunked: bool,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

fn bad(why: impl Into<String>) -> FetchError {
    FetchError::Unreachable(format!("not an HTTP/1.1 answer: {}", why.into()))
}

/// The head, once all of it has arrived.
fn parse_head(data: &[u8]) -> Result<Option<Head>, FetchError> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        if data.len() > 64 * 1024 {
            return Err(bad("no end of headers in the first 64 KiB"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&data[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Some(Head {
        status,
        size: end + 4,
        length,
        chunked,
    }))
}

/// The whole response, if it has fully arrived (by length or final chunk).
fn complete_body(data: &[u8]) -> Result<Option<Response>, FetchError> {
    let Some(head) = parse_head(data)? else {
        return Ok(None);
    };
    let rest = &data[head.size..];
    if head.chunked {
        return Ok(dechunk(rest)?.map(|body| Response {
            status: head.status,
            body,
        }));
    }
    match head.length {
        Some(length) if rest.len() >= length => Ok(Some(Response {
            status: head.status,
            body: rest[..length].to_vec(),
        })),
        _ => Ok(None),
    }
}

/// Decodes a chunked body; `None` until the final chunk has arrived.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body)); // trailers, if any, are ignored
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8000, "")
        );
        let e = Endpoint::parse("http://lab-server/phantom/metrics?x=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("lab-server", 80, "/phantom")
        );
        let e = Endpoint::parse("[::1]:9000/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority()),
            ("::1", 9000, "[::1]:9000".into())
        );
        assert!(Endpoint::parse("https://x").is_err());
        assert!(Endpoint::parse("http://x:99999").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
    }

    #[test]
    fn reads_length_and_chunked_bodies() {
        let r = complete_body(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        assert!(
            complete_body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi")
                .unwrap()
                .is_none()
        );
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = complete_body(chunked).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        assert!(complete_body(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
