//! Metrics: what the server measures about itself, recorded without locks.
//!
//! Owns the lock-free HDR histograms ([`histogram`]: bucket and block counts, exact running
//! sums) that timing threads and client writers record into and `/metrics` reads at any time,
//! their sliding windows ([`window`], merged at each rotation), the summaries (exact mean and
//! std, exact percentiles, read from the block counts) and the JSON and Prometheus reports
//! ([`report`], written by the `json` writer and split over the [`render_pool`] helpers).
//! Must never: make a recording thread wait for a reader, or allocate on the recording side.

pub mod histogram;
pub(crate) mod json;
mod summary;
pub mod window;

pub use histogram::{AtomicHistogram, Hist, HistConfig};
pub use summary::LatencySummary;
pub mod process;
pub mod render_pool;
pub mod report;
