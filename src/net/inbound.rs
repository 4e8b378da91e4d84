//! Messages clients send: decoder answers (`{"type": "decoded", ...}`), scored against the
//! packet they answer; anything else is counted and answered with `{"type": "error"}`.
//!
//! Runs on the client's reader thread. Text frames are JSON, binary frames MessagePack,
//! whatever the endpoint; errors are answered in the client's own format.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::http::truncate;
use crate::codec::{Frame, WireFormat};
use crate::dataset::PacketTable;
use crate::engine::feedback::{process_nanos, DecoderStats, Lookup};
use crate::engine::ClientShared;

/// A message from a client, as far as we understand it.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    sequence_number: Option<u64>,
    vx: Option<f64>,
    vy: Option<f64>,
    x: Option<f64>,
    y: Option<f64>,
    target_id: Option<u32>,
}

#[derive(Serialize)]
struct ErrorMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    detail: &'a str,
}

/// Handles one text (`binary == false`) or binary message; returns an error reply frame for
/// the client when the message was not understood.
pub fn handle(
    payload: &[u8],
    binary: bool,
    client: &ClientShared,
    table: &PacketTable,
    received: Instant,
) -> Option<Frame> {
    client.counters.messages_received.fetch_add(1, Relaxed);
    let stats = client.decoder.get_or_init(Box::default);
    stats.messages.fetch_add(1, Relaxed);
    let parsed: Result<Incoming, String> = if binary {
        rmp_serde::from_slice(payload).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    };
    let problem = match parsed {
        Err(e) => format!("message not understood: {e}"),
        Ok(message) if message.kind != "decoded" => format!(
            "unknown message type {:?}; send {{\"type\": \"decoded\", \"sequence_number\": N, \"vx\": .., \"vy\": ..}}",
            truncate(&message.kind, 40)
        ),
        Ok(message) => match score(&message, client, stats, table, received) {
            Ok(()) => return None,
            Err(problem) => problem,
        },
    };
    stats.malformed.fetch_add(1, Relaxed);
    Some(error_frame(client.format, &problem))
}

/// Matches a decoded answer to its packet and records round trip and errors.
fn score(
    message: &Incoming,
    client: &ClientShared,
    stats: &DecoderStats,
    table: &PacketTable,
    received: Instant,
) -> Result<(), String> {
    let (Some(sequence), Some(vx), Some(vy)) = (message.sequence_number, message.vx, message.vy)
    else {
        return Err("a decoded message needs sequence_number, vx and vy".into());
    };
    let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
    if !(vx.is_finite() && vy.is_finite() && finite(message.x) && finite(message.y)) {
        return Err("decoded values must be finite numbers".into());
    }
    let (bin, sent_ns) = match client.sent.lookup(sequence) {
        Lookup::Sent { bin, sent_ns } => (bin, sent_ns),
        Lookup::Late => {
            stats.late.fetch_add(1, Relaxed);
            return Ok(());
        }
        Lookup::Unknown => {
            stats.unknown.fetch_add(1, Relaxed);
            return Ok(());
        }
    };
    stats.matched.fetch_add(1, Relaxed);
    stats
        .round_trip
        .record(process_nanos(received).saturating_sub(sent_ns));
    let truth = table.row(bin);
    let milli = |v: f64| (v * 1000.0).round() as u64;
    stats
        .velocity_error
        .record(milli((vx - truth.vx).hypot(vy - truth.vy)));
    if let (Some(x), Some(y)) = (message.x, message.y) {
        stats
            .position_error
            .record(milli((x - truth.x).hypot(y - truth.y)));
    }
    if let (Some(decoded), Some(actual)) = (message.target_id, truth.target_id) {
        stats.target_total.fetch_add(1, Relaxed);
        if decoded == actual {
            stats.target_correct.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

/// `{"type": "error", "detail": ...}` framed in `format`.
fn error_frame(format: WireFormat, detail: &str) -> Frame {
    let message = ErrorMessage {
        kind: "error",
        detail,
    };
    let mut frame = Frame::with_capacity(64 + detail.len());
    let built = frame.build(format.opcode(), |buf| match format {
        WireFormat::Json => serde_json::to_writer(buf, &message).map_err(|e| e.to_string()),
        WireFormat::MessagePack => message
            .serialize(&mut rmp_serde::Serializer::new(buf).with_struct_map())
            .map_err(|e| e.to_string()),
    });
    if let Err(e) = built {
        log::error!("error reply could not be encoded: {e}");
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synthetic::{generate, SyntheticConfig};

    fn setup() -> (ClientShared, PacketTable) {
        let config = SyntheticConfig {
            num_bins: 400,
            num_trials: 4,
            ..SyntheticConfig::default()
        };
        let table = PacketTable::new(generate(&config)).unwrap();
        let client = ClientShared::new(1, "127.0.0.1:1".parse().unwrap(), WireFormat::Json, 8);
        (client, table)
    }

    #[test]
    fn a_perfect_answer_scores_zero_error() {
        let (client, table) = setup();
        let sent = Instant::now();
        client.sent.record(5, 123, sent);
        let row = table.row(123);
        let answer = format!(
            r#"{{"type":"decoded","sequence_number":5,"vx":{},"vy":{},"x":{},"y":{}}}"#,
            row.vx, row.vy, row.x, row.y
        );
        assert!(handle(answer.as_bytes(), false, &client, &table, Instant::now()).is_none());
        let stats = client.decoder.get().unwrap();
        assert_eq!(stats.matched.load(Relaxed), 1);
        assert_eq!(stats.velocity_error.snapshot().max(), 0);
        assert_eq!(stats.position_error.len(), 1);
        assert_eq!(stats.round_trip.len(), 1);
    }

    #[test]
    fn errors_are_measured_against_the_truth() {
        let (client, table) = setup();
        client.sent.record(9, 50, Instant::now());
        let row = table.row(50);
        let answer = serde_json::json!({"type": "decoded", "sequence_number": 9,
                                        "vx": row.vx + 3.0, "vy": row.vy + 4.0});
        let bytes = rmp_serde::to_vec_named(&answer).unwrap();
        assert!(handle(&bytes, true, &client, &table, Instant::now()).is_none());
        let error = client.decoder.get().unwrap().velocity_error.snapshot();
        assert!(
            (error.max() as f64 / 1000.0 - 5.0).abs() < 0.06,
            "{}",
            error.max()
        );
    }

    #[test]
    fn malformed_and_unknown_messages_are_counted_and_answered() {
        let (client, table) = setup();
        for bad in [
            &b"not json"[..],
            br#"{"type":"hello"}"#,
            br#"{"type":"decoded","vx":1}"#,
        ] {
            let reply =
                handle(bad, false, &client, &table, Instant::now()).expect("an error reply");
            let value: serde_json::Value = serde_json::from_slice(reply.payload()).unwrap();
            assert_eq!(value["type"], "error");
            assert!(value["detail"].as_str().unwrap().len() > 10);
        }
        let stats = client.decoder.get().unwrap();
        assert_eq!(
            (stats.malformed.load(Relaxed), stats.messages.load(Relaxed)),
            (3, 3)
        );
        // Unknown and late answers are counted, not errors.
        let unknown = br#"{"type":"decoded","sequence_number":77,"vx":0,"vy":0}"#;
        assert!(handle(unknown, false, &client, &table, Instant::now()).is_none());
        assert_eq!(stats.unknown.load(Relaxed), 1);
    }
}
