//! The bad-input corpus: well over 200 malformed, hostile or merely wrong inputs, each with
//! the answer it must get — a status with a JSON `detail`, tiny_http's own 400/505 for what it
//! cannot parse, a WebSocket close code, or the connection closed by the idle reaper — run as
//! one table-driven test that reports every failing case, not just the first.
//!
//! Around the table: a panic hook counts panics anywhere in this process (the servers run
//! in-process, so a panicking server thread is counted too) and must count none; afterwards
//! the servers still answer `/health`, a new client streams, no client is left registered, and
//! threads and descriptors return to where they were.

mod common;

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client_frame as frame;
use common::*;
use serde_json::Value;

/// Idle limit of the corpus servers: unfinished requests are cut after this (and the reaper
/// scans once a second).
const IDLE: Duration = Duration::from_secs(2);
/// A reaped connection must be closed within this.
const REAP_WITHIN: Duration = Duration::from_secs(6);
const TOKEN: &str = "s3cret-token";
/// Cases run this many at a time.
const PARALLEL: usize = 8;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_counter() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Relaxed);
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        if let Ok(mut messages) = PANIC_MESSAGES.lock() {
            messages.push(format!("thread {thread}: {info}"));
        }
        default(info);
    }));
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Clone, Copy, Debug, PartialEq)]
enum Srv {
    /// No token; idle limit [`IDLE`]; default body limit (64 KiB).
    Open,
    /// `--api-token` with `--stream-token`.
    Token,
}

#[derive(Clone, Debug)]
enum Input {
    /// These bytes, then read one response.
    Raw(Vec<u8>),
    /// These bytes, then shut down the write side (the server sees EOF), then read.
    RawThenEof(Vec<u8>),
    /// A well-formed request.
    Request {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
    },
    /// Upgrade to `path`, read the metadata, then send these bytes.
    Ws { path: String, send: Vec<u8> },
    /// These bytes (maybe none), then nothing: the reaper must close the connection.
    Stall(Vec<u8>),
    /// A valid request trickled a byte every 400 ms: the reaper must close it first.
    Trickle(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Expect {
    /// This status, with a JSON body holding a non-empty `detail`.
    Detail(u16),
    /// This status (a 2xx or tiny_http's own answer: body not checked).
    Status(u16),
    /// Any of these statuses (body not checked).
    AnyOf(&'static [u16]),
    /// The connection closed without an answer, or with one of these statuses.
    ClosedOr(&'static [u16]),
    /// After the upgrade, the server closes with this code.
    WsClose(u16),
    /// After the upgrade, packets keep coming (the input was harmless).
    WsStreams,
    /// The server closes the connection within [`REAP_WITHIN`], without a 2xx.
    Reaped,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    srv: Srv,
    input: Input,
    expect: Expect,
}

struct Corpus(Vec<Case>);

impl Corpus {
    fn add(&mut self, name: impl Into<String>, srv: Srv, input: Input, expect: Expect) {
        self.0.push(Case {
            name: name.into(),
            srv,
            input,
            expect,
        });
    }

    fn raw(&mut self, name: &str, bytes: &[u8], expect: Expect) {
        self.add(name, Srv::Open, Input::Raw(bytes.to_vec()), expect);
    }

    fn raw_eof(&mut self, name: &str, bytes: &[u8], expect: Expect) {
        self.add(name, Srv::Open, Input::RawThenEof(bytes.to_vec()), expect);
    }

    fn req(
        &mut self,
        srv: Srv,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        expect: Expect,
    ) {
        let shown: String = path.chars().take(60).collect();
        let name = format!(
            "{method} {shown}{}{}",
            if headers.is_empty() { "" } else { " +headers" },
            body.map(|b| format!(" body[{}]", b.len()))
                .unwrap_or_default()
        );
        self.add(
            name,
            srv,
            Input::Request {
                method: method.into(),
                path: path.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.map(<[u8]>::to_vec),
            },
            expect,
        );
    }

    fn get(&mut self, path: &str, expect: Expect) {
        self.req(Srv::Open, "GET", path, &[], None, expect);
    }

    fn post(&mut self, path: &str, body: Option<&[u8]>, expect: Expect) {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        self.req(Srv::Open, "POST", path, headers, body, expect);
    }

    fn upgrade(&mut self, path: &str, headers: &[(&str, &str)], expect: Expect) {
        self.req(Srv::Open, "GET", path, headers, None, expect);
    }

    fn ws(&mut self, name: &str, send: Vec<u8>, expect: Expect) {
        self.add(
            format!("ws: {name}"),
            Srv::Open,
            Input::Ws {
                path: "/stream/corpus-ws".into(),
                send,
            },
            expect,
        );
    }
}

fn text(payload: &[u8]) -> Vec<u8> {
    frame(true, 0, 0x1, payload, true)
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(true, 0, 0x8, &payload, true)
}

fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    UPGRADE_HEADERS.to_vec()
}

fn upgrade_without(name: &str) -> Vec<(&'static str, &'static str)> {
    UPGRADE_HEADERS
        .iter()
        .copied()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .collect()
}

fn upgrade_with(name: &str, value: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut headers = upgrade_without(name);
    let name: &'static str = UPGRADE_HEADERS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, _)| *k)
        .unwrap_or("X-Unknown");
    headers.push((name, value));
    headers
}

#[allow(clippy::vec_init_then_push)]
fn corpus() -> Vec<Case> {
    use Expect::*;
    let mut c = Corpus(Vec::new());
    const CLOSED_400: Expect = ClosedOr(&[400]);

    // --- Malformed HTTP: tiny_http answers 400 (or 505) and closes, or just closes. ---------
    c.raw("CRLF only", b"\r\n\r\n", CLOSED_400);
    c.raw("one word", b"GARBAGE\r\n\r\n", CLOSED_400);
    c.raw("method only", b"GET\r\n\r\n", CLOSED_400);
    c.raw("no version (HTTP/0.9 style)", b"GET /\r\n\r\n", CLOSED_400);
    c.raw("HTTP/9.9", b"GET / HTTP/9.9\r\n\r\n", CLOSED_400);
    // tiny_http writes its 505 into a buffer it never flushes: the client sees the
    // connection closed (by the idle reaper) instead.
    c.raw(
        "HTTP/2.0 over text",
        b"GET /health HTTP/2.0\r\n\r\n",
        ClosedOr(&[505]),
    );
    c.raw(
        "HTTP/3.0 over text",
        b"GET /health HTTP/3.0\r\n\r\n",
        ClosedOr(&[505]),
    );
    c.raw("FOO/1.1", b"GET / FOO/1.1\r\n\r\n", CLOSED_400);
    c.raw("lowercase version", b"GET / http/1.1\r\n\r\n", CLOSED_400);
    c.raw("binary bytes", b"\x00\x01\x02\x03\r\n\r\n", CLOSED_400);
    c.raw(
        "binary request line",
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, b'\r', b'\n',
        ],
        CLOSED_400,
    );
    c.raw(
        "header without colon",
        b"GET /health HTTP/1.1\r\nHost\r\n\r\n",
        CLOSED_400,
    );
    c.raw(
        "header with empty name",
        b"GET /health HTTP/1.1\r\n: nothing\r\n\r\n",
        ClosedOr(&[400, 200]),
    );
    c.raw(
        "obs-fold continuation line",
        b"GET /health HTTP/1.1\r\nX-A: 1\r\n  folded\r\nConnection: close\r\n\r\n",
        ClosedOr(&[400, 200]),
    );
    c.raw(
        "non-ASCII header value",
        b"GET /health HTTP/1.1\r\nX-Name: \xc3\xa9\xff\r\n\r\n",
        ClosedOr(&[400]),
    );
    c.raw(
        "non-ASCII path bytes",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        ClosedOr(&[400, 404]),
    );
    c.raw(
        "NUL in the path",
        b"GET /hea\x00lth HTTP/1.1\r\nConnection: close\r\n\r\n",
        ClosedOr(&[400, 404]),
    );
    c.raw(
        "tab-separated request line",
        b"GET\t/health\tHTTP/1.1\r\n\r\n",
        CLOSED_400,
    );
    c.raw(
        "double space in request line",
        b"GET  /health HTTP/1.1\r\n\r\n",
        CLOSED_400,
    );
    c.raw(
        "Content-Length not a number",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: nope\r\nConnection: close\r\n\r\n",
        ClosedOr(&[400, 200]),
    );
    c.raw(
        "negative Content-Length",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
        ClosedOr(&[400, 200]),
    );
    c.raw(
        "Content-Length beyond u64",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 999999999999999999999999\r\nConnection: close\r\n\r\n",
        ClosedOr(&[400, 200]),
    );
    c.raw(
        "huge Content-Length, no body",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 1000000000000\r\nConnection: close\r\n\r\n",
        Detail(413),
    );
    c.raw(
        "Expect: 100-continue with a huge body",
        b"POST /api/sessions/create HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n",
        AnyOf(&[100, 413, 417]),
    );
    c.raw(
        "unknown Expect",
        b"GET /health HTTP/1.1\r\nExpect: magic\r\nConnection: close\r\n\r\n",
        AnyOf(&[417, 200]),
    );
    c.raw_eof(
        "Content-Length larger than the body",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"a\"",
        ClosedOr(&[400]),
    );
    c.raw(
        "chunked with a bad chunk size",
        b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ClosedOr(&[400]),
    );
    c.raw(
        "chunked body over the limit",
        &{
            let mut raw = b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            for _ in 0..20 {
                raw.extend_from_slice(b"1000\r\n");
                raw.extend_from_slice(&[b' '; 0x1000]);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            raw
        },
        Detail(413),
    );
    c.raw(
        "chunk size beyond u64",
        b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nfffffffffffffffffffff\r\n",
        ClosedOr(&[400, 413]),
    );
    c.raw(
        "Transfer-Encoding gzip",
        b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n",
        // Read as chunked (RFC 7230 §3.3.3): the server waits for a body that never comes,
        // until the idle reaper closes the connection.
        ClosedOr(&[400]),
    );
    c.raw(
        "bare LF line endings",
        b"GET /health HTTP/1.1\nConnection: close\n\n",
        Reaped,
    );
    c.raw(
        "HTTP/1.0 without Host",
        b"GET /health HTTP/1.0\r\n\r\n",
        Status(200),
    );
    c.raw(
        "absolute-form target",
        b"GET http://127.0.0.1/health HTTP/1.1\r\nConnection: close\r\n\r\n",
        Detail(404),
    );
    c.raw(
        "asterisk-form target",
        b"OPTIONS * HTTP/1.1\r\nConnection: close\r\n\r\n",
        Detail(404),
    );
    c.raw(
        "CONNECT authority-form",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nConnection: close\r\n\r\n",
        Detail(404),
    );
    c.raw(
        "2000 headers",
        &{
            let mut raw = b"GET /health HTTP/1.1\r\nConnection: close\r\n".to_vec();
            for i in 0..2000 {
                raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw
        },
        Status(200),
    );
    c.raw(
        "64 KiB header value",
        &{
            let mut raw = b"GET /health HTTP/1.1\r\nConnection: close\r\nX-Big: ".to_vec();
            raw.extend_from_slice(&[b'a'; 64 * 1024]);
            raw.extend_from_slice(b"\r\n\r\n");
            raw
        },
        AnyOf(&[200, 431]),
    );
    c.raw(
        "request smuggling: CL and TE",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        AnyOf(&[200, 400]),
    );
    c.raw(
        "two different Content-Lengths",
        b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}",
        ClosedOr(&[200, 400]),
    );
    c.raw(
        "pipelined: good then garbage",
        b"GET /health HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n",
        Status(200),
    );

    // --- Unknown routes. ----------------------------------------------------------------------
    for path in [
        "/api",
        "/api/",
        "/apis",
        "/api/foo",
        "/api/sessions/x/y",
        "/api/sessions/x/y/z",
        "/api/control/x",
        "/api/control/x/dance",
        "/api/control/x/pause/now",
        "/api/trials/1/2",
        "/api/trials/by-target/1/2",
        "/stream",
        "/stream/a/b",
        "/stream/binary/a/b",
        "/metrics/x",
        "/health/x",
        "/favicon.ico",
        "/index.html",
        "/.env",
        "/admin",
        "/HEALTH",
        "/Metrics",
        "/api/Sessions",
        "/health%20",
        "/%68ealth",
        "//health",
        "/health//",
        "///",
        "/./health",
        "/../health",
        "/api/../health",
        "/%2e%2e/health",
        "/%2E%2E%2Fhealth",
        "/api/sessions/../../etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/health#fragment",
        "/\\health",
        "/health;jsessionid=1",
    ] {
        c.get(path, Detail(404));
    }
    // `/api/trials/by-target` is trial "by-target" (400, says the id must be an integer), and
    // `/stream/binary` is the stream of session "binary" (426 without an upgrade), as with the
    // reference's routes.
    c.get("/api/trials/by-target", Detail(400));
    c.get("/stream/binary", Detail(426));
    c.get(&format!("/{}", "a".repeat(8 * 1024)), Detail(404));
    c.get(&format!("/{}", "a/".repeat(4 * 1024)), Detail(404));
    c.get(&format!("/api/{}", "%2e%2e/".repeat(1000)), Detail(404));
    c.get("/health?", Status(200));
    c.get("/health?&&&==&", Status(200));
    c.get("/health?x=%ff%fe", Status(200));

    // --- Wrong methods on known paths: 405 with Allow. -----------------------------------------
    for (path, wrong) in [
        ("/", &["POST", "PUT", "DELETE", "PATCH"][..]),
        (
            "/health",
            &["POST", "PUT", "DELETE", "PATCH", "HEAD", "TRACE"],
        ),
        ("/metrics", &["POST", "DELETE"]),
        ("/api/sessions", &["POST", "DELETE"]),
        ("/api/sessions/create", &["GET", "PUT", "DELETE"]),
        ("/api/sessions/cleanup", &["GET", "DELETE"]),
        ("/api/sessions/some-code", &["POST", "PUT", "PATCH"]),
        ("/api/metadata", &["POST"]),
        ("/api/trials", &["POST"]),
        ("/api/trials/1", &["DELETE"]),
        ("/api/stats", &["POST"]),
        ("/api/control/x/pause", &["GET", "DELETE"]),
        ("/api/control/x/seek", &["GET", "PUT"]),
        ("/api/control/x/position", &["POST"]),
        ("/stream/x", &["POST", "DELETE"]),
        ("/stream/binary/x", &["PUT"]),
    ] {
        for method in wrong {
            // An answer to HEAD has no body, so no detail to check.
            let expect = if *method == "HEAD" {
                Status(405)
            } else {
                Detail(405)
            };
            c.req(Srv::Open, method, path, &[], None, expect);
        }
    }
    c.req(Srv::Open, "BREW", "/health", &[], None, Detail(405));
    c.req(Srv::Open, "get", "/health", &[], None, Detail(405));
    c.req(
        Srv::Open,
        "OPTIONS",
        "/api/sessions/create",
        &[],
        None,
        Status(204),
    );
    c.req(Srv::Open, "OPTIONS", "/nowhere", &[], None, Detail(404));

    // --- Bodies: size limit and JSON. -----------------------------------------------------------
    let big = vec![b' '; 70 * 1024];
    c.post("/api/sessions/create", Some(&big), Detail(413));
    c.post("/api/control/x/seek", Some(&big), Detail(413));
    let mut big_json = b"{\"custom_code\": \"".to_vec();
    big_json.extend_from_slice(&[b'a'; 70 * 1024]);
    big_json.extend_from_slice(b"\"}");
    c.post("/api/sessions/create", Some(&big_json), Detail(413));
    c.post(
        "/api/sessions/create",
        Some(&vec![b' '; 64 * 1024]),
        Status(200),
    );
    for (name, body) in [
        ("unterminated object", &b"{"[..]),
        ("array", b"[1, 2]"),
        ("null", b"null"),
        ("string", b"\"custom_code\""),
        ("number", b"123"),
        ("true", b"true"),
        ("truncated member", b"{\"custom_code\":"),
        ("trailing comma", b"{\"custom_code\": \"a\",}"),
        ("single quotes", b"{'custom_code': 'a'}"),
        ("two objects", b"{\"a\":1}{\"b\":2}"),
        ("invalid UTF-8", b"{\"custom_code\": \"\xff\xfe\"}"),
        ("NUL bytes", b"\x00\x00\x00"),
        ("UTF-16 BOM", b"\xff\xfe{\x00}\x00"),
        ("lone surrogate escape", b"{\"custom_code\": \"\\ud800\"}"),
        ("form-encoded", b"custom_code=abc"),
        ("XML", b"<custom_code>abc</custom_code>"),
    ] {
        let _ = name;
        c.post("/api/sessions/create", Some(body), Detail(400));
    }
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    c.post("/api/sessions/create", Some(deep.as_bytes()), Detail(400));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    c.post(
        "/api/sessions/create",
        Some(deep_obj.as_bytes()),
        Detail(400),
    );
    c.post("/api/control/x/seek", Some(b"{oops"), Detail(400));
    c.post("/api/control/x/noise", Some(b"[]"), Detail(400));

    // --- custom_code: wrong types and values, by query and by body. ----------------------------
    for (value, expect) in [
        ("5", Detail(400)),
        ("[\"a\"]", Detail(400)),
        ("{\"a\": 1}", Detail(400)),
        ("true", Detail(400)),
        ("\"\"", Detail(400)),
        ("\"a b\"", Detail(400)),
        ("\"a/b\"", Detail(400)),
        ("\"..\"", Detail(400)),
        ("\"caf\u{e9}\"", Detail(400)),
        ("\"tab\\there\"", Detail(400)),
        ("\"new\\nline\"", Detail(400)),
        ("\"<script>\"", Detail(400)),
    ] {
        let body = format!("{{\"custom_code\": {value}}}");
        c.post("/api/sessions/create", Some(body.as_bytes()), expect);
    }
    let long = format!("{{\"custom_code\": \"{}\"}}", "x".repeat(65));
    c.post("/api/sessions/create", Some(long.as_bytes()), Detail(400));
    let ok64 = format!("{{\"custom_code\": \"{}\"}}", "y".repeat(64));
    c.post("/api/sessions/create", Some(ok64.as_bytes()), Status(200));
    c.post(
        "/api/sessions/create",
        Some(b"{\"custom_code\": null}"),
        Status(200),
    );
    for query in [
        "custom_code=",
        "custom_code=a%20b",
        "custom_code=a+b",
        "custom_code=%2e%2e",
        "custom_code=..%2F..",
        "custom_code=%ff%fe",
        "custom_code=%c3%a9",
        "custom_code=%00",
        "custom_code=%0d%0aX-Injected:%201",
        "custom_code=a%2Fb",
        "custom_code=%",
        "custom_code=%zz",
    ] {
        c.post(&format!("/api/sessions/create?{query}"), None, Detail(400));
    }
    c.post(
        &format!("/api/sessions/create?custom_code={}", "z".repeat(65)),
        None,
        Detail(400),
    );
    c.post(
        &format!("/api/sessions/create?custom_code={}", "q".repeat(100_000)),
        None,
        Status(431), // the request line alone is over the 64 KiB head limit
    );
    c.post(
        "/api/sessions/create?custom_code=dup-code",
        None,
        Status(200),
    );
    c.post("/api/sessions/create?noise=loud", None, Detail(400));
    c.post(
        "/api/sessions/create",
        Some(b"{\"noise\": {\"dropout\": 7}}"),
        Detail(400),
    );
    c.post(
        "/api/sessions/create",
        Some(b"{\"noise\": {\"unknown_field\": 1}}"),
        Detail(400),
    );
    c.post("/api/sessions/create", Some(b"{\"noise\": 5}"), Detail(400));

    // --- Session codes outside [A-Za-z0-9_-]{1,64} on every route that takes one. -------------
    let long_code = "c".repeat(65);
    let bad_codes: Vec<String> = vec![
        "a%20b".into(),
        "%2e%2e".into(),
        "..".into(),
        "a.b".into(),
        "a@b".into(),
        "caf%C3%A9".into(),
        long_code.clone(),
        "a+b".into(),
        "~root".into(),
    ];
    for code in &bad_codes {
        c.get(&format!("/api/sessions/{code}"), Detail(400));
        c.req(
            Srv::Open,
            "DELETE",
            &format!("/api/sessions/{code}"),
            &[],
            None,
            Detail(400),
        );
        c.post(&format!("/api/control/{code}/pause"), None, Detail(400));
        c.get(&format!("/api/control/{code}/position"), Detail(400));
        c.upgrade(&format!("/stream/{code}"), &upgrade_headers(), Detail(400));
    }
    c.post(
        &format!("/api/control/{long_code}/seek?packet_id=1"),
        None,
        Detail(400),
    );
    c.upgrade(
        &format!("/stream/binary/{long_code}"),
        &upgrade_headers(),
        Detail(400),
    );
    c.get("/metrics?session=a.b", Detail(400));
    c.get("/api/sessions/no-such-session", Detail(404));
    c.req(
        Srv::Open,
        "DELETE",
        "/api/sessions/no-such-session",
        &[],
        None,
        Detail(404),
    );
    c.post("/api/control/no-such-session/resume", None, Detail(404));
    c.get("/api/control/no-such-session/position", Detail(404));
    c.get("/metrics?session=no-such-session", Detail(404));
    c.get("/metrics?format=xml", Detail(400));
    c.get("/metrics?format=", Detail(400));

    // --- Seek: wrong types, out of range, both or neither. -------------------------------------
    for query in [
        "",
        "position_seconds=abc",
        "position_seconds=",
        "position_seconds=-1",
        "position_seconds=-0.0001",
        "position_seconds=NaN",
        "position_seconds=nan",
        "position_seconds=inf",
        "position_seconds=-inf",
        "position_seconds=infinity",
        "position_seconds=1e308",
        "position_seconds=1e400",
        "position_seconds=0x10",
        "position_seconds=1,5",
        "position_seconds=294",
        "position_seconds=100000",
        "packet_id=abc",
        "packet_id=",
        "packet_id=-1",
        "packet_id=1.5",
        "packet_id=1e3",
        "packet_id=11748",
        "packet_id=4294967295",
        "packet_id=4294967296",
        "packet_id=99999999999999999999999",
        "packet_id=%00",
        "packet_id=1&position_seconds=1",
    ] {
        c.post(
            &format!("/api/control/corpus-seek/seek?{query}"),
            None,
            Detail(400),
        );
    }
    for body in [
        &br#"{"packet_id": "12"}"#[..],
        br#"{"packet_id": 1.5}"#,
        br#"{"packet_id": -3}"#,
        br#"{"packet_id": 1e2}"#,
        br#"{"packet_id": [1]}"#,
        br#"{"packet_id": true}"#,
        br#"{"packet_id": 18446744073709551616}"#,
        br#"{"position_seconds": "1.5"}"#,
        br#"{"position_seconds": true}"#,
        br#"{"position_seconds": null}"#,
        br#"{"position_seconds": {}}"#,
        br#"{"position_seconds": 1e999}"#,
        br#"{"position_seconds": -5}"#,
        br#"{}"#,
    ] {
        c.post("/api/control/corpus-seek/seek", Some(body), Detail(400));
    }
    c.post(
        "/api/control/corpus-seek/seek?packet_id=11747",
        None,
        Status(200),
    );
    c.post(
        "/api/control/corpus-seek/seek?position_seconds=0",
        None,
        Status(200),
    );
    c.post(
        "/api/control/corpus-seek/seek",
        Some(br#"{"packet_id": 42}"#),
        Status(200),
    );

    // --- Trial and target ids in paths. ---------------------------------------------------------
    for id in [
        "abc",
        "-1",
        "1.5",
        "99999999999",
        "%31",
        "1e3",
        "%201",
        "0x1",
        "1_000",
    ] {
        c.get(&format!("/api/trials/{id}"), Detail(400));
        c.get(&format!("/api/trials/by-target/{id}"), Detail(400));
    }
    // Non-ASCII bytes in the request line: tiny_http closes the connection without answering.
    c.get("/api/trials/٣", ClosedOr(&[400]));
    // Rust's integer parser takes a leading `+`: trial 1, harmless.
    c.get("/api/trials/+1", Status(200));
    // A space ends the request target: tiny_http's own 400 (no JSON), then it closes.
    c.get("/api/trials/ 1", ClosedOr(&[400]));
    c.get("/api/trials/100000", Detail(404));

    // --- Stream query parameters, refused before the upgrade. -----------------------------------
    for query in [
        "trial_id=abc",
        "trial_id=-1",
        "trial_id=1.5",
        "trial_id=",
        "trial_id=99999",
        "trial_id=4294967296",
        "target_id=abc",
        "target_id=999",
        "target_id=NaN",
        "trial_id=1&target_id=1",
    ] {
        c.upgrade(
            &format!("/stream/corpus-filter?{query}"),
            &upgrade_headers(),
            Detail(400),
        );
    }

    // --- WebSocket handshakes with missing or invalid headers. ---------------------------------
    c.upgrade("/stream/corpus-hs", &[], Detail(426));
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_without("Upgrade"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Upgrade", "h2c"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_without("Connection"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Connection", "keep-alive"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_without("Sec-WebSocket-Version"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Sec-WebSocket-Version", "8"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Sec-WebSocket-Version", "13, 8"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Sec-WebSocket-Version", "abc"),
        Detail(426),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_without("Sec-WebSocket-Key"),
        Detail(400),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Sec-WebSocket-Key", " "),
        Detail(400),
    );
    c.upgrade(
        "/stream/binary/corpus-hs",
        &upgrade_without("Sec-WebSocket-Key"),
        Detail(400),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Upgrade", "WebSocket"),
        Status(101),
    );
    c.upgrade(
        "/stream/corpus-hs",
        &upgrade_with("Connection", "keep-alive, Upgrade"),
        Status(101),
    );
    // An upgrade asked of a REST endpoint is answered as a plain request, at once (it used to
    // hold an HTTP worker until the idle reaper cut the connection).
    c.upgrade("/health", &upgrade_headers(), Status(200));
    c.upgrade("/api/stats", &upgrade_headers(), Status(200));
    c.upgrade(
        "/health",
        &[
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        Status(200),
    );
    c.req(
        Srv::Open,
        "POST",
        "/api/sessions/create",
        &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
        None,
        Status(200),
    );
    c.req(
        Srv::Open,
        "POST",
        "/api/control/corpus-seek/seek?packet_id=5",
        &[("Connection", "upgrade"), ("Upgrade", "websocket")],
        None,
        Status(200),
    );
    c.req(
        Srv::Open,
        "POST",
        "/stream/corpus-hs",
        &upgrade_headers(),
        None,
        Detail(405),
    );

    // --- After the upgrade: frames the server must refuse, and harmless ones. ------------------
    c.ws(
        "unmasked text",
        frame(true, 0, 0x1, b"hi", false),
        WsClose(1002),
    );
    c.ws(
        "unmasked binary",
        frame(true, 0, 0x2, b"hi", false),
        WsClose(1002),
    );
    c.ws(
        "invalid UTF-8 text",
        text(&[0xff, 0xfe, 0xfd]),
        WsClose(1002),
    );
    c.ws(
        "overlong UTF-8 encoding",
        text(&[0xc0, 0xaf]),
        WsClose(1002),
    );
    c.ws(
        "UTF-16 surrogate in UTF-8",
        text(&[0xed, 0xa0, 0x80]),
        WsClose(1002),
    );
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        c.ws(
            &format!("reserved opcode {opcode:#x}"),
            frame(true, 0, opcode, b"x", true),
            WsClose(1002),
        );
    }
    for rsv in [1, 2, 4, 7] {
        c.ws(
            &format!("RSV bits {rsv:#b} without an extension"),
            frame(true, rsv, 0x1, b"x", true),
            WsClose(1002),
        );
    }
    c.ws(
        "fragmented ping",
        frame(false, 0, 0x9, b"p", true),
        WsClose(1002),
    );
    c.ws(
        "ping with 126-byte payload",
        frame(true, 0, 0x9, &[0; 126], true),
        WsClose(1002),
    );
    c.ws(
        "continuation without a start",
        frame(true, 0, 0x0, b"x", true),
        WsClose(1002),
    );
    c.ws(
        "new message inside a fragmented one",
        [
            frame(false, 0, 0x1, b"a", true),
            frame(true, 0, 0x1, b"b", true),
        ]
        .concat(),
        WsClose(1002),
    );
    c.ws(
        "close with a 1-byte payload",
        frame(true, 0, 0x8, b"x", true),
        WsClose(1002),
    );
    c.ws("close with code 999", close_frame(999, b""), WsClose(1002));
    c.ws(
        "close with reserved code 1005",
        close_frame(1005, b""),
        WsClose(1002),
    );
    c.ws(
        "close with code 5000",
        close_frame(5000, b""),
        WsClose(1002),
    );
    c.ws(
        "close with invalid UTF-8 reason",
        close_frame(1000, &[0xff]),
        WsClose(1002),
    );
    c.ws("raw 0xff bytes", vec![0xff; 32], WsClose(1002));
    c.ws(
        "70 KiB text message",
        text(&vec![b'x'; 70 * 1024]),
        WsClose(1009),
    );
    c.ws(
        "70 KiB binary in 10 fragments",
        (0..10)
            .map(|i| {
                frame(
                    i == 9,
                    0,
                    if i == 0 { 0x2 } else { 0x0 },
                    &[1; 7 * 1024],
                    true,
                )
            })
            .collect::<Vec<_>>()
            .concat(),
        WsClose(1009),
    );
    c.ws(
        "frame header claiming 2^62 bytes",
        {
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&(1u64 << 62).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f
        },
        WsClose(1009),
    );
    c.ws("hello text", text(b"hello"), WsStreams);
    c.ws(
        "unknown JSON command",
        text(br#"{"type": "nonsense", "x": [1,2,3]}"#),
        WsStreams,
    );
    c.ws(
        "binary junk",
        frame(true, 0, 0x2, &[0, 1, 2, 255], true),
        WsStreams,
    );
    c.ws("empty text", text(b""), WsStreams);
    c.ws(
        "unsolicited pong",
        frame(true, 0, 0xa, b"pong", true),
        WsStreams,
    );
    c.ws(
        "64 KiB message (the limit)",
        text(&vec![b'y'; 64 * 1024]),
        WsStreams,
    );
    c.ws(
        "fragmented text, valid",
        [
            frame(false, 0, 0x1, b"hel", true),
            frame(true, 0, 0x0, b"lo", true),
        ]
        .concat(),
        WsStreams,
    );
    c.ws(
        "normal close 1000",
        close_frame(1000, b"bye"),
        WsClose(1000),
    );
    c.ws("going away 1001", close_frame(1001, b""), WsClose(1001));

    // --- Tokens on the token server. ------------------------------------------------------------
    let bearer = format!("Bearer {TOKEN}");
    let bearer: &'static str = Box::leak(bearer.into_boxed_str());
    for (method, path) in [
        ("POST", "/api/sessions/create"),
        ("POST", "/api/sessions/cleanup"),
        ("DELETE", "/api/sessions/tok"),
        ("POST", "/api/control/tok/pause"),
        ("POST", "/api/control/tok/seek?packet_id=1"),
    ] {
        c.req(Srv::Token, method, path, &[], None, Detail(401));
        c.req(
            Srv::Token,
            method,
            path,
            &[("Authorization", "Bearer wrong")],
            None,
            Detail(401),
        );
        c.req(
            Srv::Token,
            method,
            path,
            &[("Authorization", TOKEN)],
            None,
            Detail(401),
        );
        c.req(
            Srv::Token,
            method,
            path,
            &[("Authorization", "Basic czNjcmV0")],
            None,
            Detail(401),
        );
    }
    // Session `tok` itself is created before the corpus runs: cases run eight at a time, so a
    // case here cannot rely on another having run first.
    c.req(
        Srv::Token,
        "POST",
        "/api/sessions/create?custom_code=tok-created",
        &[("Authorization", bearer)],
        None,
        Status(200),
    );
    c.req(
        Srv::Token,
        "GET",
        "/api/sessions/tok",
        &[],
        None,
        Status(200),
    );
    c.req(
        Srv::Token,
        "GET",
        "/stream/tok",
        &upgrade_headers(),
        None,
        Detail(401),
    );
    c.req(
        Srv::Token,
        "GET",
        "/stream/tok?token=wrong",
        &upgrade_headers(),
        None,
        Detail(401),
    );
    c.req(
        Srv::Token,
        "GET",
        &format!("/stream/tok?token={}", "t".repeat(5000)),
        &upgrade_headers(),
        None,
        Detail(401),
    );
    c.req(
        Srv::Token,
        "GET",
        &format!("/stream/tok?token={TOKEN}"),
        &upgrade_headers(),
        None,
        Status(101),
    );

    // --- Connections that never finish: the reaper closes them. --------------------------------
    c.add(
        "connect and send nothing",
        Srv::Open,
        Input::Stall(Vec::new()),
        Reaped,
    );
    c.add(
        "half a request line",
        Srv::Open,
        Input::Stall(b"GET /hea".to_vec()),
        Reaped,
    );
    c.add(
        "headers never finished",
        Srv::Open,
        Input::Stall(b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec()),
        Reaped,
    );
    c.add(
        "WebSocket handshake never finished",
        Srv::Open,
        Input::Stall(
            b"GET /stream/corpus-slow HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                .to_vec(),
        ),
        Reaped,
    );
    c.add(
        "body never sent",
        Srv::Open,
        Input::Stall(
            b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{".to_vec(),
        ),
        Reaped,
    );
    c.add(
        "chunked body never finished",
        Srv::Open,
        Input::Stall(
            b"POST /api/sessions/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"
                .to_vec(),
        ),
        Reaped,
    );
    c.add(
        "idle keep-alive after a request",
        Srv::Open,
        Input::Stall(b"GET /health HTTP/1.1\r\n\r\n".to_vec()),
        Reaped,
    );
    c.add(
        "slowloris request line",
        Srv::Open,
        Input::Trickle(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
                .to_vec(),
        ),
        Reaped,
    );
    c.add(
        "slowloris body",
        Srv::Open,
        Input::Trickle(
            b"POST /api/sessions/create HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"custom_code\": \"slowloris-body-code\"}"
                .to_vec(),
        ),
        Reaped,
    );

    c.0
}

// ---------------------------------------------------------------------------------------------
// Running a case

#[derive(Debug)]
enum Outcome {
    Response { status: u16, body: Vec<u8> },
    Closed,
    StillOpen,
    WsClosed(Option<u16>),
    WsStreaming(usize),
    Failed(#[allow(dead_code)] String),
}

fn read_answer(stream: &mut TcpStream, head_request: bool) -> Outcome {
    let (status, headers) = match read_head(stream) {
        Ok(head) => head,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Outcome::Closed,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Outcome::Closed,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Outcome::StillOpen
        }
        Err(e) => return Outcome::Failed(format!("reading the answer: {e}")),
    };
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    // No body follows a 204, or any answer to HEAD, whatever Content-Length says.
    if status == 204 || head_request {
        return Outcome::Response { status, body };
    }
    if let Some(length) = length {
        body.resize(length, 0);
        if let Err(e) = stream.read_exact(&mut body) {
            return Outcome::Failed(format!("status {status}, body cut: {e}"));
        }
    } else if !(status == 101 || status == 100 || status == 204 || head_request) {
        let _ = stream.take(1 << 20).read_to_end(&mut body);
    }
    Outcome::Response { status, body }
}

/// Waits until the server closes `stream`; returns whether it did within `within`, and what
/// it had sent before.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (true, seen),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, seen),
        }
    }
    (false, seen)
}

fn run(case: &Case, addr: SocketAddr) -> Outcome {
    match &case.input {
        Input::Raw(bytes) | Input::RawThenEof(bytes) => {
            let mut stream = connect_tcp(addr);
            let _ = stream.write_all(bytes);
            if matches!(case.input, Input::RawThenEof(_)) {
                let _ = stream.shutdown(Shutdown::Write);
            }
            if matches!(case.expect, Expect::Reaped) {
                let (closed, seen) = wait_closed(&mut stream, REAP_WITHIN);
                return reaped_outcome(closed, &seen);
            }
            read_answer(&mut stream, false)
        }
        Input::Request {
            method,
            path,
            headers,
            body,
        } => {
            let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
            let upgrade = headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("Upgrade"));
            if !upgrade {
                raw.push_str("Connection: close\r\n");
            }
            for (k, v) in headers {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            if let Some(body) = body {
                raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            raw.push_str("\r\n");
            let mut bytes = raw.into_bytes();
            bytes.extend_from_slice(body.as_deref().unwrap_or_default());
            let mut stream = connect_tcp(addr);
            let _ = stream.write_all(&bytes);
            read_answer(&mut stream, method == "HEAD")
        }
        Input::Ws { path, send } => {
            let mut client = match WsClient::connect(addr, path) {
                Ok(client) => client,
                Err(e) => return Outcome::Failed(format!("upgrade failed: {e}")),
            };
            client.metadata();
            if let Err(e) = client.ws.get_mut().write_all(send) {
                return Outcome::Failed(format!("send failed: {e}"));
            }
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut packets = 0;
            while Instant::now() < deadline {
                match client.read(Duration::from_millis(200)) {
                    Ok(Some(Received::Close(frame))) => {
                        return Outcome::WsClosed(frame.map(|(code, _)| code))
                    }
                    Ok(Some(Received::Text(_) | Received::Binary(_))) => {
                        packets += 1;
                        if packets >= 20 && matches!(case.expect, Expect::WsStreams) {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Outcome::Failed(format!(
                            "connection ended without a close frame: {e}"
                        ))
                    }
                }
            }
            let _ = client.ws.close(None);
            Outcome::WsStreaming(packets)
        }
        Input::Stall(bytes) => {
            let mut stream = connect_tcp(addr);
            let _ = stream.write_all(bytes);
            let (closed, seen) = wait_closed(&mut stream, REAP_WITHIN);
            reaped_outcome(closed, &seen)
        }
        Input::Trickle(bytes) => {
            let mut stream = connect_tcp(addr);
            let started = Instant::now();
            let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
            for byte in bytes {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
                let mut probe = [0u8; 1];
                match stream.read(&mut probe) {
                    Ok(0) => return Outcome::Closed,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Ok(_) => return Outcome::Failed("the trickled request was answered".into()),
                    Err(_) => return Outcome::Closed,
                }
                if started.elapsed() > REAP_WITHIN + Duration::from_secs(2) {
                    return Outcome::StillOpen;
                }
            }
            let (closed, seen) = wait_closed(&mut stream, REAP_WITHIN);
            reaped_outcome(closed, &seen)
        }
    }
}

fn reaped_outcome(closed: bool, seen: &[u8]) -> Outcome {
    if !closed {
        return Outcome::StillOpen;
    }
    // An idle keep-alive connection saw its one answer before being closed: that is fine, as
    // long as nothing after it was answered.
    if seen.starts_with(b"HTTP/1.1 2")
        && !seen.ends_with(b"\r\n\r\n")
        && seen.windows(5).filter(|w| w == b"HTTP/").count() > 1
    {
        return Outcome::Failed("more than one answer on a stalled connection".into());
    }
    Outcome::Closed
}

fn check(case: &Case, outcome: &Outcome) -> Result<(), String> {
    use Expect::*;
    let detail_ok = |body: &[u8]| -> Result<(), String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            format!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(body)
            )
        })?;
        match value["detail"].as_str() {
            Some(d) if d.len() > 5 => Ok(()),
            _ => Err(format!("no useful detail: {value}")),
        }
    };
    match (&case.expect, outcome) {
        (Detail(want), Outcome::Response { status, body }) if status == want => detail_ok(body),
        (Status(want), Outcome::Response { status, .. }) if status == want => Ok(()),
        (AnyOf(want), Outcome::Response { status, .. }) if want.contains(status) => Ok(()),
        (ClosedOr(_), Outcome::Closed) => Ok(()),
        (ClosedOr(want), Outcome::Response { status, .. }) if want.contains(status) => Ok(()),
        (WsClose(want), Outcome::WsClosed(Some(code))) if code == want => Ok(()),
        (WsStreams, Outcome::WsStreaming(n)) if *n >= 10 => Ok(()),
        (Reaped, Outcome::Closed) => Ok(()),
        (_, Outcome::Response { status, body }) => Err(format!(
            "expected {:?}, got status {status}: {}",
            case.expect,
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
        (_, other) => Err(format!("expected {:?}, got {other:?}", case.expect)),
    }
}

// ---------------------------------------------------------------------------------------------
// The test

fn process_threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn process_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

type CaseResult = (usize, Result<(), String>, bool, Duration);

/// Runs case `i` against its server and records the verdict, whether a panic happened
/// meanwhile, and how long it took.
fn run_one(
    case: &Case,
    i: usize,
    open: SocketAddr,
    token: SocketAddr,
    results: &Mutex<Vec<CaseResult>>,
) {
    let addr = match case.srv {
        Srv::Open => open,
        Srv::Token => token,
    };
    let panics_before = PANICS.load(Relaxed);
    let started = Instant::now();
    let outcome = run(case, addr);
    let verdict = check(case, &outcome);
    let panicked = PANICS.load(Relaxed) != panics_before;
    results
        .lock()
        .unwrap()
        .push((i, verdict, panicked, started.elapsed()));
}

#[test]
fn the_bad_input_corpus_gets_clear_answers_and_no_panics() {
    install_panic_counter();
    let open = TestServer::with(|_, network| network.http_idle_timeout = IDLE);
    let token = TestServer::with(|_, network| {
        network.http_idle_timeout = IDLE;
        network.api_token = Some(TOKEN.into());
        network.stream_token = true;
    });
    // Warm both up (dataset, worker threads) before measuring threads and descriptors.
    open.get("/health").ok_json();
    token.get("/health").ok_json();
    let threads_before = process_threads();
    let fds_before = process_fds();

    open.post("/api/sessions/create?custom_code=corpus-seek")
        .ok_json();
    let bearer = format!("Bearer {TOKEN}");
    token
        .request(
            "POST",
            "/api/sessions/create?custom_code=tok",
            None,
            &[("Authorization", bearer.as_str())],
        )
        .ok_json();
    let sessions_before = open.registry().sessions().len() + token.registry().sessions().len();
    // CORPUS_FILTER=text runs only the cases whose name contains it (for debugging).
    let filter = std::env::var("CORPUS_FILTER").ok();
    let all = corpus();
    let total = all.len();
    let cases: Vec<Case> = all
        .into_iter()
        .filter(|c| filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .collect();
    let cases = Arc::new(cases);
    assert!(total >= 200, "only {total} cases");
    let started = Instant::now();
    let results: Arc<Mutex<Vec<CaseResult>>> = Arc::new(Mutex::new(Vec::new()));
    // Quick cases first, 8 at a time; then every case that waits for the idle reaper, all at
    // once. Those hold connections (some of them an HTTP worker, blocked reading a body that
    // never comes) for the whole idle limit, and a complete request queued behind four of
    // them for longer than the limit would itself be reaped (see docs/OPERATIONS.md).
    let slow = |c: &Case| matches!(c.expect, Expect::Reaped);
    let quick: Vec<usize> = (0..cases.len()).filter(|&i| !slow(&cases[i])).collect();
    let waiting: Vec<usize> = (0..cases.len()).filter(|&i| slow(&cases[i])).collect();
    for (phase, parallel) in [(quick, PARALLEL), (waiting.clone(), waiting.len().max(1))] {
        let phase = Arc::new(phase);
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..parallel)
            .map(|_| {
                let (cases, next, results) =
                    (Arc::clone(&cases), Arc::clone(&next), Arc::clone(&results));
                let phase = Arc::clone(&phase);
                let (open_addr, token_addr) = (open.addr, token.addr);
                std::thread::spawn(move || {
                    while let Some(&i) = phase.get(next.fetch_add(1, Relaxed)) {
                        run_one(&cases[i], i, open_addr, token_addr, &results);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("corpus worker");
        }
    }
    let took = started.elapsed();
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|r| r.0);

    let durations: Vec<(usize, Duration)> = results.iter().map(|r| (r.0, r.3)).collect();
    let results_took = |i: usize| durations.iter().find(|d| d.0 == i).map(|d| d.1);
    let mut report = String::new();
    let mut failed = 0;
    for (i, verdict, panicked, _) in &results {
        let case = &cases[*i];
        if let Err(why) = verdict {
            failed += 1;
            let _ = writeln!(
                report,
                "  #{i} [{:?}] {} ({:?}): {why}",
                case.srv,
                case.name,
                results_took(*i)
            );
        } else if *panicked {
            let _ = writeln!(
                report,
                "  #{i} [{:?}] {}: a panic happened meanwhile",
                case.srv, case.name
            );
        }
    }
    let slowest = results
        .iter()
        .max_by_key(|r| r.3)
        .map(|r| (&cases[r.0].name, r.3));
    eprintln!(
        "bad-input corpus: {} cases in {took:?} ({PARALLEL} at a time), {failed} failed; slowest {slowest:?}",
        cases.len()
    );

    // After the corpus: still serving, nothing left behind.
    for server in [&open, &token] {
        assert_eq!(server.get("/health").ok_json()["status"], "healthy");
    }
    let mut client = open.ws("/stream/after-corpus");
    client.metadata();
    let packets = client.data_n(10, Duration::from_secs(3));
    assert_contiguous(&packets, "stream after the corpus");
    let _ = client.close_handshake(1000);
    drop(client);
    let drained = wait_until(Duration::from_secs(10), || {
        open.registry().live_clients() == 0 && token.registry().live_clients() == 0
    });
    // Each session the corpus created has its timing thread; nothing else may remain.
    let sessions_created =
        open.registry().sessions().len() + token.registry().sessions().len() - sessions_before;
    let settled = wait_until(Duration::from_secs(15), || {
        // Descriptors: a couple of connections shut down by the reaper can stay open (no
        // peer) a while longer inside tiny_http; the soak watches descriptors over time.
        process_threads() <= threads_before + sessions_created + 2
            && process_fds() <= fds_before + 6
    });
    if !settled || process_fds() > fds_before + 2 {
        let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        eprintln!("descriptors now: {fds:?}");
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // SAFETY: only borrowed for getsockname/getpeername while the fd is listed.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&borrowed);
            if let (Ok(l), p) = (sock.local_addr(), sock.peer_addr()) {
                eprintln!(
                    "fd {fd}: local {:?} peer {:?}",
                    l.as_socket(),
                    p.ok().and_then(|p| p.as_socket())
                );
            }
        }
        eprintln!("servers: open {} token {}", open.addr, token.addr);
    }
    eprintln!(
        "threads {threads_before} -> {} ({sessions_created} sessions created), descriptors {fds_before} -> {}",
        process_threads(),
        process_fds()
    );

    let panics = PANICS.load(Relaxed);
    let messages = PANIC_MESSAGES
        .lock()
        .map(|m| m.join("\n"))
        .unwrap_or_default();
    assert!(
        failed == 0 && panics == 0,
        "{failed} of {} cases failed, {panics} panic(s):\n{report}{messages}",
        cases.len()
    );
    assert!(drained, "clients still registered after the corpus");
    assert!(
        settled,
        "threads or descriptors did not come back: threads {threads_before} -> {}, fds {fds_before} -> {}",
        process_threads(),
        process_fds()
    );
}
