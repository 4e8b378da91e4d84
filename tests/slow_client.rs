//! A client that stops reading: its ring fills, packets are dropped for it alone (counted in
//! `/metrics`), it is closed after the stall timeout, and another client of the same session,
//! written by the same writer thread, sees every packet throughout. What the slow client
//! finally reads is whole frames: a frame its full socket took only in part was finished, never
//! interleaved with another.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const RING: u64 = 8;
const STALL: Duration = Duration::from_secs(2);

/// What the slow client finds when it finally reads: the frames that were buffered for it,
/// then how the connection ended.
struct Drained {
    sequences: Vec<u64>,
    close_code: Option<u16>,
    ended: RawEnd,
}

fn drain(stream: &mut TcpStream, within: Duration) -> Drained {
    let (bytes, ended) = read_raw_until_end(stream, within, Duration::from_millis(500));
    assert_ne!(ended, RawEnd::Error, "slow client read failed");
    let mut drained = Drained {
        sequences: Vec::new(),
        close_code: None,
        ended,
    };
    for (opcode, payload) in server_frames(&bytes) {
        match opcode {
            0x1 => {
                let message: Value = serde_json::from_slice(payload).expect("JSON frame");
                if message["type"] == "data" {
                    drained.sequences.push(seq(&message["data"]));
                }
            }
            0x8 => drained.close_code = close_code(payload).or(drained.close_code),
            other => panic!("unexpected opcode {other} on the slow client"),
        }
    }
    drained
}

fn client_metrics<'a>(metrics: &'a Value, code: &str, remote: SocketAddr) -> Option<&'a Value> {
    metrics["metrics"]["sessions"][code]["clients"]
        .as_array()?
        .iter()
        .find(|c| c["remote"] == remote.to_string())
}

#[test]
fn a_stalled_client_loses_packets_alone_and_is_closed() {
    let server = TestServer::with(|engine, network| {
        engine.ring_capacity = RING as usize;
        engine.stall_timeout = STALL;
        // One writer thread: the slow client and the good one share it, so the good client's
        // stream also shows that a full socket never holds up the others on its thread.
        network.writer_threads = 1;
    });
    let code = "slow-session";
    let mut good = server.ws(&format!("/stream/{code}"));
    good.metadata();
    let good_addr = good.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut packets = Vec::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(40) {
                if let Some(data) = good.try_next_data(Duration::from_millis(200)) {
                    packets.push(data);
                }
            }
            (packets, started.elapsed(), good)
        })
    };

    let mut slow = raw_upgrade(server.addr, &format!("/stream/{code}"), Some(4096));
    let slow_addr = slow.local_addr().unwrap();
    let slow_connected = Instant::now();

    // While the slow client is stalled: drops counted for it, none for the good client.
    let mut metrics = Value::Null;
    let dropping = wait_until(Duration::from_secs(20), || {
        metrics = server.get(&format!("/metrics?session={code}")).ok_json();
        client_metrics(&metrics, code, slow_addr)
            .is_some_and(|c| c["dropped_packets"].as_u64().unwrap_or(0) > 0)
    });
    assert!(dropping, "no drops for the slow client: {metrics}");
    let slow_metrics = client_metrics(&metrics, code, slow_addr).unwrap();
    let good_metrics = client_metrics(&metrics, code, good_addr).expect("good client listed");
    assert_eq!(slow_metrics["ring_capacity"], RING);
    assert_eq!(
        slow_metrics["ring_high_water"], RING,
        "slow client: {slow_metrics}"
    );
    assert_eq!(
        good_metrics["dropped_packets"], 0,
        "good client: {good_metrics}"
    );
    assert!(good_metrics["ring_high_water"].as_u64().unwrap() < RING);
    let slow_drops = slow_metrics["dropped_packets"].as_u64().unwrap();
    let session = &metrics["metrics"]["sessions"][code];
    assert!(session["dropped_packets"].as_u64().unwrap() >= slow_drops);

    // The slow client is closed after the stall timeout, not before.
    server.wait_for_clients(code, 1, Duration::from_secs(25));
    let closed_after = slow_connected.elapsed();
    assert!(closed_after >= STALL, "closed after only {closed_after:?}");
    let drained = drain(&mut slow, Duration::from_secs(10));
    assert_ne!(
        drained.ended,
        RawEnd::StillOpen,
        "the server never closed the slow client"
    );
    if let Some(code) = drained.close_code {
        assert_eq!(code, 1008, "close code of a stalled client");
    }
    assert!(
        drained.sequences.windows(2).all(|w| w[1] > w[0]),
        "slow client frames out of order"
    );

    // The good client keeps streaming after the slow one is gone.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (packets, elapsed, _good) = reader.join().unwrap();
    assert_contiguous(&packets, "good client");
    let expected = elapsed.as_secs_f64() * 40.0;
    assert!(
        packets.len() as f64 > expected * 0.7,
        "good client got {} packets in {elapsed:?}",
        packets.len()
    );
    let after = server.get(&format!("/metrics?session={code}")).ok_json();
    let session = &after["metrics"]["sessions"][code];
    assert_eq!(session["connections"], 1);
    assert_eq!(session["connections_closed"], 1);
    assert!(session["dropped_packets"].as_u64().unwrap() >= slow_drops);
    let good_after = client_metrics(&after, code, good_addr).unwrap();
    assert_eq!(good_after["dropped_packets"], 0);
    eprintln!(
        "slow client: {} packets buffered, {slow_drops}+ dropped, closed after {closed_after:?} ({:?}, close code {:?})",
        drained.sequences.len(),
        drained.ended,
        drained.close_code
    );
}
