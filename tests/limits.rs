//! Limits and reconnects: every limit is reported in `/api/stats`; clients beyond the
//! per-session and server-wide limits get 503 with a `detail` before the upgrade, and a place
//! freed is a place again; a client that leaves and comes back continues its session's
//! timeline, its sequence gap being what it missed; a configured value the HTTP layer cannot
//! send is refused at startup instead of failing every request.

mod common;

use std::time::{Duration, Instant};

use common::*;
use phantomlink::engine::Registry;
use phantomlink::net::Server;

#[test]
fn a_cors_origin_that_is_not_a_header_value_is_refused_at_startup() {
    // Before the fix, the server started and every reply panicked its HTTP worker (the header
    // helper expected ASCII), so after four requests nothing answered at all.
    for bad in [
        "https://exämple.org",
        "https://a.org\r\nX-Evil: 1",
        "\u{7f}",
    ] {
        let mut network = test_server_config();
        network.cors_origin = bad.to_string();
        let registry = std::sync::Arc::new(Registry::new(table(), test_engine_config()));
        match Server::start(registry, network) {
            Ok(server) => {
                let addr = server.local_addr();
                let answers: Vec<u16> = (0..6)
                    .map(|_| http(addr, "GET", "/health", None, &[]).status)
                    .collect();
                server.shut_down(Duration::from_secs(2));
                panic!("server started with --cors-origin {bad:?}; /health answered {answers:?}");
            }
            Err(e) => assert!(
                e.to_string().contains("cors"),
                "error should name the option: {e}"
            ),
        }
    }
    // A valid origin list still works.
    let server = TestServer::with(|_, network| {
        network.cors_origin = "https://lab.example.org".into();
    });
    let reply = server.get("/health");
    assert_eq!(
        reply.header("Access-Control-Allow-Origin"),
        Some("https://lab.example.org")
    );
}

#[test]
fn every_limit_is_reported_in_stats() {
    let server = TestServer::with(|engine, network| {
        engine.max_sessions = 7;
        engine.max_clients_per_session = 5;
        engine.max_clients_total = 9;
        engine.stall_timeout = Duration::from_secs(4);
        network.max_body_bytes = 2048;
        network.http_idle_timeout = Duration::from_secs(3);
        network.api_token = Some("t0ken".into());
        network.writer_threads = 3;
        engine.spin = Some(Duration::from_micros(7));
    });
    let stats = server.get("/api/stats").ok_json();
    let limits = &stats["session_manager"]["limits"];
    assert_eq!(limits["max_sessions"], 7);
    assert_eq!(limits["max_clients_per_session"], 5);
    assert_eq!(limits["max_clients_total"], 9);
    assert_eq!(limits["max_body_bytes"], 2048);
    assert_eq!(limits["max_client_message_bytes"], 64 * 1024);
    assert_eq!(limits["client_stall_timeout_seconds"].as_f64(), Some(4.0));
    assert_eq!(limits["http_idle_timeout_seconds"].as_f64(), Some(3.0));
    assert_eq!(limits["handshake_timeout_seconds"].as_f64(), Some(3.0));
    assert_eq!(limits["writer_threads"], 3);
    let timing = &stats["session_manager"]["timing"];
    assert_eq!(timing["spin_mode"], "fixed");
    assert_eq!(timing["spin_us"].as_f64(), Some(7.0));
    let security = &stats["session_manager"]["security"];
    assert_eq!(security["api_token_required"], true);
    assert_eq!(security["stream_token_required"], false);
    assert_eq!(security["cors_origin"], "*");
    assert!(
        !stats.to_string().contains("t0ken"),
        "the token itself is never shown"
    );
    let open = TestServer::start();
    let security = &open.get("/api/stats").ok_json()["session_manager"]["security"];
    assert_eq!(security["api_token_required"], false);
}

#[test]
fn clients_beyond_the_limits_get_503_with_a_detail() {
    let server = TestServer::with(|engine, _| {
        engine.max_clients_per_session = 3;
        engine.max_clients_total = 5;
    });
    // Per session: the fourth client of "full-a" is refused before the upgrade.
    let mut a: Vec<WsClient> = (0..3)
        .map(|_| {
            let mut c = server.ws("/stream/full-a");
            c.metadata();
            c
        })
        .collect();
    let refused = upgrade_request(server.addr, "/stream/full-a");
    let detail = refused.error(503);
    assert!(detail.contains("maximum of 3 clients"), "{detail}");
    // Server-wide: two more fit elsewhere, the sixth is refused with the total limit named.
    let _b: Vec<WsClient> = (0..2)
        .map(|_| {
            let mut c = server.ws("/stream/full-b");
            c.metadata();
            c
        })
        .collect();
    let refused = upgrade_request(server.addr, "/stream/full-c");
    let detail = refused.error(503);
    assert!(
        detail.contains("limit of 5 clients") && detail.contains("--max-clients"),
        "{detail}"
    );
    let stats = server.get("/api/stats").ok_json();
    assert_eq!(stats["active_connections"], 5);
    // A place freed is a place again.
    let mut leaving = a.pop().unwrap();
    leaving.close_handshake(1000);
    drop(leaving);
    server.wait_for_clients("full-a", 2, Duration::from_secs(5));
    let mut again = server.ws("/stream/full-a");
    again.metadata();
    again.next_data();
    assert_eq!(server.get("/api/stats").ok_json()["active_connections"], 5);
}

#[test]
fn a_client_that_reconnects_continues_the_timeline() {
    let server = TestServer::start();
    let code = "comeback";
    // Another client keeps the session's clock company; the test client leaves and returns.
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    let before = client.data_n(40, Duration::from_secs(5));
    assert_contiguous(&before, "before leaving");
    let last = before.last().unwrap().clone();
    let left_at = Instant::now();
    client.close_handshake(1000);
    drop(client);
    server.wait_for_clients(code, 0, Duration::from_secs(5));

    std::thread::sleep(Duration::from_secs(2));
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    let first = client.next_data();
    let away = left_at.elapsed();
    let gap = seq(&first) - seq(&last);
    let expected = away.as_secs_f64() * 40.0;
    eprintln!(
        "away {away:?}: sequence {} -> {} (gap {gap}, expected ~{expected:.0})",
        seq(&last),
        seq(&first)
    );
    // The same timeline: sequence numbers continue (no restart at 1), the gap is what was
    // missed (40 per second away, within 15 % or 6 packets for scheduling and connect time),
    // and playback moved on by the same number of bins.
    assert!(seq(&first) > seq(&last), "sequence restarted: {first}");
    let tolerance = (expected * 0.15).max(6.0);
    assert!(
        (gap as f64 - expected).abs() <= tolerance,
        "gap {gap} packets after {away:?} away (expected {expected:.0} ± {tolerance:.0})"
    );
    assert_eq!(
        bin(&first) - bin(&last),
        gap,
        "bins advanced as many as sequence numbers"
    );
    let after = client.data_n(20, Duration::from_secs(3));
    assert_contiguous(&after, "after coming back");
}
