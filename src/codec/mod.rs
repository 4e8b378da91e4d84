//! Codec: packets and messages to WebSocket frame bytes.
//!
//! Owns the wire format (the compatibility contract in DESIGN.md), JSON and MessagePack
//! encodings of it, and WebSocket framing of server messages. Server→client frames are never
//! masked, so one encoded frame serves every client of a format: the timing thread encodes each
//! packet once per format in use, into a reused buffer, without allocating.
//! Must never: do I/O, or allocate on the packet path once its buffers have grown to size.

mod frame;
mod message;

pub use frame::{Frame, FRAME_HEADER_MAX};
pub use message::{encode_data, encode_metadata, DataPacket, Metadata, SessionRef};

/// A wire format a client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// JSON text frames (`/stream/{code}`).
    Json,
    /// MessagePack binary frames (`/stream/binary/{code}`), same structure as JSON.
    #[serde(rename = "msgpack")]
    MessagePack,
}

impl WireFormat {
    /// Every format, in index order.
    pub const ALL: [WireFormat; 2] = [WireFormat::Json, WireFormat::MessagePack];

    /// Dense index, for per-format arrays on the timing thread.
    pub fn index(self) -> usize {
        match self {
            WireFormat::Json => 0,
            WireFormat::MessagePack => 1,
        }
    }

    /// WebSocket opcode of this format's data frames.
    pub fn opcode(self) -> u8 {
        match self {
            WireFormat::Json => 0x1,
            WireFormat::MessagePack => 0x2,
        }
    }

    /// Name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Json => "json",
            WireFormat::MessagePack => "msgpack",
        }
    }
}

/// Why a message could not be encoded. Encoding our own structs into a `Vec` cannot fail in
/// practice; the type exists so that a future codec error is reported, not unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde_json failed.
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    /// rmp-serde failed.
    #[error("MessagePack encoding failed: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
}
