//! Metrics: what the server measures about itself, recorded without locks.
//!
//! Owns the lock-free HDR histograms ([`histogram`]) that timing threads and client writers
//! record into and `/metrics` reads at any time, their sliding windows ([`window`]), the
//! summaries (mean, std, exact percentiles) and the JSON and Prometheus reports.
//! Must never: make a recording thread wait for a reader, or allocate on the recording side.

pub mod histogram;
mod summary;
pub mod window;

pub use histogram::{AtomicHistogram, Hist, HistConfig};
pub use summary::LatencySummary;
pub mod process;
pub mod report;
