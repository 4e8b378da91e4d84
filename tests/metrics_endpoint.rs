//! `/metrics` against real clients: two sessions and three WebSocket clients (JSON and
//! MessagePack) stream for a few seconds, then the sessions are paused so that every figure
//! holds still while it is compared with what the clients themselves received and measured,
//! and with the Prometheus exposition (parsed strictly). A slow client shows up alone.

mod metrics_support;

use std::time::Duration;

use metrics_support::{engine, wait_for, Exposition, Receiver, TestServer};
use phantomlink::engine::EngineConfig;
use serde_json::Value;

const A: &str = "metrics-a";
const B: &str = "metrics-b";

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v}"))
}

/// The reference's mean/std/max plus our percentiles, consistent with one another.
fn check_latency(what: &str, l: &Value, must_have_values: bool) -> u64 {
    for key in ["mean", "std", "max", "min", "p50", "p90", "p99", "p999"] {
        assert!(
            l[key].is_f64() || l[key].is_u64(),
            "{what}.{key} missing: {l}"
        );
    }
    let count = u(l, "count");
    if must_have_values {
        assert!(count > 0, "{what}: nothing recorded: {l}");
    }
    if count == 0 {
        for key in ["mean", "std", "max", "min", "p50", "p90", "p99", "p999"] {
            assert_eq!(f(l, key), 0.0, "{what}: empty yet {key} = {l}");
        }
        return 0;
    }
    let chain = ["min", "p50", "p90", "p99", "p999", "max"].map(|k| f(l, k));
    assert!(
        chain.windows(2).all(|w| w[0] <= w[1]),
        "{what}: min <= p50 <= p90 <= p99 <= p999 <= max fails: {l}"
    );
    assert!(chain[0] >= 0.0, "{what}: {l}");
    // The mean is exact while min and max are bucket edges: within them, with the
    // histogram's 1 % precision to spare.
    let (mean, min, max) = (f(l, "mean"), chain[0], chain[5]);
    assert!(
        mean >= min * 0.99 - 1e-6 && mean <= max * 1.01 + 1e-6,
        "{what}: mean outside [min, max]: {l}"
    );
    assert!(f(l, "std") >= 0.0, "{what}: {l}");
    count
}

/// The document without what moves on its own while paused (bandwidth is bytes over age).
fn frozen(doc: &Value) -> Value {
    match doc {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "bandwidth_bps")
                .map(|(k, v)| (k.clone(), frozen(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(frozen).collect()),
        other => other.clone(),
    }
}

fn client<'a>(session: &'a Value, remote: &str) -> &'a Value {
    session["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["remote"] == remote)
        .unwrap_or_else(|| panic!("no client {remote} in {session}"))
}

/// Every figure of a paused, drained server against the receivers.
fn check_json(doc: &Value, receivers: &[(&str, &Receiver, &str)]) {
    assert!(doc["timestamp"].is_f64(), "{doc}");
    assert_eq!(doc["service"], "PhantomLink");
    assert!(doc["version"].is_string());
    let m = &doc["metrics"];
    assert_eq!(u(m, "total_sessions"), 2);
    assert_eq!(u(m, "active_sessions"), 2);
    assert_eq!(u(m, "total_connections"), 3);
    assert!(u(m, "connections_opened") >= 3);
    let sessions = m["sessions"].as_object().unwrap();
    assert_eq!(sessions.len(), 2, "{m}");
    for (code, s) in sessions {
        // The reference schema, field for field.
        for key in ["packets_sent", "dropped_packets", "connections"] {
            assert!(s[key].is_u64(), "{code}.{key}: {s}");
        }
        assert!(s["memory_usage_mb"].is_f64(), "{code}: {s}");
        assert_eq!(s["is_running"], true, "{code}");
        assert_eq!(s["is_paused"], true, "{code}");
        let timing = check_latency(&format!("{code} timing"), &s["timing_error_ms"], true);
        let network = check_latency(&format!("{code} network"), &s["network_latency_ms"], true);
        // Every tick is measured: the ones that played, plus the one that found the pause.
        let generated = u(s, "packets_generated");
        assert!(
            (generated..=generated + 1).contains(&timing),
            "{code}: {timing} lateness values for {generated} packets"
        );
        assert_eq!(u(s, "sequence_number"), generated);
        let mb = f(s, "memory_usage_mb");
        assert!(mb > 0.0 && (mb - u(s, "memory_bytes") as f64 / 1048576.0).abs() < 1e-9);
        for (name, _) in [("1m", 60), ("5m", 300), ("15m", 900)] {
            let w = &s["windows"][name];
            // The test is younger than a minute, so every window holds everything.
            assert_eq!(
                check_latency(name, &w["timing_error_ms"], true),
                timing,
                "{code} {name}"
            );
            assert_eq!(
                check_latency(name, &w["network_latency_ms"], true),
                network,
                "{code} {name}"
            );
        }
        let clients = s["clients"].as_array().unwrap();
        assert_eq!(u(s, "connections") as usize, clients.len());
        let sent: u64 = clients.iter().map(|c| u(c, "packets_sent")).sum();
        let dropped: u64 = clients.iter().map(|c| u(c, "dropped_packets")).sum();
        let bytes: u64 = clients.iter().map(|c| u(c, "bytes_sent")).sum();
        assert_eq!(u(s, "packets_sent"), sent, "{code}");
        assert_eq!(u(s, "dropped_packets"), dropped, "{code}");
        assert_eq!(u(s, "bytes_sent"), bytes, "{code}");
        assert_eq!(
            network, sent,
            "{code}: one latency value per packet written"
        );
        assert!(f(s, "bandwidth_bps") > 0.0);
    }
    assert_eq!(sessions[A]["clients"].as_array().unwrap().len(), 2);
    assert_eq!(sessions[B]["clients"].as_array().unwrap().len(), 1);

    for (code, receiver, format) in receivers {
        let c = client(&sessions[*code], &receiver.local.to_string());
        assert_eq!(c["format"], *format);
        assert!(c["id"].is_u64() && c["connected_at"].is_f64());
        let sent = u(c, "packets_sent");
        let received = receiver.received();
        assert!(
            sent.abs_diff(received) <= 2,
            "{code}/{format}: server sent {sent}, client received {received}"
        );
        assert!(
            received > 40,
            "{code}/{format}: only {received} packets in the run"
        );
        // A gap in sequence numbers is a packet dropped for this client, and nothing else.
        assert_eq!(u(c, "dropped_packets"), receiver.gaps(), "{code}/{format}");
        let latency = check_latency("client network", &c["network_latency_ms"], true);
        assert_eq!(
            latency, sent,
            "{code}/{format}: one latency value per packet"
        );
        assert_eq!(
            check_latency("client ring wait", &c["ring_wait_ms"], true),
            sent
        );
        let high_water = u(c, "ring_high_water");
        assert!(
            high_water >= 1 && high_water <= u(c, "ring_capacity"),
            "{c}"
        );
        // Bytes: every message's payload plus 2-10 bytes of unmasked frame header each.
        let payload = receiver
            .payload_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = u(c, "bytes_sent");
        let frames = received + 1;
        assert!(
            bytes >= payload + 2 * frames && bytes <= payload + 10 * frames,
            "{code}/{format}: {bytes} bytes sent for {payload} bytes of payload in {frames} frames"
        );
        assert!(f(c, "bandwidth_bps") > 0.0);
        // The server's measure (tick to write returned) cannot exceed what the client sees
        // (tick to read), quantile by quantile, beyond the histogram's 1 % and clock reads —
        // except for a writer preempted right after its send: the send wakes the client's
        // reader, which may take the writer's CPU, and the writer then reads the clock late
        // while its client already has the packet. On a loaded machine (tests run without
        // real-time priority, beside other jobs) that is a scheduler slice, a few ms, for the
        // few packets in the tail of ~120.
        for (key, q, slack_ms) in [
            ("p50", 0.5, 1.0),
            ("p90", 0.9, 1.0),
            ("p99", 0.99, 6.0),
            ("max", 1.0, 6.0),
        ] {
            let server = f(&c["network_latency_ms"], key);
            let seen = receiver.latency_quantile(q);
            assert!(
                server <= seen * 1.01 + slack_ms,
                "{code}/{format}: server {key} {server} ms above the client's own {seen} ms"
            );
        }
        // Nor below it, the check: not below what the client sees minus loopback.
        // The kernel's receive stamp takes the client's own scheduling out of what it sees,
        // and on loopback the data is queued at the receiver before the server's send
        // returns, so the loopback term is nil: quantile by quantile the server's figure (a
        // bucket's highest value, from the tick's deadline) is at least the client's (from
        // the packet's timestamp, taken at or after the deadline), give or take clock reads.
        assert!(
            receiver.kernel_stamped() as u64 * 10 >= received * 9,
            "{code}/{format}: {} of {received} packets kernel-stamped",
            receiver.kernel_stamped()
        );
        for (key, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
            let server = f(&c["network_latency_ms"], key);
            let seen = receiver.kernel_latency_quantile(q);
            assert!(
                server >= seen - 0.02,
                "{code}/{format}: server {key} {server} ms below the {seen} ms the client's \
                 kernel saw"
            );
        }
    }
    let p = &doc["process"];
    assert!(u(p, "rss_bytes") > 1_000_000 && u(p, "threads") > 4, "{p}");
    assert!(
        f(p, "cpu_seconds") >= 0.0 && f(p, "uptime_seconds") > 0.0,
        "{p}"
    );
}

fn prometheus(
    server: &TestServer,
    query: &str,
    accept: Option<&str>,
    openmetrics: bool,
) -> Exposition {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let r = server.get(&format!("/metrics{query}"), &headers);
    assert_eq!(r.status, 200, "{}", r.body);
    let content_type = r.header("content-type").unwrap_or("");
    if openmetrics {
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        assert!(r.body.ends_with("# EOF\n"));
    } else {
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(!r.body.contains("# EOF"));
    }
    Exposition::parse(&r.body, openmetrics)
        .unwrap_or_else(|e| panic!("invalid exposition ({query} {accept:?}): {e}\n{}", r.body))
}

/// The exposition agrees with the JSON read at the same (paused) moment.
fn check_prometheus(x: &Exposition, doc: &Value, openmetrics: bool) {
    let m = &doc["metrics"];
    assert_eq!(x.value("phantomlink_sessions", &[]), Some(2.0));
    assert_eq!(x.value("phantomlink_clients", &[]), Some(3.0));
    // Counter samples end in `_total` in both formats (OpenMetrics drops it from the family).
    for (code, s) in m["sessions"].as_object().unwrap() {
        let session = [("session", code.as_str())];
        let count = x.value("phantomlink_tick_lateness_seconds_count", &session);
        assert_eq!(
            count,
            Some(u(&s["timing_error_ms"], "count") as f64),
            "{code}"
        );
        for (metric, field) in [
            ("phantomlink_packets_sent_total", "packets_sent"),
            ("phantomlink_packets_dropped_total", "dropped_packets"),
            ("phantomlink_packets_generated_total", "packets_generated"),
            ("phantomlink_session_memory_bytes", "memory_bytes"),
        ] {
            assert_eq!(
                x.value(metric, &session),
                Some(u(s, field) as f64),
                "{code}: {metric}"
            );
        }
        assert_eq!(x.value("phantomlink_session_paused", &session), Some(1.0));
        // Seconds in Prometheus, milliseconds in JSON: the same histogram.
        let sum = x
            .value("phantomlink_tick_lateness_seconds_sum", &session)
            .unwrap();
        let json_sum =
            f(&s["timing_error_ms"], "mean") * u(&s["timing_error_ms"], "count") as f64 / 1e3;
        assert!(
            (sum - json_sum).abs() <= 1e-9 + json_sum * 1e-9,
            "{sum} vs {json_sum}"
        );
        for c in s["clients"].as_array().unwrap() {
            let id = c["id"].to_string();
            let labels = [("session", code.as_str()), ("client", id.as_str())];
            for (metric, json) in [
                (
                    "phantomlink_network_latency_seconds_count",
                    u(&c["network_latency_ms"], "count"),
                ),
                (
                    "phantomlink_ring_wait_seconds_count",
                    u(&c["ring_wait_ms"], "count"),
                ),
                (
                    "phantomlink_client_packets_sent_total",
                    u(c, "packets_sent"),
                ),
                (
                    "phantomlink_client_ring_high_water",
                    u(c, "ring_high_water"),
                ),
            ] {
                assert_eq!(
                    x.value(metric, &labels),
                    Some(json as f64),
                    "{code}/{id}: {metric}"
                );
            }
            // Buckets span 1 µs to 25 ms, then +Inf.
            let les: Vec<String> = x
                .samples("phantomlink_network_latency_seconds_bucket")
                .iter()
                .filter(|s| s.labels["client"] == id)
                .map(|s| s.labels["le"].clone())
                .collect();
            assert_eq!(les.first().map(String::as_str), Some("0.000001"), "{les:?}");
            assert_eq!(&les[les.len() - 2..], ["0.025", "+Inf"], "{les:?}");
        }
    }
    for name in [
        "process_resident_memory_bytes",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(x.value(name, &[]).is_some_and(|v| v > 0.0), "{name}");
    }
    assert!(x.value("process_cpu_seconds_total", &[]).is_some());
    let kinds: Vec<(&str, &str)> = x
        .families
        .iter()
        .map(|f| (f.name.as_str(), f.kind.as_str()))
        .collect();
    let counter = |name: &str| -> String {
        if openmetrics {
            name.trim_end_matches("_total").to_string()
        } else {
            name.to_string()
        }
    };
    for (name, kind) in [
        ("phantomlink_tick_lateness_seconds".to_string(), "histogram"),
        (
            "phantomlink_network_latency_seconds".to_string(),
            "histogram",
        ),
        ("phantomlink_ring_wait_seconds".to_string(), "histogram"),
        (counter("phantomlink_packets_sent_total"), "counter"),
        (counter("phantomlink_clients_stalled_total"), "counter"),
        ("phantomlink_session_memory_bytes".to_string(), "gauge"),
    ] {
        assert!(
            kinds.contains(&(name.as_str(), kind)),
            "{name} {kind}: {kinds:?}"
        );
    }
}

/// The metric names in the guide, the alert rules and the Grafana dashboard are ones the
/// server exports (with clients connected, so every family has samples).
fn docs_use_exported_names(x: &Exposition) {
    let mut known: std::collections::HashSet<String> = x
        .families
        .iter()
        .flat_map(|f| f.samples.iter().map(|s| s.name.clone()))
        .collect();
    for f in &x.families {
        known.insert(f.name.clone());
        // OpenMetrics names counter families without `_total`.
        known.insert(f.name.trim_end_matches("_total").to_string());
    }
    for doc in [
        "docs/METRICS_GUIDE.md",
        "docs/prometheus/alerts.yml",
        "docs/prometheus/alerts_test.yml",
        "docs/grafana/phantomlink.json",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
        let mut names = 0;
        for prefix in ["phantomlink_", "process_"] {
            for (start, _) in text.match_indices(prefix) {
                let before = text[..start].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue; // inside a longer word
                }
                let name: String = text[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.ends_with('_') {
                    continue; // a prefix in a regular expression
                }
                names += 1;
                assert!(
                    known.contains(&name),
                    "{doc} uses {name}, which the server does not export"
                );
            }
        }
        assert!(names > 5, "{doc}: only {names} metric names");
    }
}

#[test]
fn json_and_prometheus_agree_with_the_clients() {
    let server = TestServer::start(engine());
    let a_json = Receiver::connect(&server.ws_url(&format!("/stream/{A}")));
    let a_msgpack = Receiver::connect(&server.ws_url(&format!("/stream/binary/{A}")));
    let b_json = Receiver::connect(&server.ws_url(&format!("/stream/{B}")));
    std::thread::sleep(Duration::from_millis(1500));

    // While streaming: running, not paused, counts rising.
    let live = server.metrics_json("");
    for code in [A, B] {
        let s = &live["metrics"]["sessions"][code];
        assert_eq!(s["is_running"], true);
        assert_eq!(s["is_paused"], false);
        assert!(u(s, "packets_generated") > 0, "{s}");
    }
    std::thread::sleep(Duration::from_millis(1500));

    for code in [A, B] {
        let r = server.post(&format!("/api/control/{code}/pause"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let receivers = [
        (A, &a_json, "json"),
        (A, &a_msgpack, "msgpack"),
        (B, &b_json, "json"),
    ];
    // Paused, the writers drain their rings: wait until each client got what it was sent
    // and two reads in a row agree.
    let mut previous = Value::Null;
    let doc = wait_for(Duration::from_secs(10), || {
        let doc = server.metrics_json("");
        let sessions = &doc["metrics"]["sessions"];
        let settled = [A, B].iter().all(|c| sessions[c]["is_paused"] == true)
            && receivers.iter().all(|(code, r, _)| {
                let c = sessions[code]["clients"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["remote"] == r.local.to_string()));
                c.is_some_and(|c| c["packets_sent"].as_u64() == Some(r.received()))
            });
        let stable = settled
            && frozen(&doc["metrics"]["sessions"]) == frozen(&previous["metrics"]["sessions"]);
        previous = doc.clone();
        stable.then_some(doc)
    })
    .unwrap_or(previous);
    check_json(&doc, &receivers);

    // Prometheus, read between two identical JSON reads: nothing moves while paused.
    let x = prometheus(&server, "?format=prometheus", None, false);
    check_prometheus(&x, &doc, false);
    let x = prometheus(&server, "", Some("text/plain"), false);
    check_prometheus(&x, &doc, false);
    docs_use_exported_names(&x);
    let x = prometheus(
        &server,
        "",
        Some("application/openmetrics-text; version=1.0.0"),
        true,
    );
    check_prometheus(&x, &doc, true);
    let after = server.metrics_json("");
    assert_eq!(
        frozen(&after["metrics"]["sessions"]),
        frozen(&doc["metrics"]["sessions"])
    );

    // ?session= narrows to one session; server-wide figures stay server-wide.
    let one = server.metrics_json(&format!("?session={B}"));
    let sessions = one["metrics"]["sessions"].as_object().unwrap();
    assert_eq!(sessions.keys().collect::<Vec<_>>(), [B]);
    assert_eq!(frozen(&sessions[B]), frozen(&doc["metrics"]["sessions"][B]));
    assert_eq!(u(&one["metrics"], "total_sessions"), 2);
    assert_eq!(u(&one["metrics"], "active_sessions"), 2);
    assert_eq!(u(&one["metrics"], "total_connections"), 3);
    let x = prometheus(
        &server,
        &format!("?format=prometheus&session={A}"),
        None,
        false,
    );
    let labelled: Vec<_> = x
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter_map(|s| s.labels.get("session"))
        .collect();
    assert!(!labelled.is_empty() && labelled.iter().all(|s| *s == A));
    for query in [
        "?session=no-such-session",
        "?session=no-such-session&format=prometheus",
    ] {
        let r = server.get(&format!("/metrics{query}"), &[]);
        assert_eq!(r.status, 404, "{query}: {}", r.body);
        assert!(r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("no-such-session"));
    }
    let r = server.get("/metrics?format=xml", &[]);
    assert_eq!(r.status, 400, "{}", r.body);

    // Clients leave: their series go, the session totals stay.
    let sent_before: Vec<u64> = [A, B]
        .iter()
        .map(|c| u(&doc["metrics"]["sessions"][c], "packets_sent"))
        .collect();
    a_json.stop();
    a_msgpack.stop();
    b_json.stop();
    let gone = wait_for(Duration::from_secs(10), || {
        let doc = server.metrics_json("");
        (u(&doc["metrics"], "total_connections") == 0).then_some(doc)
    })
    .expect("clients leave");
    assert_eq!(u(&gone["metrics"], "active_sessions"), 0);
    for (code, before) in [A, B].iter().zip(sent_before) {
        let s = &gone["metrics"]["sessions"][code];
        assert_eq!(
            u(s, "packets_sent"),
            before,
            "{code}: session totals keep departed clients"
        );
        assert!(s["clients"].as_array().unwrap().is_empty());
        assert_eq!(u(s, "connections_closed"), if *code == A { 2 } else { 1 });
    }
    let x = prometheus(&server, "?format=prometheus", None, false);
    assert!(
        x.families
            .iter()
            .flat_map(|f| &f.samples)
            .all(|s| !s.labels.contains_key("client")),
        "series of departed clients remain"
    );
    assert_eq!(
        x.value("phantomlink_packets_sent_total", &[("session", A)]),
        Some(sent_before_value(&gone, A))
    );
}

fn sent_before_value(doc: &Value, code: &str) -> f64 {
    u(&doc["metrics"]["sessions"][code], "packets_sent") as f64
}

/// A client that never reads fills its buffer: drops and a full ring for it, nobody else.
#[test]
fn a_slow_client_drops_alone() {
    let server = TestServer::start(EngineConfig {
        ring_capacity: 16,
        stall_timeout: Duration::from_secs(60),
        ..engine()
    });
    let code = "metrics-slow";
    let healthy = Receiver::connect(&server.ws_url(&format!("/stream/{code}")));
    // Small socket buffers, so that the kernel does not absorb minutes of stream.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    let slow_addr = stream.local_addr().unwrap().to_string();
    let (slow, _) = tungstenite::client(server.ws_url(&format!("/stream/{code}")), stream)
        .expect("slow client handshake");

    let started = std::time::Instant::now();
    let doc = wait_for(Duration::from_secs(30), || {
        let doc = server.metrics_json(&format!("?session={code}"));
        let s = &doc["metrics"]["sessions"][code];
        (client(s, &slow_addr)["dropped_packets"].as_u64() > Some(5)).then_some(doc)
    })
    .expect("the slow client starts losing packets");
    eprintln!("slow client dropping after {:?}", started.elapsed());
    let s = &doc["metrics"]["sessions"][code];
    let slow_metrics = client(s, &slow_addr);
    assert_eq!(u(slow_metrics, "ring_high_water"), 16, "{slow_metrics}");
    let fine = client(s, &healthy.local.to_string());
    assert_eq!(u(fine, "dropped_packets"), 0, "{fine}");
    assert!(u(fine, "ring_high_water") < 16, "{fine}");
    assert_eq!(
        u(s, "dropped_packets"),
        u(slow_metrics, "dropped_packets") + u(fine, "dropped_packets")
    );
    assert_eq!(healthy.gaps(), 0);
    drop(slow);
    healthy.stop();
}

#[test]
fn the_strict_parser_rejects_malformed_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{s=\"x\"} 1\n\
                # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    Exposition::parse(good, false).expect("valid");
    for (bad, why) in [
        ("a_total 1\n", "no TYPE"),
        ("# TYPE a gauge\na 1", "no final newline"),
        ("# TYPE a gauge\n\na 1\n", "blank line"),
        ("# TYPE a gauge\nb 1\n", "sample outside its family"),
        ("# TYPE a gauge\na{x=\"1\",} 1\n", "trailing comma"),
        ("# TYPE a gauge\na{x=1} 1\n", "unquoted"),
        ("# TYPE a gauge\na 1\na 2\n", "duplicate series"),
        ("# TYPE a gauge\n# TYPE b gauge\nb 1\n# HELP a late\n", "family split"),
        ("# TYPE a gauge\na one\n", "bad value"),
        ("# TYPE a counter\na -1\n", "negative counter"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "not cumulative"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "+Inf != count"),
        ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
        ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "no _sum"),
        ("# TYPE a gauge\n# some comment\na 1\n", "stray comment"),
    ] {
        assert!(Exposition::parse(bad, false).is_err(), "accepted ({why}): {bad:?}");
    }
    let om = "# TYPE a counter\na_total 1\n# EOF\n";
    Exposition::parse(om, true).expect("valid OpenMetrics");
    assert!(
        Exposition::parse("# TYPE a counter\na_total 1\n", true).is_err(),
        "no # EOF"
    );
    assert!(Exposition::parse("# TYPE a_total counter\na_total 1\n# EOF\n", true).is_err());
}
