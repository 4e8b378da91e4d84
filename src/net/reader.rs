//! A client's reader thread: reads what the client sends, through tungstenite, so that pings
//! are answered, the close handshake completes, and oversized or malformed frames end the
//! connection with the right code. It never writes to the socket: tungstenite's replies go
//! to the writer through a bounded channel, whole frames at a time.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message, WebSocket};

use super::inbound;
use crate::dataset::PacketTable;
use crate::engine::{ClientShared, CloseReason, WriterWaker};

/// Shortest interval between two error replies to one client.
const ERROR_REPLY_INTERVAL: Duration = Duration::from_millis(100);

/// Largest message a client may send (decoder feedback is a few hundred bytes).
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Replies (pongs, close) the writer has not sent yet before the client is cut off: a
/// client that pings without reading is not allowed to grow this queue without bound.
pub const MAX_PENDING_REPLIES: usize = 64;

/// The reader's view of the socket: reads go to the socket, writes to the writer thread.
struct ReplyRelay {
    socket: TcpStream,
    replies: Sender<Vec<u8>>,
    writer: WriterWaker,
}

impl Read for ReplyRelay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }
}

impl Write for ReplyRelay {
    /// tungstenite writes its whole output buffer (complete frames) per call, so each message
    /// on the channel is a run of whole frames and cannot split one.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.replies
            .try_send(buf.to_vec())
            .map_err(|_| io::Error::other("client is not reading its replies"))?;
        self.writer.wake();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads until the client closes, vanishes or misbehaves; then tells the writer.
pub fn run(
    socket: TcpStream,
    replies: Sender<Vec<u8>>,
    writer: WriterWaker,
    client: Arc<ClientShared>,
    table: Arc<PacketTable>,
    done: Arc<AtomicBool>,
) {
    let error_replies = replies.clone();
    let mut last_error_reply: Option<Instant> = None;
    let config = WebSocketConfig {
        max_message_size: Some(MAX_CLIENT_MESSAGE),
        max_frame_size: Some(MAX_CLIENT_MESSAGE),
        ..WebSocketConfig::default()
    };
    let relay = ReplyRelay {
        socket,
        replies,
        writer: writer.clone(),
    };
    // Tells the writer the reader has ended, however it ends (a panic included).
    let _done = DoneGuard {
        done,
        writer: writer.clone(),
    };
    let mut ws = WebSocket::from_raw_socket(relay, Role::Server, Some(config));
    loop {
        match ws.read() {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                let received = Instant::now();
                let binary = matches!(message, Message::Binary(_));
                let reply =
                    inbound::handle(&message.into_data(), binary, &client, &table, received);
                // Errors are answered at most ten times a second; the rest are only counted.
                if let Some(frame) = reply {
                    if last_error_reply.is_none_or(|t| t.elapsed() >= ERROR_REPLY_INTERVAL) {
                        last_error_reply = Some(received);
                        if error_replies.try_send(frame.bytes().to_vec()).is_ok() {
                            writer.wake();
                        }
                    }
                }
            }
            // Pong replies and close replies are queued by tungstenite and flushed to the
            // relay at the start of the next read.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {}
            Err(WsError::Capacity(_)) => {
                client.request_close(CloseReason::MessageTooBig);
                break;
            }
            Err(WsError::Protocol(_) | WsError::Utf8) => {
                client.request_close(CloseReason::ProtocolError);
                break;
            }
            Err(_) => break, // closed, reset, or our own shutdown of the socket
        }
    }
}

struct DoneGuard {
    done: Arc<AtomicBool>,
    writer: WriterWaker,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.done.store(true, Relaxed);
        self.writer.wake();
    }
}
