//! The messages of the wire format: `metadata` once per client, then one `data` per tick.
//!
//! Field names and order follow the reference implementation exactly; fields may be added,
//! never renamed or retyped. Serialisation borrows everything from the packet table, so
//! encoding a data packet allocates nothing beyond the output buffer's growth.

use serde::Serialize;

use super::{EncodeError, WireFormat};
use crate::dataset::{Row, BIN_MS};

/// Everything one `data` message carries.
#[derive(Debug, Clone, Copy)]
pub struct DataPacket<'a> {
    /// Unix seconds at packet generation.
    pub timestamp: f64,
    /// Per-session counter, +1 per packet the session generates.
    pub sequence_number: u64,
    /// The packet-table row being played.
    pub row: Row<'a>,
    /// `0..num_units`, shared by every packet.
    pub channel_ids: &'a [u32],
}

/// Dataset description sent as the first message to every client.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// Dataset name (`MC_Maze`).
    pub dataset: String,
    /// Packets in the recording.
    pub total_packets: usize,
    /// Packets per second (40).
    pub frequency_hz: u32,
    /// Units per packet.
    pub num_channels: usize,
    /// Length of the recording in seconds.
    pub duration_seconds: f64,
    /// Trials in the recording.
    pub num_trials: usize,
}

/// The session a client is attached to, as told in its metadata message.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRef {
    /// Session code.
    pub code: String,
    /// WebSocket URL of the session's stream.
    pub url: String,
}

#[derive(Serialize)]
struct MetadataMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: &'a Metadata,
    session: &'a SessionRef,
}

#[derive(Serialize)]
struct DataMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: DataBody<'a>,
}

#[derive(Serialize)]
struct DataBody<'a> {
    timestamp: f64,
    sequence_number: u64,
    spikes: Spikes<'a>,
    kinematics: Kinematics,
    intention: Intention,
    trial_id: Option<u32>,
    trial_time_ms: f64,
    bin_index: u32,
    trial_elapsed_ms: Option<f64>,
}

#[derive(Serialize)]
struct Spikes<'a> {
    channel_ids: &'a [u32],
    spike_counts: &'a [u16],
    bin_size_ms: f64,
}

#[derive(Serialize)]
struct Kinematics {
    vx: f64,
    vy: f64,
    x: f64,
    y: f64,
}

#[derive(Serialize)]
struct Intention {
    target_id: Option<u32>,
    target_x: Option<f64>,
    target_y: Option<f64>,
    distance_to_target: Option<f64>,
}

/// Appends the `data` message for `packet` to `out` in `format`.
pub fn encode_data(
    format: WireFormat,
    packet: &DataPacket<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let row = &packet.row;
    let message = DataMessage {
        kind: "data",
        data: DataBody {
            timestamp: packet.timestamp,
            sequence_number: packet.sequence_number,
            spikes: Spikes {
                channel_ids: packet.channel_ids,
                spike_counts: row.spike_counts,
                bin_size_ms: BIN_MS,
            },
            kinematics: Kinematics {
                vx: row.vx,
                vy: row.vy,
                x: row.x,
                y: row.y,
            },
            intention: Intention {
                target_id: row.target_id,
                target_x: row.target_x,
                target_y: row.target_y,
                distance_to_target: row.distance_to_target,
            },
            trial_id: row.trial_id,
            trial_time_ms: row.trial_time_ms,
            bin_index: row.bin_index,
            trial_elapsed_ms: row.trial_elapsed_ms,
        },
    };
    encode(format, &message, out)
}

/// Appends the `metadata` message to `out` in `format`.
pub fn encode_metadata(
    format: WireFormat,
    metadata: &Metadata,
    session: &SessionRef,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let message = MetadataMessage {
        kind: "metadata",
        data: metadata,
        session,
    };
    encode(format, &message, out)
}

fn encode(
    format: WireFormat,
    message: &impl Serialize,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match format {
        WireFormat::Json => serde_json::to_writer(out, message)?,
        // Struct maps (not arrays) so MessagePack carries the same field names as JSON.
        WireFormat::MessagePack => {
            message.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn row(counts: &[u16]) -> Row<'_> {
        Row {
            bin_index: 6897,
            spike_counts: counts,
            x: -20.4,
            y: 11.0,
            vx: 12.5,
            vy: -3.1,
            trial_id: Some(7),
            target_id: Some(3),
            target_x: Some(-118.0),
            target_y: Some(-83.0),
            distance_to_target: Some(98.2),
            trial_time_ms: 172425.0,
            trial_elapsed_ms: Some(425.0),
        }
    }

    fn expected() -> Value {
        json!({"type": "data",
               "data": {"timestamp": 1767225600.025, "sequence_number": 1,
                        "spikes": {"channel_ids": [0, 1, 2], "spike_counts": [0, 2, 1], "bin_size_ms": 25.0},
                        "kinematics": {"vx": 12.5, "vy": -3.1, "x": -20.4, "y": 11.0},
                        "intention": {"target_id": 3, "target_x": -118.0, "target_y": -83.0,
                                      "distance_to_target": 98.2},
                        "trial_id": 7, "trial_time_ms": 172425.0,
                        "bin_index": 6897, "trial_elapsed_ms": 425.0}})
    }

    fn packet<'a>(counts: &'a [u16], ids: &'a [u32]) -> DataPacket<'a> {
        DataPacket {
            timestamp: 1767225600.025,
            sequence_number: 1,
            row: row(counts),
            channel_ids: ids,
        }
    }

    #[test]
    fn json_matches_the_design_example() {
        let mut out = Vec::new();
        encode_data(WireFormat::Json, &packet(&[0, 2, 1], &[0, 1, 2]), &mut out).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value, expected());
        // Key order matters to clients that compare text; serde keeps declaration order.
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(r#"{"type":"data","data":{"timestamp":"#),
            "{text}"
        );
    }

    #[test]
    fn msgpack_has_the_same_structure_as_json() {
        let mut out = Vec::new();
        encode_data(
            WireFormat::MessagePack,
            &packet(&[0, 2, 1], &[0, 1, 2]),
            &mut out,
        )
        .unwrap();
        let value: Value = rmp_serde::from_slice(&out).unwrap();
        assert_eq!(value, expected());
    }

    #[test]
    fn fields_outside_a_trial_are_null() {
        let counts = [1u16];
        let mut outside = row(&counts);
        outside.trial_id = None;
        outside.target_id = None;
        outside.target_x = None;
        outside.target_y = None;
        outside.distance_to_target = None;
        outside.trial_elapsed_ms = None;
        let packet = DataPacket {
            row: outside,
            ..packet(&counts, &[0])
        };
        let mut out = Vec::new();
        encode_data(WireFormat::Json, &packet, &mut out).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["data"]["trial_id"], Value::Null);
        assert_eq!(value["data"]["intention"]["target_id"], Value::Null);
        assert_eq!(value["data"]["trial_elapsed_ms"], Value::Null);
    }
}
