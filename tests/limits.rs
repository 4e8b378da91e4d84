//! Limits and reconnects: every limit is reported in `/api/stats`; clients beyond the
//! per-session and server-wide limits get 503 with a `detail` before the upgrade, and a place
//! freed is a place again; a client that leaves and comes back continues its session's
//! timeline, its sequence gap being what it missed; a configured value the HTTP layer cannot
//! send is refused at startup instead of failing every request.

mod common;

use std::time::Duration;

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
