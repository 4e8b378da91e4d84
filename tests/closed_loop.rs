//! Closed-loop decoder feedback, end to end: the example decoder (`phantomlink-decoder`)
//! trains on the stream and answers every packet; the server matches its answers and reports
//! round-trip latency and velocity error, which must beat a decoder that answers zeros on the
//! same session. A hand-written client checks the error replies and late answers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn decoder(server: &TestServer, code: &str, extra: &[&str]) -> Reaped {
    let url = server.ws_url(&format!("/stream/{code}"));
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_phantomlink-decoder"))
            .args(["--url", &url, "--run-seconds", "60"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("decoder binary starts"),
    )
}

fn decoders(server: &TestServer, code: &str) -> Vec<Value> {
    let response = server.get(&format!("/metrics?session={code}"));
    if response.status != 200 {
        return Vec::new(); // the decoders have not connected yet
    }
    let metrics = response.json();
    metrics["metrics"]["sessions"][code]["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| (!c["decoder"].is_null()).then(|| c["decoder"].clone()))
        .collect()
}

#[test]
fn a_trained_decoder_beats_zeros_and_its_round_trips_are_recorded() {
    let server = TestServer::start();
    let code = "closed-loop";
    // Both wait 480 packets (one trains on them meanwhile), so they answer the same packets,
    // and the training data does not depend on how busy the machine is.
    let _zero = decoder(&server, code, &["--zero", "--train-packets", "480"]);
    let _ridge = decoder(&server, code, &["--train-packets", "480", "--history", "2"]);
    let mut seen = Vec::new();
    let ready = wait_until(Duration::from_secs(40), || {
        seen = decoders(&server, code);
        seen.len() == 2
            && seen
                .iter()
                .all(|d| d["matched"].as_u64().unwrap_or(0) >= 80)
    });
    assert!(ready, "both decoders answered: {seen:?}");
    // The zero decoder's error is the true speed; a trained decoder's is smaller.
    seen.sort_by(|a, b| {
        let mean = |d: &Value| d["velocity_error"]["mean"].as_f64().unwrap_or(f64::MAX);
        mean(b).total_cmp(&mean(a))
    });
    let (zero, ridge) = (&seen[0], &seen[1]);
    for d in [zero, ridge] {
        assert_eq!(d["malformed"], 0, "{d}");
        let rt = &d["round_trip_ms"];
        assert!(rt["count"].as_u64().unwrap() >= 80, "{rt}");
        assert!(
            rt["p50"].as_f64().unwrap() > 0.0 && rt["p99"].as_f64().unwrap() < 1000.0,
            "{rt}"
        );
    }
    let (z, r) = (
        zero["velocity_error"]["mean"].as_f64().unwrap(),
        ridge["velocity_error"]["mean"].as_f64().unwrap(),
    );
    assert!(
        r < 0.8 * z,
        "trained decoder error {r:.1} mm/s vs zeros {z:.1} mm/s"
    );

    let text = server
        .get(&format!("/metrics?session={code}&format=prometheus"))
        .text();
    assert!(text.contains("phantomlink_decoder_round_trip_seconds_count{session=\"closed-loop\""));
    assert!(text.contains("outcome=\"matched\""));
}

#[test]
fn bad_messages_get_error_replies_and_old_answers_count_as_late() {
    let server = TestServer::with(|engine, _| engine.feedback_window = 20);
    let code = "closed-loop-errors";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    let first = client.next_data();
    let first_seq = first["sequence_number"].as_u64().unwrap();

    client
        .ws
        .send(Message::Text(r#"{"type": "hello"}"#.into()))
        .unwrap();
    let reply = wait_for_error(&mut client);
    assert!(
        reply["detail"]
            .as_str()
            .unwrap()
            .contains("unknown message type"),
        "{reply}"
    );

    // Let more than the window pass, then answer the first packet: late, not an error.
    client.data_n(60, Duration::from_secs(5));
    let answer = json!({"type": "decoded", "sequence_number": first_seq, "vx": 0.0, "vy": 0.0});
    client.ws.send(Message::Text(answer.to_string())).unwrap();
    // And answer a recent one in MessagePack: matched.
    let recent = client.next_data()["sequence_number"].as_u64().unwrap();
    let answer = json!({"type": "decoded", "sequence_number": recent, "vx": 1.0, "vy": 2.0});
    client
        .ws
        .send(Message::Binary(rmp_serde::to_vec_named(&answer).unwrap()))
        .unwrap();

    let mut decoder = Value::Null;
    let counted = wait_until(Duration::from_secs(5), || {
        decoder = decoders(&server, code).pop().unwrap_or(Value::Null);
        decoder["late"] == 1 && decoder["matched"] == 1
    });
    assert!(counted, "{decoder}");
    assert_eq!(decoder["malformed"], 1);
    assert_eq!(decoder["messages"], 3);
    // The stream went on throughout: no gap in sequence numbers.
    let more = client.data_n(5, Duration::from_secs(3));
    assert_contiguous(&more, "after feedback");
}

/// Reads until an `error` message arrives (data keeps flowing meanwhile).
fn wait_for_error(client: &mut WsClient) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(message) = client.next_message(Duration::from_secs(1)) {
            if message["type"] == "error" {
                return message;
            }
        }
    }
    panic!("no error reply within 5 s");
}

#[test]
fn an_echo_client_sees_the_round_trip_the_server_reports() {
    let server = TestServer::start();
    let code = "closed-loop-echo";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    // The client's own view: from the packet's generation (its timestamp, same host clock)
    // to its answer leaving. The server's view: from the packet's write to the answer's
    // arrival. Both span the same loopback hops and the client's own delay.
    let mut own = Vec::new();
    for _ in 0..120 {
        let data = client.next_data();
        let answer = json!({"type": "decoded", "sequence_number": data["sequence_number"],
                            "vx": 0.0, "vy": 0.0});
        client.ws.send(Message::Text(answer.to_string())).unwrap();
        let sent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        own.push((sent - data["timestamp"].as_f64().unwrap()) * 1e3);
    }
    own.sort_by(f64::total_cmp);
    let own_p50 = own[own.len() / 2];
    let mut decoder = Value::Null;
    let counted = wait_until(Duration::from_secs(5), || {
        decoder = decoders(&server, code).pop().unwrap_or(Value::Null);
        decoder["messages"].as_u64().unwrap_or(0) >= 120
    });
    assert!(counted, "{decoder}");
    // Answers sent the moment a packet arrives must find it: the writer logs a packet before
    // writing it, so an immediate answer is never "unknown".
    assert_eq!(decoder["unknown"], 0, "{decoder}");
    assert_eq!(
        decoder["matched"].as_u64().unwrap() + decoder["late"].as_u64().unwrap(),
        120
    );
    let server_p50 = decoder["round_trip_ms"]["p50"].as_f64().unwrap();
    // Loopback hops are tens of microseconds; a loaded test machine adds scheduling delay to
    // both views alike, so allow a few milliseconds.
    assert!(
        (own_p50 - server_p50).abs() < 5.0,
        "client sees {own_p50:.3} ms, server reports {server_p50:.3} ms"
    );
}

#[test]
fn the_same_seed_and_noise_give_the_same_counts_on_every_run() {
    let run = || {
        let server = TestServer::start();
        let created = server.post("/api/sessions/create?custom_code=noisy-replay&noise=moderate");
        assert_eq!(created.status, 200, "{}", created.text());
        let mut client = server.ws("/stream/noisy-replay");
        client.metadata();
        client
            .data_n(40, Duration::from_secs(5))
            .into_iter()
            .map(|d| {
                (
                    d["sequence_number"].clone(),
                    d["spikes"]["spike_counts"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (first, second) = (run(), run());
    assert_eq!(first.len(), 40);
    assert_eq!(
        first, second,
        "same seed, same noise: byte-identical counts"
    );
    // And the noise is really there: counts differ from the clean table.
    let clean = table();
    let changed = first
        .iter()
        .filter(|(seq, counts)| {
            let bin = seq.as_u64().unwrap() - 1; // a fresh session plays bin 0 as packet 1
            let row: Vec<Value> = clean
                .row(bin as u32)
                .spike_counts
                .iter()
                .map(|&c| json!(c))
                .collect();
            counts.as_array().unwrap() != &row
        })
        .count();
    assert!(
        changed > 30,
        "moderate noise changed only {changed} of 40 packets"
    );
}

/// `phantomlink-loadgen --closed-loop`: every client (JSON and MessagePack, mixed) answers
/// every packet, and the server matches the answers: none unknown or malformed, and a round
/// trip is measured.
#[test]
fn loadgen_closed_loop_is_matched_by_the_server() {
    let server = TestServer::start();
    let report = loadgen_report(&server, "3", &["--format", "mixed", "--closed-loop"]);
    let cl = &report["closed_loop"];
    assert_eq!(cl["clients_reporting"], 4, "{cl}");
    assert!(cl["answers_sent"].as_u64().unwrap() > 0, "{cl}");
    assert!(cl["matched"].as_u64().unwrap() > 0, "{cl}");
    assert_eq!(cl["unknown"], 0, "{cl}");
    assert_eq!(cl["malformed"], 0, "{cl}");
    assert_eq!(cl["flagged"], false, "{cl}");
    assert!(
        cl["round_trip_ms_p99"]["max"].as_f64().unwrap() > 0.0,
        "{cl}"
    );
}
