//! Network: HTTP (REST, `/metrics`) and WebSocket streaming on one port.
//!
//! Owns every socket. tiny_http accepts connections and parses requests; REST handlers run
//! on a small pool of worker threads. A WebSocket upgrade is answered through tiny_http, then
//! the connection's socket is taken back from it ([`socket`]): each client gets a reader
//! thread (blocking reads) and a writer on the writer pool (a few threads, each writing
//! without blocking to many clients' sockets, woken once per tick). Only the writer ever
//! writes to a client's socket, so frames never interleave.
//! Must never: share a lock with a timing thread, or let one client's socket slow another.
//!
//! Nothing a client sends may panic the server: `unwrap` and `expect` are denied in this
//! module (and in the registry and session code it calls), tests excepted (`clippy.toml`).
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod http;
mod inbound;
mod reader;
mod reaper;
mod router;
mod server;
pub mod socket;
mod websocket;
mod writer;
mod writer_pool;

pub use http::{is_header_value, ApiError, Params};
pub use router::{route, ControlAction, Endpoint};
pub use server::{default_writer_threads, Server, ServerConfig};
