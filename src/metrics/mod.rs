//! Metrics: what the server measures about itself, recorded without locks.
//!
//! Owns the HDR histogram plumbing ([`histogram`]) that moves latency distributions from the
//! threads that record them (timing threads, client writers) to the threads that read them
//! (`/metrics`), and the summaries (mean, std, exact percentiles) reported in JSON.
//! Must never: make a recording thread wait for a reader, or allocate on the recording side.

pub mod histogram;
mod summary;

pub use histogram::{histogram_pipe, new_histogram, Hist, HistCollector, HistRecorder};
pub use summary::LatencySummary;
pub mod process;
pub mod report;
