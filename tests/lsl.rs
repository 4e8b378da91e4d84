//! LSL outlets end to end (`cargo test --features lsl`): an in-process server with LSL on,
//! inlets of the same `lsl` crate resolving its three outlets on this machine only, and their
//! samples checked against the WebSocket packets of the same sequence number.
//!
//! Every liblsl call in this process reads `lsl_api.cfg` at the repository root (machine
//! scope, IPv6 off, loopback only), set through `LSLAPICFG` before the first one.
#![cfg(feature = "lsl")]

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use ::lsl::{ChannelFormat, Pullable, StreamInfo, StreamInlet};
use common::{bin, seq, table, test_engine_config, test_server_config, TestServer, WsClient};
use phantomlink::config::LslConfig;
use phantomlink::engine::Registry;
use phantomlink::lsl::{intention_values, LslSource, Stream};
use serde_json::Value;

/// Points liblsl at the machine-only configuration; must run before any LSL call.
fn machine_only_lsl() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/lsl_api.cfg");
        assert!(std::path::Path::new(path).is_file(), "{path} is missing");
        std::env::set_var("LSLAPICFG", path);
    });
}

/// A server whose sessions publish LSL outlets.
fn lsl_server() -> TestServer {
    machine_only_lsl();
    let registry = Registry::new(table(), test_engine_config())
        .with_tap_source(Arc::new(LslSource::new(LslConfig::default())));
    TestServer::of_registry(registry, test_server_config())
}

/// A session code no other test process on this machine uses.
fn unique_code(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}

/// Resolves the stream named `name` (bounded wait) and opens an inlet on it.
fn inlet(name: &str) -> (StreamInlet, StreamInfo) {
    let found = ::lsl::resolve_byprop("name", name, 1, 5.0).expect("resolve");
    assert_eq!(
        found.len(),
        1,
        "stream {name} resolved {} times",
        found.len()
    );
    let inlet = StreamInlet::new(&found[0], 360, 0, false).expect("inlet");
    inlet.open_stream(5.0).expect("open stream");
    let info = inlet.info(5.0).expect("full info");
    (inlet, info)
}

/// `(label, unit, type)` of every channel in a stream's description.
fn channels(info: &mut StreamInfo) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut channel = info.desc().child("channels").child("channel");
    while !channel.empty() && channel.is_valid() {
        out.push((
            channel.child_value_named("label"),
            channel.child_value_named("unit"),
            channel.child_value_named("type"),
        ));
        channel = channel.next_sibling();
    }
    out
}

/// `n` samples and their timestamps (each pull waits at most 2 s).
fn pull<T>(inlet: &StreamInlet, n: usize) -> Vec<(Vec<T>, f64)>
where
    StreamInlet: Pullable<T>,
{
    (0..n)
        .map(|i| {
            let (sample, ts) = inlet.pull_sample(2.0).expect("pull");
            assert!(!sample.is_empty(), "no sample {i} within 2 s");
            (sample, ts)
        })
        .collect()
}

fn assert_spacing(name: &str, samples: &[(Vec<impl Sized>, f64)]) {
    for pair in samples.windows(2) {
        let gap_ms = (pair[1].1 - pair[0].1) * 1e3;
        assert!(
            (gap_ms - 25.0).abs() <= 0.1,
            "{name}: timestamps {} and {} are {gap_ms} ms apart",
            pair[0].1,
            pair[1].1
        );
    }
}

#[test]
fn outlets_carry_the_packets_of_the_same_sequence_with_exact_timestamps() {
    let server = lsl_server();
    let code = unique_code("lsl-match");
    server
        .post(&format!("/api/sessions/create?custom_code={code}"))
        .ok_json();
    let units = table().num_units();

    // A WebSocket client reads alongside, until the inlets have what they need.
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = WsClient::connect(server.addr, &format!("/stream/{code}")).unwrap();
    client.metadata();
    let reader_stop = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut packets = Vec::new();
        while !reader_stop.load(Relaxed) && Instant::now() < deadline {
            if let Some(data) = client.try_next_data(Duration::from_millis(200)) {
                packets.push(data);
            }
        }
        packets
    });

    let config = LslConfig::default();
    let (neural, mut neural_info) = inlet(&Stream::Neural.name(&config, &code));
    let (kinematics, mut kinematics_info) = inlet(&Stream::Kinematics.name(&config, &code));
    let (intention, mut intention_info) = inlet(&Stream::Intention.name(&config, &code));

    // Metadata: types, formats, rates, source ids, channel descriptions.
    assert_eq!(neural_info.stream_type(), "EEG");
    assert_eq!(neural_info.channel_format(), ChannelFormat::Int32);
    assert_eq!(neural_info.channel_count() as usize, units);
    assert_eq!(neural_info.nominal_srate(), 40.0);
    assert_eq!(
        neural_info.source_id(),
        format!("phantomlink-{code}-neural")
    );
    assert_eq!(kinematics_info.channel_format(), ChannelFormat::Float32);
    assert_eq!(
        intention_info.source_id(),
        format!("phantomlink-{code}-intention")
    );
    let neural_channels = channels(&mut neural_info);
    assert_eq!(neural_channels.len(), units);
    let ids = table().channel_ids().to_vec();
    for (channel, id) in neural_channels.iter().zip(&ids) {
        assert_eq!(
            channel,
            &(format!("unit_{id}"), "count".into(), "SpikeCount".into())
        );
    }
    let labels = |chs: Vec<(String, String, String)>| -> Vec<(String, String)> {
        chs.into_iter().map(|(l, u, _)| (l, u)).collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(l, u)| (l.to_string(), u.to_string()))
            .collect()
    };
    assert_eq!(
        labels(channels(&mut kinematics_info)),
        pairs(&[("vx", "mm/s"), ("vy", "mm/s"), ("x", "mm"), ("y", "mm")])
    );
    assert_eq!(
        labels(channels(&mut intention_info)),
        pairs(&[
            ("target_id", "id"),
            ("target_x", "mm"),
            ("target_y", "mm"),
            ("trial_id", "id")
        ])
    );

    let neural_samples: Vec<(Vec<i32>, f64)> = pull(&neural, 100);
    let kinematics_samples: Vec<(Vec<f32>, f64)> = pull(&kinematics, 100);
    let intention_samples: Vec<(Vec<f32>, f64)> = pull(&intention, 100);
    // Let the client catch up with the last pulled tick, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    let packets: Vec<Value> = reader.join().unwrap();
    common::assert_contiguous(&packets, "websocket");

    assert_spacing("neural", &neural_samples);
    assert_spacing("kinematics", &kinematics_samples);
    assert_spacing("intention", &intention_samples);

    // Anchor: the one WebSocket packet whose counts are the first neural sample's. From there,
    // a timestamp t is sequence s0 + round((t − t0) / 25 ms) (timestamps are the tick grid).
    let counts_of = |p: &Value| -> Vec<i32> {
        serde_json::from_value(p["spikes"]["spike_counts"].clone()).unwrap()
    };
    let anchors: Vec<&Value> = packets
        .iter()
        .filter(|p| counts_of(p) == neural_samples[0].0)
        .collect();
    assert_eq!(
        anchors.len(),
        1,
        "first neural sample matches {} packets",
        anchors.len()
    );
    let (s0, t0) = (seq(anchors[0]), neural_samples[0].1);
    let packet_at = |t: f64| -> &Value {
        let sequence = s0 as i64 + ((t - t0) / 0.025).round() as i64;
        packets
            .iter()
            .find(|p| seq(p) as i64 == sequence)
            .unwrap_or_else(|| panic!("no WebSocket packet with sequence {sequence}"))
    };

    let t = table();
    for (sample, ts) in &neural_samples {
        assert_eq!(sample, &counts_of(packet_at(*ts)), "neural at {ts}");
    }
    for (sample, ts) in &kinematics_samples {
        let packet = packet_at(*ts);
        let row = t.row(bin(packet) as u32);
        let expected = [row.vx as f32, row.vy as f32, row.x as f32, row.y as f32];
        assert_eq!(sample[..], expected, "kinematics at {ts}");
        let k = &packet["kinematics"];
        for (value, field) in sample.iter().zip(["vx", "vy", "x", "y"]) {
            let wire = k[field].as_f64().unwrap();
            assert!(
                (f64::from(*value) - wire).abs() <= 1e-4 * wire.abs().max(1.0),
                "{field}"
            );
        }
    }
    let mut in_trial = 0;
    for (sample, ts) in &intention_samples {
        let packet = packet_at(*ts);
        let row = t.row(bin(packet) as u32);
        let expected = intention_values(row.target_id, row.target_x, row.target_y, row.trial_id);
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
        assert!(
            sample.iter().zip(expected).all(|(&a, b)| same(a, b)),
            "intention at {ts}: {sample:?} vs {expected:?}"
        );
        assert_eq!(
            packet["trial_id"]
                .as_u64()
                .map(|v| v as f32)
                .unwrap_or(-1.0),
            sample[3]
        );
        in_trial += usize::from(sample[3] >= 0.0);
    }
    assert!(in_trial > 0, "some intention samples fall inside a trial");

    // The push latency is measured and exposed; nothing was dropped.
    let metrics = server.get("/metrics").ok_json();
    let lsl = &metrics["metrics"]["sessions"][code.as_str()]["lsl"];
    assert!(lsl["samples"].as_u64().unwrap() >= 100, "{lsl}");
    assert!(
        lsl["push_latency_ms"]["count"].as_u64().unwrap() >= 100,
        "{lsl}"
    );
    assert!(
        lsl["push_latency_ms"]["p50"].as_f64().unwrap() < 25.0,
        "{lsl}"
    );
    assert_eq!(lsl["dropped"], 0, "{lsl}");
    let text = server
        .request("GET", "/metrics?format=prometheus", None, &[])
        .text();
    assert!(
        text.contains(&format!(
            "phantomlink_lsl_push_latency_seconds_count{{session=\"{code}\"}}"
        )),
        "no LSL latency in the Prometheus text"
    );
    let stats = server.get("/api/stats").ok_json();
    assert_eq!(stats["lsl_streaming"]["enabled"], true, "{stats}");
    assert_eq!(
        stats["lsl_streaming"]["sessions"][code.as_str()][0],
        format!("PhantomLink-Neural-{code}")
    );
}

#[test]
fn streams_exist_without_clients_and_go_with_the_session() {
    let server = lsl_server();
    let code = unique_code("lsl-alone");
    server
        .post(&format!("/api/sessions/create?custom_code={code}"))
        .ok_json();
    let name = Stream::Neural.name(&LslConfig::default(), &code);
    let (inlet, _) = inlet(&name);
    let samples: Vec<(Vec<i32>, f64)> = pull(&inlet, 40);
    assert_spacing("neural without clients", &samples);
    let info = server.session(&code);
    assert_eq!(info["active_connections"], 0);
    assert_eq!(
        info["lsl_streams"][2],
        format!("PhantomLink-Intention-{code}")
    );
    drop(inlet);

    assert_eq!(server.delete(&format!("/api/sessions/{code}")).status, 200);
    let found = ::lsl::resolve_byprop("name", &name, 1, 1.5).expect("resolve");
    assert!(
        found.is_empty(),
        "{name} still resolves after the session ended"
    );
}

/// The timestamp mapping assumes liblsl's `local_clock()` is CLOCK_MONOTONIC, as `Instant` is
/// (boost::chrono's high_resolution_clock is its steady_clock on Linux).
#[test]
fn local_clock_is_the_monotonic_clock() {
    machine_only_lsl();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    let lsl = ::lsl::local_clock();
    let monotonic = ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
    assert!(
        (lsl - monotonic).abs() < 0.01,
        "local_clock {lsl} vs CLOCK_MONOTONIC {monotonic}"
    );
}
