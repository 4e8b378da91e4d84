//! Engine: sessions and their timing threads.
//!
//! # The real-time contract
//!
//! Each session has one timing thread, pinned to a core, that wakes at absolute deadlines
//! `t0 + n·25 ms` on the monotonic clock (spin_sleep for the last stretch), looks up one
//! packet-table row, encodes it once per wire format that has subscribers, and pushes the
//! shared frame into each client's rtrb ring. On that path, once a session is streaming:
//!
//! - **No lock a network thread can hold.** Control (pause, resume, seek, filter, subscribe)
//!   arrives through a bounded crossbeam channel that the tick drains with `try_recv`;
//!   status, counters and latency histograms go out through atomics
//!   ([`crate::metrics::histogram::AtomicHistogram`]).
//! - **No I/O.** Writers own the sockets; the tick only pushes into rings, marks the writers
//!   ready and unparks their pool threads (one futex wake per pool thread, see [`WriterWaker`]).
//! - **No allocation in steady state.** Frames come from a per-format pool and are reused once
//!   every client has let go of them; rings and subscriber lists are sized at subscribe time.
//!   `tests/no_alloc_tick.rs` holds this with a counting allocator.
//! - **Nothing hidden.** Deadlines are absolute, so there is no drift; lateness (wake − deadline)
//!   of every tick goes into an HDR histogram.
//!
//! A full ring means that client is slow: the packet is dropped for it alone and counted.
//! A tap ([`Tap`], e.g. the LSL outlets) is fed the same way: each tick's counts are copied
//! into a buffer recycled through a return ring and pushed into the tap's ring; a consumer
//! that falls behind loses ticks (counted), never stalls the timing thread.
//! Subscribing, unsubscribing, resuming and the first packet of a new format are control
//! events, not steady state: they may allocate (a ring, a frame pool).

mod client;
mod command;
mod fanout;
pub mod feedback;
mod noise;
mod playback;
pub mod realtime;
mod registry;
mod session;
mod tap;
mod timing;
mod wake;

pub use client::{ClientCounters, ClientShared, CloseReason};
pub use command::{Command, Filter, Playlist};
pub use fanout::Subscriber;
pub use noise::{NoiseConfig, NoiseState};
pub use playback::{Playback, SeekError};
pub use registry::{validate_code, ClientTicket, EngineConfig, Registry, RegistryError};
pub use session::{AttachError, DepartedTotals, Session, SessionBusy, SessionState, SessionStatus};
pub use tap::{
    tap, Tap, TapConsumer, TapDelivery, TapReceiver, TapSample, TapShared, TapSource, TAP_SLOTS,
};
pub use timing::{
    auto_spin, SpinControl, TickOutcome, TimingConfig, TimingLoop, MAX_SPIN, PERIOD, SPIN_BUDGET,
};
pub use wake::WriterWaker;
