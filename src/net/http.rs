//! HTTP plumbing shared by the handlers: JSON replies, typed errors with a `detail`, bodies
//! read under a limit, and parameters from the query string or a JSON body.

use std::io::{Cursor, Read};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tiny_http::{Header, Request, Response};

use crate::engine::{AttachError, RegistryError, SessionBusy};

/// A reply ready to send.
pub type Reply = Response<Cursor<Vec<u8>>>;

/// An error as the client sees it: a status and a `detail` sentence saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What went wrong, for the `detail` field.
    pub detail: String,
    /// Methods the path accepts, for 405 replies.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `detail`.
    pub fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            allow: None,
        }
    }

    /// 400: a parameter or body is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }

    /// 404: nothing at this path or with this id.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, detail)
    }

    /// 409: the request conflicts with the session's state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(409, detail)
    }

    /// 405 with the methods the path accepts.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            status: 405,
            detail: format!("method not allowed here; allowed: {allow}"),
            allow: Some(allow),
        }
    }

    /// The error as a JSON reply.
    pub fn into_reply(self, cors: &str) -> Reply {
        let mut reply = json_reply(self.status, &json!({ "detail": self.detail }), cors);
        if let Some(allow) = self.allow {
            reply = with_header(reply, "Allow", allow);
        }
        if self.status == 401 {
            reply = with_header(reply, "WWW-Authenticate", "Bearer");
        }
        reply
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match e {
            RegistryError::InvalidCode(_) => 400,
            RegistryError::NotFound(_) => 404,
            RegistryError::Exists(_) | RegistryError::HasClients { .. } => 409,
            RegistryError::Full(_)
            | RegistryError::TooManyClients(_)
            | RegistryError::ShuttingDown
            | RegistryError::Unavailable(_) => 503,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<SessionBusy> for ApiError {
    fn from(e: SessionBusy) -> Self {
        ApiError::new(503, e.to_string())
    }
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> Self {
        let status = match e {
            AttachError::FilterConflict { .. } => 409,
            AttachError::SessionFull { .. } | AttachError::Busy(_) => 503,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Whether `value` can be sent as a header value: visible ASCII and spaces, no control
/// characters (so no CR/LF splitting the header either).
pub fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// `response` with header `name: value`. A value that is not a valid header value (checked at
/// startup for configured ones, such as the CORS origin) is left out and logged, never a panic.
pub fn with_header<R: Read>(response: Response<R>, name: &str, value: &str) -> Response<R> {
    let parsed = is_header_value(value)
        .then(|| Header::from_bytes(name.as_bytes(), value.as_bytes()).ok())
        .flatten();
    match parsed {
        Some(header) => response.with_header(header),
        None => {
            log::error!("header {name} left out: {value:?} is not a valid header value");
            response
        }
    }
}

/// A reply whose body is already in memory, sent with its `Content-Length` whatever its
/// size: tiny_http switches to chunked encoding from 32 KiB on, which for a `/metrics` body
/// of megabytes only adds framing.
fn whole_body(reply: Reply) -> Reply {
    reply.with_chunked_threshold(usize::MAX)
}

/// `value` serialised as a JSON reply with `status`.
pub fn json_reply(status: u16, value: &impl Serialize, cors: &str) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!(r#"{{"detail":"response could not be encoded: {e}"}}"#).into_bytes()
    });
    json_bytes_reply(status, body, cors)
}

/// A JSON reply with `status` whose body is already serialised (`/metrics`).
pub fn json_bytes_reply(status: u16, body: Vec<u8>, cors: &str) -> Reply {
    let reply = whole_body(Response::from_data(body)).with_status_code(status);
    let reply = with_header(reply, "Content-Type", "application/json");
    with_header(reply, "Access-Control-Allow-Origin", cors)
}

/// A plain-text reply (Prometheus exposition and the like).
pub fn text_reply(status: u16, body: String, content_type: &str, cors: &str) -> Reply {
    let reply = whole_body(Response::from_data(body.into_bytes())).with_status_code(status);
    let reply = with_header(reply, "Content-Type", content_type);
    with_header(reply, "Access-Control-Allow-Origin", cors)
}

/// Value of a request header, case-insensitively.
pub fn header_value<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Answers `request` whose body has not been read (an error found before reading it, or a
/// body over the limit). tiny_http drains an unread declared body when the request is
/// dropped — on this worker thread, for as long as the client keeps the connection open — so
/// a client declaring a large body and sending none would hold the worker until the idle
/// timeout, and four of them every worker. Closing the connection's read side first ends that
/// drain at once; the answer still goes out, then the connection closes.
pub fn respond_unread(request: Request, reply: Reply, local_port: u16) {
    if request.body_length().is_some_and(|n| n > 0) {
        if let Some(peer) = request.remote_addr().copied() {
            match super::socket::recover_tcp_stream(peer, local_port) {
                Ok(socket) => {
                    let _ = socket.shutdown(std::net::Shutdown::Read);
                }
                Err(e) => log::debug!("{peer}: cannot stop reading an unread body: {e}"),
            }
        }
    }
    if let Err(e) = request.respond(reply) {
        log::debug!("reply not delivered: {e}");
    }
}

/// Reads the body, refusing more than `limit` bytes with 413.
pub fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, format!("request body larger than {limit} bytes"));
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::bad_request(format!("could not read request body: {e}")))?;
    if body.len() > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// Parameters of a request: the query string first, then a JSON object body.
#[derive(Debug, Default)]
pub struct Params {
    query: Vec<(String, String)>,
    body: Map<String, Value>,
}

impl Params {
    /// Parameters from a query string (without `?`) and an optional JSON body.
    pub fn parse(query: &str, body: &[u8]) -> Result<Self, ApiError> {
        let query = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(ApiError::bad_request("request body must be a JSON object")),
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "request body is not valid JSON: {e}"
                    )))
                }
            }
        };
        Ok(Self { query, body })
    }

    fn raw(&self, name: &str) -> Option<Result<&str, &Value>> {
        if let Some((_, v)) = self.query.iter().find(|(k, _)| k == name) {
            return Some(Ok(v.as_str()));
        }
        self.body.get(name).filter(|v| !v.is_null()).map(Err)
    }

    /// A parameter as JSON: a query value as a JSON string, a body value as it is.
    pub fn value(&self, name: &str) -> Option<Value> {
        match self.raw(name)? {
            Ok(s) => Some(Value::String(s.to_string())),
            Err(v) => Some(v.clone()),
        }
    }

    /// The JSON body object.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// A string parameter.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.raw(name) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s.to_string())),
            Some(Err(Value::String(s))) => Ok(Some(s.clone())),
            Some(Err(other)) => Err(ApiError::bad_request(format!(
                "{name} must be a string, got {other}"
            ))),
        }
    }

    /// A non-negative integer parameter no larger than `u32::MAX`.
    pub fn u32(&self, name: &str) -> Result<Option<u32>, ApiError> {
        let bad = |shown: &str| {
            ApiError::bad_request(format!(
                "{name} must be a non-negative integer, got {}",
                truncate(shown, 40)
            ))
        };
        match self.raw(name) {
            None => Ok(None),
            Some(Ok(s)) => s.trim().parse::<u32>().map(Some).map_err(|_| bad(s)),
            Some(Err(v)) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(&v.to_string())),
        }
    }

    /// A finite number parameter.
    pub fn f64(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let bad = |shown: &str| {
            ApiError::bad_request(format!(
                "{name} must be a finite number, got {}",
                truncate(shown, 40)
            ))
        };
        let value = match self.raw(name) {
            None => return Ok(None),
            Some(Ok(s)) => s.trim().parse::<f64>().map_err(|_| bad(s))?,
            Some(Err(v)) => v.as_f64().ok_or_else(|| bad(&v.to_string()))?,
        };
        if value.is_finite() {
            Ok(Some(value))
        } else {
            Err(bad(&value.to_string()))
        }
    }
}

/// `s` cut to at most `max` characters, for echoing client input in an error safely.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in that keeps what is written and where each write started.
    #[derive(Default)]
    struct Sink {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes.push(self.bytes.len());
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn large_bodies_go_out_whole_with_their_length_in_few_writes() {
        // A body like the Prometheus text of a thousand clients.
        let body: String = (0..3_400_000u32)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for reply in [
            text_reply(200, body.clone(), "text/plain", "*"),
            json_bytes_reply(200, body.clone().into_bytes(), "*"),
        ] {
            let mut sink = Sink::default();
            reply
                .raw_print(&mut sink, tiny_http::HTTPVersion(1, 1), &[], false, None)
                .unwrap();
            let end = sink
                .bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap()
                + 4;
            let head = String::from_utf8_lossy(&sink.bytes[..end]).to_lowercase();
            assert!(
                head.contains(&format!("content-length: {}\r\n", body.len())),
                "{head}"
            );
            assert!(!head.contains("transfer-encoding"), "{head}");
            assert!(sink.bytes[end..] == *body.as_bytes());
            // 256 KiB at a time (tiny_http used to write 8 KiB at a time: 415 writes); the
            // head goes out in pieces, which the connection's buffered writer gathers.
            let body_writes = sink.writes.iter().filter(|&&at| at >= end).count();
            assert!(body_writes <= 14, "{body_writes} writes");
        }
    }

    #[test]
    fn query_wins_over_body_and_types_are_checked() {
        let p =
            Params::parse("packet_id=12&name=a%20b", br#"{"packet_id": 99, "x": 1.5}"#).unwrap();
        assert_eq!(p.u32("packet_id").unwrap(), Some(12));
        assert_eq!(p.string("name").unwrap().as_deref(), Some("a b"));
        assert_eq!(p.f64("x").unwrap(), Some(1.5));
        assert_eq!(p.u32("missing").unwrap(), None);
        assert_eq!(
            Params::parse("trial_id=abc", b"")
                .unwrap()
                .u32("trial_id")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            Params::parse("trial_id=-1", b"")
                .unwrap()
                .u32("trial_id")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            Params::parse("s=NaN", b"")
                .unwrap()
                .f64("s")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            Params::parse("s=inf", b"")
                .unwrap()
                .f64("s")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(Params::parse("", b"[1]").unwrap_err().status, 400);
        assert_eq!(Params::parse("", b"{oops").unwrap_err().status, 400);
        let p = Params::parse("", br#"{"trial_id": 4294967296}"#).unwrap();
        assert_eq!(p.u32("trial_id").unwrap_err().status, 400);
    }
}
