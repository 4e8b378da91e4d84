//! Reading packets: a fast path that takes `timestamp` and `sequence_number` from the head of
//! each message without decoding the rest, and a full decode (serde_json / rmp-serde into a
//! JSON value) for the metadata message, for every Nth packet as a check of the fast path and
//! of the packet's structure, and whenever the fast path does not find its fields.

use serde_json::Value;

use crate::target::find;

/// Bytes at the head of a message where the fast path looks for its fields.
const HEAD: usize = 160;

/// Wire format of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON text frames.
    Json,
    /// MessagePack binary frames.
    Msgpack,
}

impl Format {
    /// Stream path of `code` in this format.
    pub fn path(self, code: &str) -> String {
        match self {
            Format::Json => format!("/stream/{code}"),
            Format::Msgpack => format!("/stream/binary/{code}"),
        }
    }
}

/// The two fields every data packet is measured by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    /// Unix seconds at packet generation.
    pub timestamp: f64,
    /// Session sequence number.
    pub sequence: u64,
}

/// What a message is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A data packet and its number of spike channels.
    Data(Head, usize),
    /// The metadata message, with its channel count.
    Metadata {
        /// `data.num_channels`.
        num_channels: u64,
    },
}

/// The fast path: `None` when the head does not look as expected (then decode fully).
pub fn fast(format: Format, payload: &[u8]) -> Option<Head> {
    let head = &payload[..payload.len().min(HEAD)];
    match format {
        Format::Json => fast_json(head),
        Format::Msgpack => fast_msgpack(head),
    }
}

fn fast_json(head: &[u8]) -> Option<Head> {
    find(head, br#""type":"data""#)?;
    let timestamp = json_number(head, br#""timestamp":"#)?.parse().ok()?;
    let sequence = json_number(head, br#""sequence_number":"#)?.parse().ok()?;
    Some(Head {
        timestamp,
        sequence,
    })
}

fn json_number<'a>(head: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = find(head, key)? + key.len();
    let rest = &head[start..];
    let len = rest
        .iter()
        .position(|b| matches!(b, b',' | b'}' | b']' | b' '))?;
    std::str::from_utf8(&rest[..len]).ok()
}

fn fast_msgpack(head: &[u8]) -> Option<Head> {
    find(head, b"\xa4type\xa4data")?;
    let at = find(head, b"\xa9timestamp")? + 10;
    let timestamp = match *head.get(at)? {
        0xcb => f64::from_be_bytes(head.get(at + 1..at + 9)?.try_into().ok()?),
        0xca => f32::from_be_bytes(head.get(at + 1..at + 5)?.try_into().ok()?) as f64,
        _ => return None,
    };
    let at = find(head, b"\xafsequence_number")? + 16;
    let sequence = msgpack_uint(head.get(at..)?)?;
    Some(Head {
        timestamp,
        sequence,
    })
}

fn msgpack_uint(bytes: &[u8]) -> Option<u64> {
    let be = |n: usize| -> Option<u64> {
        let mut value = 0u64;
        for b in bytes.get(1..1 + n)? {
            value = value << 8 | u64::from(*b);
        }
        Some(value)
    };
    match *bytes.first()? {
        b @ 0x00..=0x7f => Some(u64::from(b)),
        0xcc => be(1),
        0xcd => be(2),
        0xce => be(4),
        0xcf => be(8),
        _ => None,
    }
}

/// The full decode, checking the structure of the contract.
pub fn full(format: Format, payload: &[u8]) -> Result<Message, String> {
    let value: Value = match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| format!("JSON: {e}"))?,
        Format::Msgpack => {
            rmp_serde::from_slice(payload).map_err(|e| format!("MessagePack: {e}"))?
        }
    };
    let data = &value["data"];
    match value["type"].as_str() {
        Some("metadata") => Ok(Message::Metadata {
            num_channels: data["num_channels"]
                .as_u64()
                .ok_or("metadata without data.num_channels")?,
        }),
        Some("data") => {
            let timestamp = data["timestamp"].as_f64().ok_or("no data.timestamp")?;
            let sequence = data["sequence_number"]
                .as_u64()
                .ok_or("no data.sequence_number")?;
            let counts = data["spikes"]["spike_counts"]
                .as_array()
                .ok_or("no data.spikes.spike_counts")?;
            let ids = data["spikes"]["channel_ids"]
                .as_array()
                .ok_or("no data.spikes.channel_ids")?;
            if counts.len() != ids.len() {
                return Err(format!(
                    "{} spike counts for {} channel ids",
                    counts.len(),
                    ids.len()
                ));
            }
            for field in ["vx", "vy", "x", "y"] {
                data["kinematics"][field]
                    .as_f64()
                    .ok_or_else(|| format!("no data.kinematics.{field}"))?;
            }
            for field in ["intention", "trial_id", "trial_time_ms", "bin_index"] {
                if data.get(field).is_none() {
                    return Err(format!("no data.{field}"));
                }
            }
            Ok(Message::Data(
                Head {
                    timestamp,
                    sequence,
                },
                counts.len(),
            ))
        }
        other => Err(format!("unknown message type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({"type": "data",
               "data": {"timestamp": 1767225600.025, "sequence_number": 70000,
                        "spikes": {"channel_ids": [0, 1, 2], "spike_counts": [0, 2, 1], "bin_size_ms": 25.0},
                        "kinematics": {"vx": 12.5, "vy": -3.1, "x": -20.4, "y": 11.0},
                        "intention": {"target_id": 3, "target_x": -118.0, "target_y": -83.0,
                                      "distance_to_target": 98.2},
                        "trial_id": 7, "trial_time_ms": 172425.0,
                        "bin_index": 6897, "trial_elapsed_ms": 425.0}})
    }

    /// The server's field order (serde_json's `Value` would sort the keys).
    const SERVER_JSON: &str = r#"{"type":"data","data":{"timestamp":1767225600.025,"sequence_number":70000,"spikes":{"channel_ids":[0,1,2],"spike_counts":[0,2,1],"bin_size_ms":25.0},"kinematics":{"vx":12.5,"vy":-3.1,"x":-20.4,"y":11.0},"intention":{"target_id":3,"target_x":-118.0,"target_y":-83.0,"distance_to_target":98.2},"trial_id":7,"trial_time_ms":172425.0,"bin_index":6897,"trial_elapsed_ms":425.0}}"#;

    #[test]
    fn fast_and_full_agree_on_json() {
        let bytes = SERVER_JSON.as_bytes();
        assert_eq!(
            serde_json::from_slice::<Value>(bytes).unwrap(),
            sample(),
            "the literal is the sample"
        );
        let fast = fast(Format::Json, bytes).unwrap();
        assert_eq!(fast.sequence, 70000);
        assert_eq!(fast.timestamp, 1767225600.025);
        assert_eq!(full(Format::Json, bytes).unwrap(), Message::Data(fast, 3));
        // Another field order still decodes, through the full path.
        let sorted = serde_json::to_vec(&sample()).unwrap();
        assert!(super::fast(Format::Json, &sorted).is_none());
        assert!(matches!(full(Format::Json, &sorted), Ok(Message::Data(..))));
    }

    #[test]
    fn fast_and_full_agree_on_msgpack() {
        #[derive(serde::Serialize)]
        struct Body {
            timestamp: f64,
            sequence_number: u64,
        }
        #[derive(serde::Serialize)]
        struct Msg {
            #[serde(rename = "type")]
            kind: &'static str,
            data: Body,
        }
        for seq in [5u64, 200, 70000, 5_000_000_000] {
            let mut bytes = Vec::new();
            let msg = Msg {
                kind: "data",
                data: Body {
                    timestamp: 1767225600.025,
                    sequence_number: seq,
                },
            };
            serde::Serialize::serialize(
                &msg,
                &mut rmp_serde::Serializer::new(&mut bytes).with_struct_map(),
            )
            .unwrap();
            let head = fast(Format::Msgpack, &bytes).unwrap();
            assert_eq!(head.sequence, seq);
            assert_eq!(head.timestamp, 1767225600.025);
        }
        let bytes = rmp_serde::to_vec(&sample()).unwrap();
        assert!(matches!(
            full(Format::Msgpack, &bytes),
            Ok(Message::Data(
                Head {
                    sequence: 70000,
                    ..
                },
                3
            ))
        ));
    }

    #[test]
    fn metadata_is_recognised() {
        let meta = json!({"type": "metadata", "data": {"num_channels": 142}, "session": {}});
        let bytes = serde_json::to_vec(&meta).unwrap();
        assert!(fast(Format::Json, &bytes).is_none());
        assert_eq!(
            full(Format::Json, &bytes).unwrap(),
            Message::Metadata { num_channels: 142 }
        );
    }
}
