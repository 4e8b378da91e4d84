//! Every route of DESIGN.md's HTTP table and its error paths, over a raw HTTP/1.1 client:
//! sessions (create, list, get, delete, cleanup, limits, eviction), dataset and trial tables,
//! stats, playback control, `/metrics` in JSON and Prometheus text, and malformed requests.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn assert_generated_code(code: &str) {
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(
        parts.len(),
        3,
        "generated code {code:?} is not adjective-noun-number"
    );
    for word in &parts[..2] {
        assert!(
            !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase()),
            "{code:?}"
        );
    }
    let number: u32 = parts[2].parse().unwrap_or_else(|_| panic!("{code:?}"));
    assert!(number < 1000, "{code:?}");
}

fn codes(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| s["session_code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn root_lists_the_endpoints_with_the_public_scheme() {
    let server = TestServer::start();
    let root = server.get("/").ok_json();
    assert_eq!(root["service"], "PhantomLink");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    let endpoints = root["endpoints"].as_object().expect("endpoints object");
    for (key, route) in [
        ("create_session", "POST /api/sessions/create"),
        ("list_sessions", "GET /api/sessions"),
        ("session_stats", "GET /api/sessions/{session_code}"),
        ("delete_session", "DELETE /api/sessions/{session_code}"),
        ("cleanup_sessions", "POST /api/sessions/cleanup"),
        ("metadata", "GET /api/metadata"),
        ("trials", "GET /api/trials"),
        ("trial", "GET /api/trials/{trial_id}"),
        ("trials_by_target", "GET /api/trials/by-target/{target_id}"),
        ("stats", "GET /api/stats"),
        ("position", "GET /api/control/{session_code}/position"),
        ("metrics", "GET /metrics"),
        ("health", "GET /health"),
    ] {
        assert_eq!(endpoints[key], route, "endpoint {key}");
    }
    let addr = server.addr;
    assert_eq!(
        endpoints["stream"],
        format!("ws://{addr}/stream/{{session_code}}")
    );
    assert_eq!(
        endpoints["stream_binary"],
        format!("ws://{addr}/stream/binary/{{session_code}}")
    );
    assert_eq!(
        server.get("/").header("Access-Control-Allow-Origin"),
        Some("*")
    );

    // Behind a TLS proxy: wss://, and the Host the client used.
    let proxied = server
        .request(
            "GET",
            "/",
            None,
            &[
                ("Host", "neuro.example.org"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
        .ok_json();
    assert_eq!(
        proxied["endpoints"]["stream"],
        "wss://neuro.example.org/stream/{session_code}"
    );
    let created = server
        .request(
            "POST",
            "/api/sessions/create",
            None,
            &[("X-Forwarded-Proto", "https")],
        )
        .ok_json();
    let code = created["session_code"].as_str().unwrap();
    assert_eq!(created["stream_url"], format!("wss://{addr}/stream/{code}"));
    let plain = server
        .request("GET", "/", None, &[("X-Forwarded-Proto", "http")])
        .ok_json();
    assert!(plain["endpoints"]["stream"]
        .as_str()
        .unwrap()
        .starts_with("ws://"));
}

#[test]
fn health_counts_sessions_and_clients() {
    let server = TestServer::start();
    let health = server.get("/health").ok_json();
    assert_eq!(health["status"], "healthy");
    assert_eq!(
        (health["sessions"].as_u64(), health["clients"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(health["uptime_seconds"].as_f64().is_some_and(|u| u >= 0.0));
    let mut client = server.ws("/stream/health-check");
    client.metadata();
    let health = server.get("/health").ok_json();
    assert_eq!(
        (health["sessions"].as_u64(), health["clients"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn sessions_are_created_with_generated_or_custom_codes() {
    let server = TestServer::start();
    let addr = server.addr;
    let created = server.post("/api/sessions/create").ok_json();
    let code = created["session_code"]
        .as_str()
        .expect("session_code")
        .to_string();
    assert_generated_code(&code);
    assert_eq!(created["stream_url"], format!("ws://{addr}/stream/{code}"));
    assert_eq!(
        created["stream_url_binary"],
        format!("ws://{addr}/stream/binary/{code}")
    );
    assert!(created["created"].as_f64().is_some_and(|t| t > 1.6e9));
    let second = server.post("/api/sessions/create").ok_json();
    assert_ne!(second["session_code"], created["session_code"]);
    assert_generated_code(second["session_code"].as_str().unwrap());

    let by_query = server
        .post("/api/sessions/create?custom_code=lab_A-1")
        .ok_json();
    assert_eq!(by_query["session_code"], "lab_A-1");
    let by_body = server
        .post_json("/api/sessions/create", &json!({"custom_code": "from-body"}))
        .ok_json();
    assert_eq!(by_body["session_code"], "from-body");
    assert_eq!(
        by_body["stream_url"],
        format!("ws://{addr}/stream/from-body")
    );

    let detail = server
        .post("/api/sessions/create?custom_code=lab_A-1")
        .error(409);
    assert!(detail.contains("lab_A-1"), "{detail}");
    server
        .post_json("/api/sessions/create", &json!({"custom_code": "from-body"}))
        .error(409);
    let long = "x".repeat(65);
    for bad in ["bad%20code", "a.b", "%2E%2E", &long, "caf%C3%A9", ""] {
        server
            .post(&format!("/api/sessions/create?custom_code={bad}"))
            .error(400);
    }
    server
        .post_json("/api/sessions/create", &json!({"custom_code": 123}))
        .error(400);
    server
        .post_json("/api/sessions/create", &json!({"custom_code": "a/b"}))
        .error(400);

    let list = server.get("/api/sessions").ok_json();
    let mut listed = codes(&list);
    listed.sort();
    let mut expected = vec![
        code,
        second["session_code"].as_str().unwrap().to_string(),
        "lab_A-1".into(),
        "from-body".into(),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(list["stats"]["total_sessions"], 4);
}

#[test]
fn sessions_are_read_and_deleted() {
    let server = TestServer::start();
    server
        .post("/api/sessions/create?custom_code=keep-me")
        .ok_json();
    let session = server.session("keep-me");
    assert_eq!(session["session_code"], "keep-me");
    assert_eq!(session["active_connections"], 0);
    assert_eq!(session["is_paused"], false);
    assert_eq!(session["started"], false, "no client has connected yet");
    assert_eq!(session["current_index"], 0);
    assert_eq!(session["filter"], Value::Null);
    assert_eq!(
        session["stream_url"],
        format!("ws://{}/stream/keep-me", server.addr)
    );

    let detail = server.get("/api/sessions/not-there").error(404);
    assert!(detail.contains("not-there"), "{detail}");
    server.get("/api/sessions/bad.code").error(400);
    server.delete("/api/sessions/bad.code").error(400);
    server.delete("/api/sessions/not-there").error(404);

    let mut client = server.ws("/stream/keep-me");
    client.metadata();
    client.next_data();
    let detail = server.delete("/api/sessions/keep-me").error(409);
    assert!(detail.contains("client"), "{detail}");
    assert_eq!(server.session("keep-me")["active_connections"], 1);
    assert_eq!(server.session("keep-me")["started"], true);

    drop(client);
    server.wait_for_clients("keep-me", 0, Duration::from_secs(5));
    let deleted = server.delete("/api/sessions/keep-me").ok_json();
    assert_eq!(deleted["session_code"], "keep-me");
    server.get("/api/sessions/keep-me").error(404);
    server.delete("/api/sessions/keep-me").error(404);
    assert!(codes(&server.get("/api/sessions").ok_json()).is_empty());
}

#[test]
fn cleanup_removes_idle_sessions_only() {
    let server = TestServer::with(|engine, _| engine.session_ttl = Duration::from_secs(1));
    server
        .post("/api/sessions/create?custom_code=idle-one")
        .ok_json();
    let mut client = server.ws("/stream/busy-one");
    client.metadata();
    let nothing = server.post("/api/sessions/cleanup").ok_json();
    assert_eq!(
        nothing["cleaned_up"], 0,
        "nothing has expired yet: {nothing}"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let cleaned = server.post("/api/sessions/cleanup").ok_json();
    assert_eq!(cleaned["cleaned_up"], 1, "{cleaned}");
    assert_eq!(cleaned["sessions"], json!(["idle-one"]));
    server.get("/api/sessions/idle-one").error(404);
    assert_eq!(server.session("busy-one")["active_connections"], 1);
    client.next_data();
}

#[test]
fn expired_sessions_are_also_removed_periodically() {
    let server = TestServer::with(|engine, network| {
        engine.session_ttl = Duration::from_millis(200);
        network.cleanup_interval = Duration::from_millis(100);
    });
    server
        .post("/api/sessions/create?custom_code=fades-away")
        .ok_json();
    assert!(
        wait_until(Duration::from_secs(5), || server
            .get("/api/sessions/fades-away")
            .status
            == 404),
        "the housekeeping thread never removed the expired session"
    );
}

#[test]
fn the_least_recently_used_idle_session_is_evicted() {
    let server = TestServer::with(|engine, _| engine.max_sessions = 2);
    let pause = Duration::from_millis(30);
    server
        .post("/api/sessions/create?custom_code=lru-a")
        .ok_json();
    std::thread::sleep(pause);
    server
        .post("/api/sessions/create?custom_code=lru-b")
        .ok_json();
    std::thread::sleep(pause);
    server.control("lru-a", "pause"); // using lru-a makes lru-b the least recently used
    std::thread::sleep(pause);
    server
        .post("/api/sessions/create?custom_code=lru-c")
        .ok_json();
    server.get("/api/sessions/lru-b").error(404);
    let mut listed = codes(&server.get("/api/sessions").ok_json());
    listed.sort();
    assert_eq!(listed, vec!["lru-a", "lru-c"]);

    // With a client on every session nothing can be evicted: 503, by REST and by connecting.
    let mut on_a = server.ws("/stream/lru-a");
    on_a.metadata();
    let mut on_c = server.ws("/stream/lru-c");
    on_c.metadata();
    let detail = server
        .post("/api/sessions/create?custom_code=lru-d")
        .error(503);
    assert!(detail.contains("2 sessions"), "{detail}");
    upgrade_request(server.addr, "/stream/lru-e").error(503);
    server.get("/api/sessions/lru-e").error(404);

    // A session whose clients left can be evicted again.
    drop(on_a);
    server.wait_for_clients("lru-a", 0, Duration::from_secs(5));
    server
        .post("/api/sessions/create?custom_code=lru-d")
        .ok_json();
    server.get("/api/sessions/lru-a").error(404);
    assert_eq!(server.session("lru-c")["active_connections"], 1);
    on_c.next_data();
}

#[test]
fn connecting_creates_the_session() {
    let server = TestServer::start();
    let mut client = server.ws("/stream/made-by-connect");
    let metadata = client.metadata();
    assert_eq!(metadata["session"]["code"], "made-by-connect");
    client.next_data();
    let session = server.session("made-by-connect");
    assert_eq!(session["active_connections"], 1);
    assert_eq!(session["started"], true);
    assert_eq!(session["is_running"], true);
    // Invalid codes are refused before the upgrade.
    upgrade_request(server.addr, "/stream/bad.code").error(400);
}

#[test]
fn stream_endpoints_need_a_websocket_upgrade() {
    let server = TestServer::start();
    for path in ["/stream/plain-get", "/stream/binary/plain-get"] {
        let detail = server.get(path).error(426);
        assert!(detail.to_lowercase().contains("websocket"), "{detail}");
    }
    let wrong_version = server.request(
        "GET",
        "/stream/plain-get",
        None,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    );
    wrong_version.error(426);
    let no_key = server.request(
        "GET",
        "/stream/plain-get",
        None,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ],
    );
    no_key.error(400);
    server.get("/api/sessions/plain-get").error(404);
}

#[test]
fn dataset_metadata_and_trials() {
    let server = TestServer::start();
    let table = table();
    let metadata = server.get("/api/metadata").ok_json();
    assert_eq!(metadata["dataset"], "MC_Maze");
    assert_eq!(metadata["total_packets"], TOTAL_PACKETS);
    assert_eq!(metadata["frequency_hz"], 40);
    assert_eq!(metadata["num_channels"], NUM_CHANNELS);
    assert_eq!(metadata["duration_seconds"].as_f64(), Some(293.7));
    assert_eq!(metadata["num_trials"], 100);
    assert_eq!(metadata["bin_size_ms"].as_f64(), Some(25.0));
    let targets: Vec<u32> = table.target_ids().collect();
    assert_eq!(metadata["target_ids"], json!(targets));

    let trials = server.get("/api/trials").ok_json();
    assert_eq!(trials["count"], 100);
    let list = trials["trials"].as_array().unwrap();
    assert_eq!(list.len(), 100);
    for (served, trial) in list.iter().zip(table.trials()) {
        assert_eq!(served["id"], trial.id);
        assert_eq!(served["start_time"].as_f64(), Some(trial.start_time));
    }

    let trial = &table.trials()[5];
    let served = server.get(&format!("/api/trials/{}", trial.id)).ok_json();
    assert_eq!(served, via_json_text(&serde_json::to_value(trial).unwrap()));
    assert!(served["stop_time"].as_f64().unwrap() > served["start_time"].as_f64().unwrap());
    assert_eq!(served["target_id"].as_u64(), trial.target_id.map(u64::from));
    let detail = server.get("/api/trials/99999").error(404);
    assert!(detail.contains("99999"), "{detail}");
    for bad in ["abc", "-1", "1.5", "4294967296"] {
        server.get(&format!("/api/trials/{bad}")).error(400);
    }

    let target = targets[1];
    let by_target = server
        .get(&format!("/api/trials/by-target/{target}"))
        .ok_json();
    let expected: Vec<u32> = table.trials_for_target(target).map(|t| t.id).collect();
    assert!(!expected.is_empty());
    assert_eq!(by_target["count"], expected.len());
    let ids: Vec<u64> = by_target["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["target_id"], target);
            t["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        expected.iter().map(|&i| u64::from(i)).collect::<Vec<_>>()
    );
    let sum: u64 = targets
        .iter()
        .map(|t| {
            server.get(&format!("/api/trials/by-target/{t}")).ok_json()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(sum, 100, "every trial belongs to exactly one target");
    assert_eq!(
        server.get("/api/trials/by-target/999").ok_json()["count"],
        0
    );
    for bad in ["abc", "-3", "x1"] {
        server
            .get(&format!("/api/trials/by-target/{bad}"))
            .error(400);
    }
}

#[test]
fn stats_report_the_configured_limits() {
    let server = TestServer::with(|engine, network| {
        engine.max_sessions = 7;
        engine.max_clients_per_session = 5;
        engine.max_clients_total = 9;
        engine.ring_capacity = 16;
        engine.session_ttl = Duration::from_secs(123);
        engine.stall_timeout = Duration::from_secs(4);
        network.max_body_bytes = 2048;
    });
    let mut client = server.ws("/stream/stats-one");
    client.metadata();
    let stats = server.get("/api/stats").ok_json();
    assert_eq!(stats["active_connections"], 1);
    let manager = &stats["session_manager"];
    assert_eq!(manager["total_sessions"], 1);
    assert_eq!(manager["active_sessions"], 1);
    assert_eq!(manager["total_connections"], 1);
    assert_eq!(manager["max_sessions"], 7);
    let limits = &manager["limits"];
    assert_eq!(limits["max_sessions"], 7);
    assert_eq!(limits["max_clients_per_session"], 5);
    assert_eq!(limits["max_clients_total"], 9);
    assert_eq!(limits["client_buffer_packets"], 16);
    assert_eq!(limits["session_ttl_seconds"].as_f64(), Some(123.0));
    assert_eq!(limits["client_stall_timeout_seconds"].as_f64(), Some(4.0));
    assert_eq!(limits["max_body_bytes"], 2048);
}

#[test]
fn control_errors() {
    let server = TestServer::start();
    for action in ["pause", "resume", "stop", "seek?packet_id=1"] {
        let detail = server
            .post(&format!("/api/control/ghost/{action}"))
            .error(404);
        assert!(detail.contains("ghost"), "{detail}");
        server
            .post(&format!("/api/control/bad.code/{action}"))
            .error(400);
    }
    server.get("/api/control/ghost/position").error(404);
    server.get("/api/control/bad.code/position").error(400);

    server
        .post("/api/sessions/create?custom_code=ctl")
        .ok_json();
    let seek = |query: &str| server.post(&format!("/api/control/ctl/seek{query}"));
    for bad in [
        "",
        "?packet_id=-1",
        "?packet_id=11748",
        "?packet_id=4294967296",
        "?packet_id=abc",
        "?packet_id=",
        "?position_seconds=NaN",
        "?position_seconds=inf",
        "?position_seconds=-1",
        "?position_seconds=-0.001",
        "?position_seconds=293.7",
        "?position_seconds=1e308",
        "?position_seconds=1e400",
        "?position_seconds=abc",
        "?packet_id=1&position_seconds=1",
    ] {
        let detail = seek(bad).error(400);
        assert!(!detail.is_empty(), "{bad}");
    }
    for body in [
        json!({"packet_id": "12"}),
        json!({"packet_id": 1.5}),
        json!({"packet_id": -4}),
        json!({"position_seconds": "abc"}),
        json!({"position_seconds": 1e300}),
        json!({"packet_id": 1, "position_seconds": 1.0}),
        json!({}),
    ] {
        server.post_json("/api/control/ctl/seek", &body).error(400);
    }
    let last = seek("?packet_id=11747").ok_json();
    assert_eq!(last["packet_id"], 11747);
    let start = seek("?position_seconds=0").ok_json();
    assert_eq!(start["packet_id"], 0);
    // 0.05 / 0.025 is 1.9999999999999998 in floating point: still bin 2.
    let body = server
        .post_json("/api/control/ctl/seek", &json!({"position_seconds": 0.05}))
        .ok_json();
    assert_eq!(body["packet_id"], 2);
    assert_eq!(body["position_seconds"].as_f64(), Some(0.05));
    let end = seek("?position_seconds=293.699").ok_json();
    assert_eq!(end["packet_id"], 11747);
    // Seeking a session nobody has connected to moves its position too.
    assert!(wait_until(Duration::from_secs(2), || server
        .position("ctl")["packet_id"]
        == 11747));
    for action in ["pause", "resume", "stop"] {
        let reply = server.control("ctl", action);
        assert_eq!(reply["session_code"], "ctl");
    }
}

fn assert_latency_summary(summary: &Value, what: &str) {
    let field = |name: &str| {
        summary[name]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: {name} missing in {summary}"))
    };
    let (min, p50, p90, p99, p999, max) = (
        field("min"),
        field("p50"),
        field("p90"),
        field("p99"),
        field("p999"),
        field("max"),
    );
    let (mean, std) = (field("mean"), field("std"));
    assert!(
        0.0 <= min && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{what}: percentiles out of order: {summary}"
    );
    assert!(
        min <= mean && mean <= max && std >= 0.0,
        "{what}: {summary}"
    );
    assert!(
        max < 10_000.0,
        "{what}: {max} ms is not a plausible latency"
    );
    assert!(
        summary["count"].as_u64().is_some_and(|c| c > 0),
        "{what}: {summary}"
    );
}

#[test]
fn metrics_json_counts_what_clients_received() {
    let server = TestServer::start();
    let code = "metrics-json";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    let mut received = client.data_n(40, Duration::from_secs(5)).len() as u64;
    server.control(code, "pause");
    server.wait_paused(code, true);
    received += client
        .drain_until_quiet(Duration::from_millis(400), Duration::from_secs(5))
        .len() as u64;

    // Latency histograms reach /metrics within a few hundred milliseconds.
    let mut metrics = Value::Null;
    let settled = wait_until(Duration::from_secs(3), || {
        metrics = server.metrics();
        let session = &metrics["metrics"]["sessions"][code];
        session["network_latency_ms"]["count"] == session["packets_sent"]
    });
    assert!(
        settled,
        "latency count never matched packets_sent: {metrics}"
    );

    assert_eq!(metrics["service"], "PhantomLink");
    assert_eq!(metrics["version"], env!("CARGO_PKG_VERSION"));
    assert!(metrics["timestamp"].as_f64().is_some_and(|t| t > 1.6e9));
    let totals = &metrics["metrics"];
    assert_eq!(totals["total_sessions"], 1);
    assert_eq!(totals["active_sessions"], 1);
    assert_eq!(totals["total_connections"], 1);
    let session = &totals["sessions"][code];
    assert_eq!(
        session["packets_sent"], received,
        "server count vs what the client read"
    );
    assert_eq!(session["packets_generated"], received);
    assert_eq!(session["sequence_number"], received);
    assert_eq!(session["dropped_packets"], 0);
    assert_eq!(session["connections"], 1);
    assert_eq!(session["is_running"], true);
    assert_eq!(session["is_paused"], true);
    let memory = session["memory_usage_mb"].as_f64().unwrap();
    assert!(memory > 0.0 && memory < 15.0, "memory_usage_mb {memory}");
    assert!(session["bytes_sent"].as_u64().unwrap() > received * 500);
    assert_latency_summary(&session["network_latency_ms"], "network latency");
    assert_latency_summary(&session["timing_error_ms"], "timing error");
    let ticks = session["timing_error_ms"]["count"].as_u64().unwrap();
    assert!(
        ticks <= received + 1,
        "{ticks} lateness samples for {received} ticks"
    );

    let clients = session["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1);
    let client_metrics = &clients[0];
    assert_eq!(client_metrics["remote"], client.local_addr().to_string());
    assert_eq!(client_metrics["format"], "json");
    assert_eq!(client_metrics["packets_sent"], received);
    assert_eq!(client_metrics["dropped_packets"], 0);
    assert_eq!(client_metrics["ring_capacity"], 64);
    assert!(client_metrics["ring_high_water"].as_u64().unwrap() < 64);
    assert_latency_summary(&client_metrics["network_latency_ms"], "client latency");

    // One session only; unknown sessions and formats are errors.
    let only = server.get(&format!("/metrics?session={code}")).ok_json();
    assert_eq!(only["metrics"]["sessions"].as_object().unwrap().len(), 1);
    server.get("/metrics?session=ghost").error(404);
    server.get("/metrics?format=xml").error(400);
    let explicit = server.get("/metrics?format=json").ok_json();
    assert_eq!(
        explicit["metrics"]["sessions"][code]["packets_sent"],
        received
    );
}

#[test]
fn metrics_prometheus_text() {
    let server = TestServer::start();
    let code = "metrics-prom";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    let received = client.data_n(20, Duration::from_secs(5)).len() as u64;
    server.control(code, "pause");
    server.wait_paused(code, true);
    client.drain_until_quiet(Duration::from_millis(400), Duration::from_secs(5));
    let json_sent = server.metrics()["metrics"]["sessions"][code]["clients"][0]["packets_sent"]
        .as_u64()
        .unwrap();
    assert!(json_sent >= received);

    let response = server.get("/metrics?format=prometheus");
    assert_eq!(response.status, 200);
    assert!(response
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text();
    let by_accept = server.request("GET", "/metrics", None, &[("Accept", "text/plain")]);
    assert!(by_accept
        .text()
        .contains("# TYPE phantomlink_sessions gauge"));

    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with("# HELP ") {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.starts_with("phantomlink_") || name.starts_with("process_"),
                "{line}"
            );
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{line}"
            );
            samples.push((series.to_string(), name.to_string(), value));
        }
    }
    for (_, name, _) in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE for {name}");
    }
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _, _)| s == series)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(types["phantomlink_sessions"], "gauge");
    assert_eq!(value("phantomlink_sessions"), 1.0);
    assert_eq!(value("phantomlink_clients"), 1.0);
    assert_eq!(
        value(&format!(
            "phantomlink_packets_generated_total{{session=\"{code}\"}}"
        )) as u64,
        json_sent
    );
    let client_series = samples
        .iter()
        .find(|(s, n, _)| n == "phantomlink_client_packets_sent_total" && s.contains(code))
        .expect("per-client packets series");
    assert_eq!(client_series.2 as u64, json_sent);
    let count = value(&format!(
        "phantomlink_tick_lateness_seconds_count{{session=\"{code}\"}}"
    ));
    let inf = value(&format!(
        "phantomlink_tick_lateness_seconds_bucket{{session=\"{code}\",le=\"+Inf\"}}"
    ));
    assert!(
        count > 0.0 && count == inf,
        "histogram count {count}, +Inf bucket {inf}"
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
}

#[test]
fn wrong_methods_and_unknown_paths() {
    let server = TestServer::start();
    for (method, path, allow) in [
        ("GET", "/api/sessions/create", "POST"),
        ("GET", "/api/sessions/cleanup", "POST"),
        ("PUT", "/api/sessions/x", "GET, DELETE"),
        ("POST", "/api/sessions", "GET"),
        ("POST", "/health", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("POST", "/", "GET"),
        ("POST", "/api/metadata", "GET"),
        ("DELETE", "/api/trials/1", "GET"),
        ("POST", "/api/stats", "GET"),
        ("GET", "/api/control/x/pause", "POST"),
        ("GET", "/api/control/x/seek", "POST"),
        ("POST", "/api/control/x/position", "GET"),
        ("POST", "/stream/x", "GET"),
    ] {
        let response = server.request(method, path, None, &[]);
        let detail = response.error(405);
        assert_eq!(response.header("Allow"), Some(allow), "{method} {path}");
        assert!(detail.contains(allow), "{detail}");
    }
    for path in [
        "/nope",
        "/api",
        "/api/sessions/x/extra",
        "/api/control/x/dance",
        "/api/control/x",
        "/stream",
        "/metrics/extra",
        "//health",
    ] {
        server.get(path).error(404);
    }
    let preflight = server.request("OPTIONS", "/api/sessions/create", None, &[]);
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .header("Access-Control-Allow-Methods")
        .unwrap()
        .contains("POST"));
}

#[test]
fn bodies_are_limited_and_must_be_json_objects() {
    let server = TestServer::with(|_, network| network.max_body_bytes = 1024);
    let mut big = br#"{"custom_code": "too-big", "pad": ""#.to_vec();
    big.resize(4000, b'a');
    big.extend_from_slice(b"\"}");
    let detail = server
        .request("POST", "/api/sessions/create", Some(&big), &[])
        .error(413);
    assert!(detail.contains("1024"), "{detail}");
    // The same without a Content-Length (chunked): still refused.
    let mut chunked = b"POST /api/sessions/create HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", big.len()).as_bytes());
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    http_raw(server.addr, &chunked).error(413);
    server.get("/api/sessions/too-big").error(404);

    let mut at_limit = br#"{"custom_code": "at-limit"}"#.to_vec();
    at_limit.resize(1024, b' ');
    server
        .request("POST", "/api/sessions/create", Some(&at_limit), &[])
        .ok_json();

    for body in [
        &b"{oops"[..],
        b"[1, 2]",
        b"\"text\"",
        b"42",
        b"{\"custom_code\": \"x\"} trailing",
    ] {
        server
            .request("POST", "/api/sessions/create", Some(body), &[])
            .error(400);
    }
    server
        .post_json("/api/control/at-limit/seek", &json!([1]))
        .error(400);
    // A body of whitespace is no body.
    server
        .request("POST", "/api/sessions/create", Some(b"  \n"), &[])
        .ok_json();
}

#[test]
fn malformed_requests_do_not_hurt_the_server() {
    let server = TestServer::start();
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /health HTTP/1.1\r\nConnection: close\r\nContent-Length: nope\r\n\r\n",
    ] {
        let mut stream = connect_tcp(server.addr);
        use std::io::{Read, Write};
        let _ = stream.write_all(raw);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || text.starts_with("HTTP/1.") && !text.starts_with("HTTP/1.1 5"),
            "{raw:?} -> {text}"
        );
    }
    let long_path = format!("/api/sessions/{}", "x".repeat(8000));
    let response = server.get(&long_path);
    assert!((400..500).contains(&response.status), "{}", response.status);
    assert_eq!(server.get("/health").ok_json()["status"], "healthy");
}
