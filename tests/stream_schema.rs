//! The wire format of DESIGN.md, checked on real sockets: the metadata message, then data
//! messages with every field, its JSON type and its value against the packet table, for JSON
//! text frames on `/stream/{code}` and MessagePack binary frames on `/stream/binary/{code}`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use phantomlink::dataset::PacketTable;
use serde_json::{json, Value};

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The metadata message DESIGN.md specifies for this dataset and session.
fn expected_metadata(server: &TestServer, code: &str) -> Value {
    via_json_text(&json!({
        "type": "metadata",
        "data": {"dataset": "MC_Maze", "total_packets": 11748, "frequency_hz": 40,
                 "num_channels": 142, "duration_seconds": 293.7, "num_trials": 100},
        "session": {"code": code, "url": format!("ws://{}/stream/{code}", server.addr)},
    }))
}

/// A bin outside every trial whose successor is the first bin of a trial.
fn bin_before_a_trial(table: &PacketTable) -> u32 {
    (1..table.num_bins() as u32 - 1)
        .find(|&b| table.row(b).trial_id.is_none() && table.row(b + 1).trial_id.is_some())
        .expect("the recording has gaps between trials")
}

fn is_f64_or_null(v: &Value) -> bool {
    v.is_null() || v.is_f64()
}

/// Checks one `data` object: field set and JSON types, fixed values, the trial fields
/// against the trial table, and the whole row against the packet table.
#[track_caller]
fn check_data(table: &PacketTable, data: &Value) {
    let object = data
        .as_object()
        .unwrap_or_else(|| panic!("data is not an object: {data}"));
    for key in [
        "timestamp",
        "sequence_number",
        "spikes",
        "kinematics",
        "intention",
        "trial_id",
        "trial_time_ms",
        "bin_index",
        "trial_elapsed_ms",
    ] {
        assert!(object.contains_key(key), "data lacks {key}: {data}");
    }
    // timestamp: Unix seconds at packet generation (same machine, so close to our clock).
    let timestamp = &data["timestamp"];
    assert!(timestamp.is_f64(), "timestamp is not a float: {timestamp}");
    let age = now_unix() - timestamp.as_f64().unwrap();
    assert!(
        (-5.0..60.0).contains(&age),
        "timestamp {timestamp} is {age} s old"
    );
    assert!(data["sequence_number"].is_u64() && seq(data) >= 1, "{data}");

    let spikes = &data["spikes"];
    let ids = spikes["channel_ids"].as_array().expect("channel_ids array");
    let counts = spikes["spike_counts"]
        .as_array()
        .expect("spike_counts array");
    assert_eq!(ids.len(), NUM_CHANNELS);
    assert_eq!(counts.len(), NUM_CHANNELS);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(id.as_u64(), Some(i as u64), "channel_ids[{i}] = {id}");
    }
    assert!(
        counts.iter().all(Value::is_u64),
        "spike_counts not integers: {counts:?}"
    );
    assert!(spikes["bin_size_ms"].is_f64(), "bin_size_ms is not a float");
    assert_eq!(spikes["bin_size_ms"].as_f64(), Some(25.0));

    for key in ["vx", "vy", "x", "y"] {
        let v = &data["kinematics"][key];
        assert!(
            v.is_f64() && v.as_f64().unwrap().is_finite(),
            "kinematics.{key} = {v}"
        );
    }

    let bin_index = &data["bin_index"];
    assert!(bin_index.is_u64(), "bin_index = {bin_index}");
    let bin = bin_index.as_u64().unwrap();
    assert!(bin < TOTAL_PACKETS);
    let trial_time = &data["trial_time_ms"];
    assert!(
        trial_time.is_f64(),
        "trial_time_ms is not a float: {trial_time}"
    );
    assert_eq!(
        trial_time.as_f64(),
        Some(bin as f64 * 25.0),
        "trial_time_ms of bin {bin}"
    );

    let intention = &data["intention"];
    match data["trial_id"].as_u64() {
        None => {
            assert!(
                data["trial_id"].is_null(),
                "trial_id = {}",
                data["trial_id"]
            );
            assert!(
                data["trial_elapsed_ms"].is_null(),
                "outside a trial: {data}"
            );
            for key in ["target_id", "target_x", "target_y", "distance_to_target"] {
                assert!(
                    intention[key].is_null(),
                    "intention.{key} outside a trial: {data}"
                );
            }
        }
        Some(trial_id) => {
            let trial = table
                .trial(trial_id as u32)
                .expect("trial_id is in the trial table");
            let start_ms = trial.start_time * 1000.0;
            let t = bin as f64 * 25.0;
            assert!(
                t > start_ms - 25.0 && t < trial.stop_time * 1000.0,
                "bin {bin} ({t} ms) is not in trial {trial_id} [{start_ms}, {} ms)",
                trial.stop_time * 1000.0
            );
            let elapsed = data["trial_elapsed_ms"].as_f64().expect("trial_elapsed_ms");
            assert!(
                (elapsed - (t - start_ms)).abs() < 1e-6,
                "trial_elapsed_ms {elapsed}"
            );
            assert!(intention["target_id"].is_u64());
            assert_eq!(
                intention["target_id"].as_u64(),
                trial.target_id.map(u64::from)
            );
            for key in ["target_x", "target_y", "distance_to_target"] {
                assert!(
                    intention[key].is_f64(),
                    "intention.{key} = {}",
                    intention[key]
                );
            }
            let dx =
                intention["target_x"].as_f64().unwrap() - data["kinematics"]["x"].as_f64().unwrap();
            let dy =
                intention["target_y"].as_f64().unwrap() - data["kinematics"]["y"].as_f64().unwrap();
            let distance = intention["distance_to_target"].as_f64().unwrap();
            assert!(
                (distance - dx.hypot(dy)).abs() < 1e-6,
                "distance_to_target {distance}"
            );
        }
    }
    for key in ["target_x", "target_y", "distance_to_target"] {
        assert!(is_f64_or_null(&intention[key]));
    }
    assert!(is_f64_or_null(&data["trial_elapsed_ms"]));

    // Everything else: exactly the packet table's row.
    assert_eq!(
        row_part(data),
        expected_row(table, bin as u32),
        "packet of bin {bin} differs from PacketTable::row"
    );
}

#[test]
fn json_and_msgpack_streams_follow_the_wire_format() {
    let server = TestServer::start();
    let table = table();
    let code = "schema-both";

    let mut json_client = server.ws(&format!("/stream/{code}"));
    let metadata = json_client.metadata();
    assert_eq!(metadata, expected_metadata(&server, code));

    // The first subscriber starts the session's clock at the start of the recording.
    let first = json_client.data_n(5, Duration::from_secs(3));
    for (i, data) in first.iter().enumerate() {
        assert_eq!((seq(data), bin(data)), (i as u64 + 1, i as u64));
        check_data(&table, data);
    }

    let mut binary_client = server.ws(&format!("/stream/binary/{code}"));
    let binary_metadata = via_json_text(&binary_client.metadata());
    assert_eq!(binary_metadata["type"], "metadata");
    assert_eq!(binary_metadata["data"], metadata["data"]);
    assert_eq!(binary_metadata["session"]["code"], code);
    let url = binary_metadata["session"]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("ws://{}/stream/binary/{code}", server.addr),
        "a binary client is told its own endpoint"
    );

    // Play across the start of a trial, so packets outside and inside one are both checked.
    let before = bin_before_a_trial(&table);
    let reply = server.control(code, &format!("seek?packet_id={}", before - 3));
    assert_eq!(reply["packet_id"], before - 3);
    let until = u64::from(before) + 8;
    let json_packets = json_client.data_until(400, Duration::from_secs(6), |d| bin(d) >= until);
    let binary_packets = binary_client.data_until(400, Duration::from_secs(6), |d| bin(d) >= until);
    assert_contiguous(&json_packets, "JSON client");
    assert_contiguous(&binary_packets, "MessagePack client");

    let (mut outside, mut inside) = (0, 0);
    for data in json_packets.iter().chain(&binary_packets) {
        check_data(&table, data);
        if data["trial_id"].is_null() {
            outside += 1;
        } else {
            inside += 1;
        }
    }
    assert!(
        outside >= 2 && inside >= 2,
        "{outside} outside / {inside} inside a trial"
    );
    // After the seek the stream continues from the sought bin, one bin per packet.
    let sought: Vec<u64> = json_packets
        .iter()
        .map(bin)
        .skip_while(|&b| b != u64::from(before) - 3)
        .collect();
    let expected: Vec<u64> = (u64::from(before) - 3..=until).collect();
    assert_eq!(sought, expected, "bins after the seek");

    // Both formats carry the same packet for the same sequence number, field for field
    // (timestamp included: a packet is built once per tick, then encoded per format).
    let by_seq: BTreeMap<u64, &Value> = json_packets.iter().map(|d| (seq(d), d)).collect();
    let mut compared = 0;
    for data in &binary_packets {
        if let Some(json_data) = by_seq.get(&seq(data)) {
            assert_eq!(&via_json_text(data), *json_data, "packet {}", seq(data));
            compared += 1;
        }
    }
    assert!(
        compared >= 10,
        "only {compared} packets seen by both clients"
    );
}

#[test]
fn a_msgpack_only_session_streams_from_the_first_bin() {
    let server = TestServer::start();
    let table = table();
    let code = "schema-binary";
    let mut client = server.ws(&format!("/stream/binary/{code}"));
    let metadata = via_json_text(&client.metadata());
    let expected = expected_metadata(&server, code);
    assert_eq!(metadata["data"], expected["data"]);
    assert_eq!(metadata["session"]["code"], code);
    let packets = client.data_n(10, Duration::from_secs(3));
    for (i, data) in packets.iter().enumerate() {
        assert_eq!((seq(data), bin(data)), (i as u64 + 1, i as u64));
        check_data(&table, data);
    }
}
