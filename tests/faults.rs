//! Fault isolation: while 100 well-behaved clients stream from four sessions, five kinds of
//! misbehaving client do their worst at the same time —
//!
//! (a) one stops reading (closed 1008 after the stall timeout, counted as stalled),
//! (b) one half-closes its side (closed 1002: it left without a close handshake),
//! (c) several send garbage: unmasked frames, invalid UTF-8, reserved opcodes, RSV bits,
//!     an oversized message (closed 1002, or 1009 for the big one, each counted),
//! (d) one connects and disconnects 100 times a second for 2 s (no ghost clients left),
//! (e) two flood the control and read endpoints for 3 s (every answer a proper status) —
//!
//! and no good client sees a single sequence gap, none has a packet dropped in `/metrics`, and
//! the server keeps serving. Latency percentiles before and during the faults are printed, not
//! asserted: on a shared 2-core machine they measure the neighbours as much as the server.
//!
//! Scale: 100 good clients (25 per session, half JSON, half MessagePack) is what the issue
//! asks for; with every client a writer and a reader thread on the server and a reader thread
//! here, that is ~450 threads on 2 cores, comfortably within what the test machine does while
//! other builds run. Every loop is bounded in count and time; every address is 127.0.0.1.

mod common;

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use serde_json::Value;
use tungstenite::Message;

const SESSIONS: usize = 4;
const GOOD_PER_SESSION: usize = 25;
const STALL: Duration = Duration::from_secs(3);
const BASELINE: Duration = Duration::from_secs(3);
const AFTER_FAULTS: Duration = Duration::from_secs(2);

fn session(k: usize) -> String {
    format!("good-{k}")
}

// ---------------------------------------------------------------------------------------------
// Good clients

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: Option<SeqOnly>,
}

#[derive(Deserialize)]
struct SeqOnly {
    sequence_number: Option<u64>,
}

#[derive(Debug, Default)]
struct GoodStats {
    path: String,
    local: Option<SocketAddr>,
    packets: u64,
    first: Option<u64>,
    last: Option<u64>,
    gaps: u64,
    backwards: u64,
    error: Option<String>,
    elapsed: Duration,
}

/// Reads until `stop`, checking that sequence numbers rise by exactly one.
fn good_client(mut client: WsClient, stop: Arc<AtomicBool>) -> JoinHandle<GoodStats> {
    std::thread::spawn(move || {
        let mut stats = GoodStats {
            path: client.path.clone(),
            local: Some(client.local_addr()),
            ..GoodStats::default()
        };
        let started = Instant::now();
        let _ = client
            .ws
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)));
        // Bounded: the test stops it long before, this is only a backstop.
        while !stop.load(Relaxed) && started.elapsed() < Duration::from_secs(90) {
            let message = match client.ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    stats.error = Some(format!("read failed: {e}"));
                    break;
                }
            };
            let envelope: Result<Envelope, String> = match &message {
                Message::Text(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
                Message::Binary(bytes) => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
                Message::Close(frame) => {
                    stats.error = Some(format!("closed by the server: {frame:?}"));
                    break;
                }
                _ => continue,
            };
            let envelope = match envelope {
                Ok(envelope) => envelope,
                Err(e) => {
                    stats.error = Some(format!("undecodable message: {e}"));
                    break;
                }
            };
            if envelope.kind != "data" {
                continue;
            }
            let Some(seq) = envelope.data.and_then(|d| d.sequence_number) else {
                stats.error = Some("data message without sequence_number".into());
                break;
            };
            stats.packets += 1;
            match stats.last {
                Some(last) if seq > last + 1 => stats.gaps += seq - last - 1,
                Some(last) if seq <= last => stats.backwards += 1,
                _ => {}
            }
            stats.first.get_or_insert(seq);
            stats.last = Some(seq);
        }
        stats.elapsed = started.elapsed();
        let _ = client.ws.close(None);
        stats
    })
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket helpers for the faulty clients

/// How a raw connection ended, as the client saw it.
#[derive(Debug)]
struct Ending {
    data_frames: usize,
    close_code: Option<u16>,
    how: RawEnd,
}

/// Reads server frames until the connection ends or `within` passes.
fn read_until_end(stream: &mut TcpStream, within: Duration) -> Ending {
    let (bytes, how) = read_raw_until_end(stream, within, Duration::from_millis(200));
    let mut ending = Ending {
        data_frames: 0,
        close_code: None,
        how,
    };
    for (opcode, payload) in server_frames(&bytes) {
        match opcode {
            0x1 | 0x2 => ending.data_frames += 1,
            0x8 => ending.close_code = close_code(payload).or(ending.close_code),
            _ => {}
        }
    }
    ending
}

/// Sends `bytes` after the handshake and returns the close code the server answers with.
fn garbage_client(addr: SocketAddr, path: &str, bytes: &[u8]) -> Option<u16> {
    let mut client = WsClient::connect(addr, path).expect("garbage client connects");
    client.metadata();
    client.ws.get_mut().write_all(bytes).expect("garbage sent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match client.read(Duration::from_millis(200)) {
            Ok(Some(Received::Close(frame))) => return frame.map(|(code, _)| code),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn client_metrics<'a>(metrics: &'a Value, code: &str, remote: SocketAddr) -> Option<&'a Value> {
    metrics["metrics"]["sessions"][code]["clients"]
        .as_array()?
        .iter()
        .find(|c| c["remote"] == remote.to_string())
}

fn p99s(metrics: &Value) -> Vec<(String, f64)> {
    (0..SESSIONS)
        .map(|k| {
            let code = session(k);
            let p99 = metrics["metrics"]["sessions"][&code]["network_latency_ms"]["p99"]
                .as_f64()
                .unwrap_or(f64::NAN);
            (code, p99)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn misbehaving_clients_cost_the_others_nothing() {
    let server = TestServer::with(|engine, _| {
        engine.stall_timeout = STALL;
        engine.max_clients_per_session = 512;
        // 6.4 s of buffer per client instead of 1.6 s: the property under test is isolation,
        // and on a shared 2-core machine a neighbour's build can starve a good client's
        // writer (or this test's reader) for more than 1.6 s. A stalled client is still closed
        // after STALL: its blocked write times out first.
        engine.ring_capacity = 256;
    });
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // 100 good clients, 25 per session, alternating JSON and MessagePack.
    let mut good = Vec::new();
    for k in 0..SESSIONS {
        for i in 0..GOOD_PER_SESSION {
            let path = if i % 2 == 0 {
                format!("/stream/{}", session(k))
            } else {
                format!("/stream/binary/{}", session(k))
            };
            let mut client = server.ws(&path);
            client.metadata();
            good.push(good_client(client, Arc::clone(&stop)));
        }
    }
    // A client of the session the control flood targets: its timeline is paused and seeked
    // all over, but its sequence numbers must still rise by one.
    server
        .post("/api/sessions/create?custom_code=flood")
        .ok_json();
    let mut flooded = server.ws("/stream/flood");
    flooded.metadata();
    let flooded = good_client(flooded, Arc::clone(&stop));
    for k in 0..SESSIONS {
        server.wait_for_clients(&session(k), GOOD_PER_SESSION as u64, IO_TIMEOUT);
    }
    std::thread::sleep(BASELINE);
    let baseline = server.metrics();
    let opened_before = baseline["metrics"]["connections_opened"].as_u64().unwrap();
    let faults_started = Instant::now();

    // (a) stops reading, on session good-0.
    let stalled = std::thread::spawn(move || {
        let mut stream = raw_upgrade(addr, &format!("/stream/{}", session(0)), Some(4096));
        let connected = Instant::now();
        // Never read until the server has given up on it (its ring full, or a write blocked,
        // for the stall timeout), bounded at 30 s.
        let mut gone = false;
        while connected.elapsed() < Duration::from_secs(30) && !gone {
            std::thread::sleep(Duration::from_millis(250));
            let metrics = http(addr, "GET", "/metrics?session=good-0", None, &[]).json();
            gone = metrics["metrics"]["sessions"]["good-0"]["clients_stalled"] == 1;
        }
        let closed_after = connected.elapsed();
        (
            gone,
            closed_after,
            read_until_end(&mut stream, Duration::from_secs(10)),
        )
    });

    // (b) half-closes, on session good-1: it can still read what the server says.
    let half_closed = std::thread::spawn(move || {
        let mut stream = raw_upgrade(addr, &format!("/stream/{}", session(1)), None);
        std::thread::sleep(Duration::from_millis(300));
        stream.shutdown(Shutdown::Write).unwrap();
        read_until_end(&mut stream, Duration::from_secs(10))
    });

    // (c) garbage, on session good-2, one connection per kind, one after another.
    let garbage = std::thread::spawn(move || {
        let path = format!("/stream/{}", session(2));
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            (
                "unmasked text frame",
                client_frame(true, 0, 0x1, b"hello", false),
                1002,
            ),
            (
                "invalid UTF-8 text",
                client_frame(true, 0, 0x1, &[0xff, 0xfe, 0xfd], true),
                1002,
            ),
            (
                "reserved data opcode 0x3",
                client_frame(true, 0, 0x3, b"x", true),
                1002,
            ),
            (
                "reserved control opcode 0xB",
                client_frame(true, 0, 0xB, b"x", true),
                1002,
            ),
            (
                "RSV1 without an extension",
                client_frame(true, 4, 0x1, b"x", true),
                1002,
            ),
            ("raw 0xff bytes", vec![0xff; 64], 1002),
            (
                "100 KiB message",
                client_frame(true, 0, 0x2, &vec![7u8; 100 * 1024], true),
                1009,
            ),
        ];
        cases
            .into_iter()
            .map(|(name, bytes, want)| (name, want, garbage_client(addr, &path, &bytes)))
            .collect::<Vec<_>>()
    });

    // (d) connects and disconnects 100 times a second for 2 s, on session good-3; every
    // other one drops the connection before even reading the 101.
    let churn = std::thread::spawn(move || {
        let path = format!("/stream/{}", session(3));
        let started = Instant::now();
        let (mut upgraded, mut abandoned, mut failed) = (0u32, 0u32, 0u32);
        for i in 0..200u32 {
            let due = started + Duration::from_millis(10 * u64::from(i));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
                failed += 1;
                continue;
            };
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
            for (name, value) in UPGRADE_HEADERS {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                failed += 1;
                continue;
            }
            if i % 2 == 1 {
                abandoned += 1;
                continue; // dropped at once
            }
            match read_head(&mut stream) {
                Ok((101, _)) => upgraded += 1,
                _ => failed += 1,
            }
        }
        (upgraded, abandoned, failed, started.elapsed())
    });

    // (e) floods control and read endpoints of session "flood" (and a missing one) for 3 s.
    let flooders: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let requests: [(&str, &str); 9] = [
                    ("POST", "/api/control/flood/pause"),
                    ("POST", "/api/control/flood/resume"),
                    ("POST", "/api/control/flood/seek?packet_id=100"),
                    ("POST", "/api/control/flood/seek?position_seconds=12.5"),
                    ("POST", "/api/control/flood/stop"),
                    ("GET", "/api/control/flood/position"),
                    ("POST", "/api/control/missing-session/pause"),
                    ("GET", "/api/sessions"),
                    ("GET", "/metrics"),
                ];
                let started = Instant::now();
                let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
                let mut sent = 0usize;
                while started.elapsed() < Duration::from_secs(3) && sent < 5000 {
                    let (method, path) = requests[(sent + t) % requests.len()];
                    let status = http(addr, method, path, None, &[]).status;
                    *statuses.entry(status).or_default() += 1;
                    sent += 1;
                }
                // Leave the flooded session playing.
                http(addr, "POST", "/api/control/flood/resume", None, &[]);
                (statuses, started.elapsed())
            })
        })
        .collect();

    // Collect the faults.
    let (stall_detected, stall_closed_after, stall_ending) = stalled.join().unwrap();
    let half_close_ending = half_closed.join().unwrap();
    let garbage_results = garbage.join().unwrap();
    let (churn_upgraded, churn_abandoned, churn_failed, churn_took) = churn.join().unwrap();
    let flood_results: Vec<_> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    let faults_took = faults_started.elapsed();

    // Every session is back to its good clients: faulty ones are gone, none left as a ghost.
    for k in 0..SESSIONS {
        server.wait_for_clients(
            &session(k),
            GOOD_PER_SESSION as u64,
            Duration::from_secs(10),
        );
    }
    std::thread::sleep(AFTER_FAULTS);
    let during = server.metrics();
    stop.store(true, Relaxed);
    let stats: Vec<GoodStats> = good.into_iter().map(|h| h.join().unwrap()).collect();
    let flooded_stats = flooded.join().unwrap();

    // Report.
    eprintln!("faults ran for {faults_took:?}");
    eprintln!(
        "(a) stalled client: detected={stall_detected}, closed after {stall_closed_after:?}, {stall_ending:?}"
    );
    eprintln!("(b) half-closed client: {half_close_ending:?}");
    for (name, want, got) in &garbage_results {
        eprintln!("(c) {name}: close code {got:?} (expected {want})");
    }
    eprintln!(
        "(d) churn: {churn_upgraded} upgraded and read, {churn_abandoned} dropped at once, {churn_failed} failed, in {churn_took:?}"
    );
    for (t, (statuses, took)) in flood_results.iter().enumerate() {
        let total: u32 = statuses.values().sum();
        eprintln!(
            "(e) flooder {t}: {total} requests in {took:?} ({:.0}/s): {statuses:?}",
            f64::from(total) / took.as_secs_f64()
        );
    }
    eprintln!(
        "p99 tick->socket per session, baseline (lifetime after {BASELINE:?}): {:?}",
        p99s(&baseline)
    );
    eprintln!(
        "p99 tick->socket per session, lifetime after the faults:        {:?}",
        p99s(&during)
    );
    let total_packets: u64 = stats.iter().map(|s| s.packets).sum();
    eprintln!(
        "good clients: {} clients, {total_packets} packets, flooded-session client {} packets",
        stats.len(),
        flooded_stats.packets
    );

    // Good clients: no error, no gap, no packet dropped, a full stream.
    let mut failures = Vec::new();
    for s in stats.iter().chain(std::iter::once(&flooded_stats)) {
        if let Some(e) = &s.error {
            failures.push(format!("{}: {e}", s.path));
        }
        if s.gaps > 0 || s.backwards > 0 {
            failures.push(format!(
                "{}: {} packets missing, {} out of order ({:?}..{:?})",
                s.path, s.gaps, s.backwards, s.first, s.last
            ));
        }
    }
    for s in &stats {
        let expected = s.elapsed.as_secs_f64() * 40.0;
        if (s.packets as f64) < expected * 0.8 {
            failures.push(format!(
                "{}: only {} packets in {:?} (expected ~{expected:.0})",
                s.path, s.packets, s.elapsed
            ));
        }
        let code = s.path.rsplit('/').next().unwrap();
        match client_metrics(&during, code, s.local.unwrap()) {
            Some(c) if c["dropped_packets"] == 0 => {}
            Some(c) => failures.push(format!("{}: server dropped packets: {c}", s.path)),
            None => failures.push(format!("{}: not in /metrics", s.path)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} good-client failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // (a) detected as stalled and closed, with 1008 if the close frame got through at all.
    assert!(stall_detected, "stalled client never closed as stalled");
    assert!(
        stall_closed_after >= STALL,
        "stalled client closed after only {stall_closed_after:?}"
    );
    assert_ne!(stall_ending.how, RawEnd::StillOpen, "{stall_ending:?}");
    if let Some(code) = stall_ending.close_code {
        assert_eq!(code, 1008, "stalled client's close code");
    }
    // (b) closed by the server with 1002: it left without a close handshake.
    assert_eq!(
        half_close_ending.close_code,
        Some(1002),
        "half-closed client: {half_close_ending:?}"
    );
    assert_ne!(half_close_ending.how, RawEnd::StillOpen);
    // (c) each garbage client closed with its code, and counted.
    for (name, want, got) in &garbage_results {
        assert_eq!(*got, Some(*want), "garbage client {name:?}");
    }
    let good2 = &during["metrics"]["sessions"]["good-2"];
    let protocol_errors = garbage_results.iter().filter(|r| r.1 == 1002).count();
    assert_eq!(good2["clients_protocol_error"], protocol_errors as u64);
    assert_eq!(good2["clients_message_too_big"], 1);
    assert_eq!(
        during["metrics"]["sessions"]["good-1"]["clients_protocol_error"],
        1
    );
    // (d) every upgrade counted, no ghost left (checked by wait_for_clients above).
    assert!(churn_upgraded >= 50, "churn upgraded only {churn_upgraded}");
    let opened_after = during["metrics"]["connections_opened"].as_u64().unwrap();
    assert!(
        opened_after - opened_before >= u64::from(churn_upgraded),
        "connections_opened {opened_before} -> {opened_after}, churn upgraded {churn_upgraded}"
    );
    // (e) every flood answer a proper one: 200, 404 for the missing session, or 503 when the
    // session's command queue is full (backpressure, never waiting).
    for (statuses, _) in &flood_results {
        let unexpected: Vec<_> = statuses
            .keys()
            .filter(|s| ![200, 404, 503].contains(*s))
            .collect();
        assert!(unexpected.is_empty(), "flood statuses: {statuses:?}");
        assert!(statuses.get(&200).copied().unwrap_or(0) > 20);
    }

    // Still serving: health, and a new client streams.
    assert_eq!(server.get("/health").ok_json()["status"], "healthy");
    let mut late = server.ws("/stream/after-faults");
    late.metadata();
    let packets = late.data_n(10, Duration::from_secs(3));
    assert_contiguous(&packets, "client after the faults");
}

/// Requests that declare a body and never send it, answered without reading it (413 for a
/// body over the limit, 404, 401, 426), must not hold an HTTP worker: tiny_http drains an
/// unread body when the request is dropped, on the worker, for as long as the client keeps
/// the connection open. Eight of them at once (twice the workers) and a plain request must
/// still be answered at once, long before the idle timeout.
#[test]
fn unsent_bodies_do_not_hold_the_http_workers() {
    let server = TestServer::with(|_, network| {
        network.http_idle_timeout = Duration::from_secs(20);
        network.api_token = Some("tok".into());
    });
    let addr = server.addr;
    let declared = [
        "POST /api/sessions/create HTTP/1.1\r\nAuthorization: Bearer tok\r\nContent-Length: 1000000000\r\n\r\n",
        "POST /api/control/x/seek HTTP/1.1\r\nAuthorization: Bearer tok\r\nContent-Length: 100000\r\n\r\n",
        "POST /nowhere HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
        "POST /api/sessions/cleanup HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
        "GET /stream/x HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
        "PUT /health HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
        "DELETE /api/sessions/nope HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
    ];
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for request in declared {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let status = read_head(&mut stream).map(|(s, _)| s).unwrap_or(0);
        statuses.push(status);
        held.push(stream); // kept open, body never sent
    }
    assert_eq!(statuses, [413, 413, 404, 401, 426, 405, 401], "answers");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let health = http(addr, "GET", "/health", None, &[]);
    let took = started.elapsed();
    assert_eq!(health.status, 200);
    assert!(
        took < Duration::from_secs(2),
        "/health took {took:?} with seven unsent bodies pending"
    );
    drop(held);
}
