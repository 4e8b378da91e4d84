//! PhantomLink: a real-time neural-data replay server.
//!
//! Data flows one way, and the modules read in that order:
//! [`dataset`] (load and bin once) → [`engine`] (one timing thread per session) →
//! [`codec`] (packets to wire frames) → [`net`] (HTTP, WebSocket writers) with
//! [`metrics`] recording along the way. With the `lsl` feature, `lsl` publishes each
//! session as Lab Streaming Layer outlets, fed by the session's tap like another client.
#![deny(missing_docs)]

pub mod codec;
pub mod config;
pub mod dataset;
pub mod decoder;
pub mod engine;
#[cfg(feature = "lsl")]
pub mod lsl;
pub mod metrics;
pub mod net;
