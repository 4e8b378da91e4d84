//! Taps through a real server: a session with a tap (what feeds the LSL outlets) plays from
//! creation without WebSocket clients, its tap sees every tick with the counts the clients
//! get (noise included), and ending the session ends the tap's consumer.
//!
//! The consumer here is a test one that records what it receives, so these tests need no
//! liblsl and run with the default features.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    seq, table, test_engine_config, test_server_config, wait_until, TestServer, WsClient,
};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::{
    NoiseConfig, Registry, TapConsumer, TapReceiver, TapShared, TapSource, PERIOD,
};

/// One tick as the test consumer recorded it.
#[derive(Debug, Clone)]
struct Seen {
    code: String,
    sequence: u64,
    bin: u32,
    deadline: Instant,
    counts: Vec<u16>,
}

/// Records every tick of every session; notes when a session's consumer ends.
#[derive(Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    ended: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn of(&self, code: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.code == code)
            .cloned()
            .collect()
    }

    fn has_ended(&self, code: &str) -> bool {
        self.ended.lock().unwrap().iter().any(|c| c == code)
    }
}

struct RecorderSource(Arc<Recorder>);

impl TapSource for RecorderSource {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn start(
        &self,
        code: &str,
        _table: Arc<PacketTable>,
        mut receiver: TapReceiver,
    ) -> Result<TapConsumer, String> {
        let shared = Arc::new(TapShared::new("test", vec![format!("test-{code}")]));
        let recorder = Arc::clone(&self.0);
        let code = code.to_string();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::spawn(move || loop {
            while let Some(sample) = receiver.pop() {
                recorder.seen.lock().unwrap().push(Seen {
                    code: code.clone(),
                    sequence: sample.sequence,
                    bin: sample.bin,
                    deadline: sample.deadline,
                    counts: sample.counts.to_vec(),
                });
                thread_shared.samples.fetch_add(1, Relaxed);
                receiver.recycle(sample.counts);
            }
            if receiver.is_abandoned() && receiver.pending() == 0 {
                recorder.ended.lock().unwrap().push(code.clone());
                return;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        });
        Ok(TapConsumer { shared, thread })
    }
}

fn server(noise: NoiseConfig) -> (TestServer, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let engine = phantomlink::engine::EngineConfig {
        noise,
        ..test_engine_config()
    };
    let registry = Registry::new(table(), engine)
        .with_tap_source(Arc::new(RecorderSource(Arc::clone(&recorder))));
    (
        TestServer::of_registry(registry, test_server_config()),
        recorder,
    )
}

#[test]
fn a_session_with_a_tap_plays_without_clients_and_ends_with_the_session() {
    let (server, recorder) = server(NoiseConfig::OFF);
    server
        .post("/api/sessions/create?custom_code=tapped")
        .ok_json();
    assert!(
        wait_until(Duration::from_secs(5), || recorder.of("tapped").len() >= 40),
        "the tap got {} ticks in 5 s without any client",
        recorder.of("tapped").len()
    );
    let info = server.session("tapped");
    assert_eq!(info["active_connections"], 0);
    assert_eq!(info["started"], true, "{info}");
    assert_eq!(info["is_running"], true, "{info}");

    let seen = recorder.of("tapped");
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence + 1,
            "every tick, in order"
        );
        assert_eq!(pair[1].bin, pair[0].bin + 1, "consecutive rows");
        // Deadlines are the absolute schedule: exactly one period apart.
        assert_eq!(pair[1].deadline - pair[0].deadline, PERIOD);
    }
    let t = table();
    for s in &seen {
        assert_eq!(s.counts, t.row(s.bin).spike_counts, "bin {}", s.bin);
    }
    // With a listener, ticks are punctual and measured.
    let metrics = server.get("/metrics").ok_json();
    let session = &metrics["metrics"]["sessions"]["tapped"];
    assert!(
        session["timing_error_ms"]["count"].as_u64().unwrap() >= 40,
        "{session}"
    );
    assert!(session["lsl"].is_null(), "a test tap is not LSL: {session}");

    // Deleting the session ends the consumer before DELETE answers.
    assert_eq!(server.delete("/api/sessions/tapped").status, 200);
    assert!(recorder.has_ended("tapped"));
}

#[test]
fn the_tap_gets_the_counts_clients_get_noise_included() {
    let noise = NoiseConfig::preset("moderate").unwrap();
    let (server, recorder) = server(noise);
    let mut client = WsClient::connect(server.addr, "/stream/noisy-tap").unwrap();
    client.metadata();
    let packets = client.data_n(40, Duration::from_secs(10));
    let last = seq(packets.last().unwrap());
    assert!(
        wait_until(Duration::from_secs(2), || recorder
            .of("noisy-tap")
            .iter()
            .any(|s| s.sequence >= last)),
        "the tap lags the client"
    );
    let seen = recorder.of("noisy-tap");
    let t = table();
    let mut noisy = 0;
    for packet in &packets {
        let sequence = seq(packet);
        let tapped = seen
            .iter()
            .find(|s| s.sequence == sequence)
            .unwrap_or_else(|| panic!("the tap missed sequence {sequence}"));
        assert_eq!(u64::from(tapped.bin), common::bin(packet));
        let counts: Vec<u16> =
            serde_json::from_value(packet["spikes"]["spike_counts"].clone()).unwrap();
        assert_eq!(tapped.counts, counts, "sequence {sequence}");
        if counts != t.row(tapped.bin).spike_counts {
            noisy += 1;
        }
    }
    assert!(noisy > 30, "noise applied to {noisy} of 40 packets");
    // The tap started the clock at creation, before the client came.
    assert_eq!(seen.first().map(|s| s.sequence), Some(1));
}
