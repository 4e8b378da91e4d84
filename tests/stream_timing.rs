//! Timing and playback control over real sockets: 40 Hz, contiguous sequence numbers, one
//! shared timeline for every client of a session, pause, resume without a burst, seek, stop.
//!
//! Rates are checked with generous tolerances and ordering rather than tight timing: the
//! machine running the tests may be loaded.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use phantomlink::engine::EngineConfig;
use serde_json::Value;

fn timestamp(data: &Value) -> f64 {
    data["timestamp"].as_f64().expect("timestamp")
}

/// With the default engine settings: about 40 packets per second over 3 s, none missing,
/// and server timestamps 25 ms apart on average.
#[test]
fn streams_at_40_hz_without_gaps() {
    let server = TestServer::with_configs(EngineConfig::default(), test_server_config());
    let mut client = server.ws("/stream/timing-rate");
    client.metadata();
    let first = client.next_data();
    let started = Instant::now();
    let packets = client.data_for(Duration::from_secs(3));
    let elapsed = started.elapsed().as_secs_f64();
    let rate = packets.len() as f64 / elapsed;
    assert!(
        (100..=140).contains(&packets.len()),
        "{} packets in {elapsed:.2} s ({rate:.1} Hz)",
        packets.len()
    );
    let mut all = vec![first];
    all.extend(packets);
    assert_contiguous(&all, "single client");
    // A fresh session without seeks plays bin n - 1 as packet n.
    for data in &all {
        assert_eq!(bin(data), seq(data) - 1, "{data}");
    }
    let span = timestamp(all.last().unwrap()) - timestamp(&all[0]);
    let period_ms = span / (all.len() - 1) as f64 * 1e3;
    assert!(
        (22.5..=27.5).contains(&period_ms),
        "mean period {period_ms:.2} ms from server timestamps"
    );
}

/// Clients that join a running session share its timeline: nobody's join resets it, and
/// every client sees the same bin for the same sequence number.
#[test]
fn clients_of_one_session_share_one_timeline() {
    let server = TestServer::start();
    let code = "timing-shared";
    let mut first = server.ws(&format!("/stream/{code}"));
    first.metadata();
    let early = first.data_n(8, Duration::from_secs(3));
    let mut second = server.ws(&format!("/stream/{code}"));
    second.metadata();
    let mut third = server.ws(&format!("/stream/binary/{code}"));
    third.metadata();
    let joined_at = seq(early.last().unwrap());

    let readers: Vec<_> = [first, second, third]
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let packets = client.data_for(Duration::from_millis(1500));
                (client.path.clone(), packets)
            })
        })
        .collect();
    let results: Vec<(String, Vec<Value>)> =
        readers.into_iter().map(|r| r.join().unwrap()).collect();

    let mut mapping: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut seen_by_all: Option<std::collections::BTreeSet<u64>> = None;
    for (path, packets) in &results {
        assert!(
            packets.len() >= 30,
            "{path}: only {} packets",
            packets.len()
        );
        assert_contiguous(packets, path);
        let first_seq = seq(&packets[0]);
        assert!(
            first_seq > joined_at.saturating_sub(1),
            "{path}: starts at {first_seq}, the session was already at {joined_at}"
        );
        for data in packets {
            let (s, b) = (seq(data), bin(data));
            if let Some((other_bin, other)) = mapping.get(&s) {
                assert_eq!(
                    b, *other_bin,
                    "sequence {s}: {path} has bin {b}, {other} {other_bin}"
                );
            }
            mapping.insert(s, (b, path.clone()));
            assert_eq!(b, s - 1, "{path}: the timeline was reset or skewed at {s}");
        }
        let seqs = packets.iter().map(seq).collect();
        seen_by_all = Some(match seen_by_all {
            None => seqs,
            Some(previous) => previous.intersection(&seqs).copied().collect(),
        });
    }
    let common = seen_by_all.unwrap().len();
    assert!(
        common >= 20,
        "only {common} packets seen by all three clients"
    );
}

/// Pause stops packet generation (at most the tick in flight), resume continues with the
/// next sequence number and bin, paced from the resume instant rather than in a burst.
#[test]
fn pause_stops_packets_and_resume_continues_without_a_burst() {
    let server = TestServer::start();
    let code = "timing-pause";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    client.data_n(10, Duration::from_secs(3));
    let before = server.position(code)["sequence_number"].as_u64().unwrap();
    let asked = Instant::now();
    let reply = server.control(code, "pause");
    assert_eq!(reply["status"], "paused");
    let position = server.wait_paused(code, true);
    let paused_at = position["sequence_number"].as_u64().unwrap();
    // Ticks that can fall between the two requests: one per 25 ms, plus the one in flight,
    // plus a little catch-up slack for a loaded machine.
    let allowed = before + (asked.elapsed().as_millis() as u64 / 25) + 3;
    assert!(
        paused_at <= allowed,
        "paused at {paused_at}, asked at {before}"
    );

    // Everything generated before the pause arrives; nothing after it.
    let buffered = client.drain_until_quiet(Duration::from_millis(400), Duration::from_secs(5));
    if let Some(last) = buffered.last() {
        assert_eq!(seq(last), paused_at, "last packet before the pause");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.try_next_data(Duration::from_millis(100)).is_none());
    let still = server.position(code);
    assert_eq!(
        still["sequence_number"], paused_at,
        "packets generated while paused"
    );
    assert_eq!(still["paused"], true);
    let bin_at_pause = still["packet_id"].as_u64().unwrap();

    let resumed = Instant::now();
    assert_eq!(server.control(code, "resume")["status"], "resumed");
    let after = client.data_n(10, Duration::from_secs(3));
    let took = resumed.elapsed();
    assert_eq!(
        seq(&after[0]),
        paused_at + 1,
        "resume continues the sequence"
    );
    assert_eq!(
        bin(&after[0]),
        bin_at_pause,
        "resume continues from the paused position"
    );
    assert_contiguous(&after, "after resume");
    // Ten packets at 25 ms take 9 periods at least: a burst would deliver them at once.
    assert!(
        took >= Duration::from_millis(200),
        "10 packets {took:?} after resume"
    );
    let span = timestamp(&after[9]) - timestamp(&after[0]);
    assert!(
        span >= 0.2,
        "server timestamps of 10 packets span {span:.3} s"
    );
    assert_eq!(server.position(code)["paused"], false);
}

/// Seek by packet_id (query), by position_seconds (query and JSON body): the stream jumps
/// there without breaking the sequence, and the position endpoint agrees.
#[test]
fn seek_moves_the_stream_and_position_agrees() {
    let server = TestServer::start();
    let code = "timing-seek";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    client.data_n(3, Duration::from_secs(3));

    let reply = server.control(code, "seek?packet_id=5000");
    assert_eq!(
        (reply["status"].as_str(), reply["packet_id"].as_u64()),
        (Some("seeked"), Some(5000))
    );
    assert_eq!(reply["position_seconds"].as_f64(), Some(125.0));
    let packets = client.data_until(200, Duration::from_secs(5), |d| bin(d) == 5000);
    let next = client.data_n(3, Duration::from_secs(2));
    assert_contiguous(&[packets.clone(), next.clone()].concat(), "across the seek");
    assert!(
        packets[..packets.len() - 1].iter().all(|d| bin(d) < 400),
        "stale packets"
    );
    assert_eq!(
        packets.last().unwrap()["trial_time_ms"].as_f64(),
        Some(125_000.0)
    );
    assert_eq!(
        next.iter().map(bin).collect::<Vec<_>>(),
        vec![5001, 5002, 5003]
    );

    let reply = server.control(code, "seek?position_seconds=150");
    assert_eq!(reply["packet_id"], 6000);
    let packets = client.data_until(200, Duration::from_secs(5), |d| bin(d) == 6000);
    assert_eq!(
        packets.last().unwrap()["trial_time_ms"].as_f64(),
        Some(150_000.0)
    );
    assert!(packets[..packets.len() - 1]
        .iter()
        .all(|d| (5000..5400).contains(&bin(d))));

    // JSON body; 200.5 s is bin 8020.
    let reply = server
        .post_json(
            &format!("/api/control/{code}/seek"),
            &serde_json::json!({"position_seconds": 200.5}),
        )
        .ok_json();
    assert_eq!(reply["packet_id"], 8020);
    let packets = client.data_until(200, Duration::from_secs(5), |d| bin(d) == 8020);
    assert_eq!(
        packets.last().unwrap()["trial_time_ms"].as_f64(),
        Some(200_500.0)
    );

    // While paused, a seek moves the position the endpoint reports; resume plays from there.
    server.control(code, "pause");
    server.wait_paused(code, true);
    client.drain_until_quiet(Duration::from_millis(300), Duration::from_secs(5));
    server.control(code, "seek?packet_id=7000");
    let mut position = Value::Null;
    assert!(
        wait_until(Duration::from_secs(2), || {
            position = server.position(code);
            position["packet_id"] == 7000
        }),
        "position after seek while paused: {position}"
    );
    assert_eq!(position["position_seconds"].as_f64(), Some(175.0));
    assert_eq!(position["current_index"], 7000);
    assert_eq!(position["paused"], true);
    assert_eq!(position["total_packets"], TOTAL_PACKETS);
    assert_eq!(position["duration_seconds"].as_f64(), Some(293.7));
    server.control(code, "resume");
    let data = client.next_data();
    assert_eq!(bin(&data), 7000);
    assert_eq!(data["trial_time_ms"].as_f64(), Some(175_000.0));
}

/// Stop pauses and rewinds to the start; resume plays bin 0 with the next sequence number.
#[test]
fn stop_rewinds_to_the_start_and_pauses() {
    let server = TestServer::start();
    let code = "timing-stop";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    server.control(code, "seek?packet_id=3000");
    client.data_until(200, Duration::from_secs(5), |d| bin(d) == 3005);

    assert_eq!(server.control(code, "stop")["status"], "stopped");
    let mut position = Value::Null;
    assert!(
        wait_until(Duration::from_secs(3), || {
            position = server.position(code);
            position["paused"] == true && position["packet_id"] == 0
        }),
        "after stop: {position}"
    );
    assert_eq!(position["position_seconds"].as_f64(), Some(0.0));
    let last_seq = position["sequence_number"].as_u64().unwrap();
    let buffered = client.drain_until_quiet(Duration::from_millis(400), Duration::from_secs(5));
    assert!(
        buffered.iter().all(|d| bin(d) >= 3000),
        "rewound packets before resume"
    );
    assert!(
        client.try_next_data(Duration::from_millis(300)).is_none(),
        "packets while stopped"
    );

    server.control(code, "resume");
    let after = client.data_n(3, Duration::from_secs(3));
    assert_eq!(after.iter().map(bin).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        seq(&after[0]),
        last_seq + 1,
        "stop does not reset the sequence"
    );
    assert_eq!(after[0]["trial_time_ms"].as_f64(), Some(0.0));
}
