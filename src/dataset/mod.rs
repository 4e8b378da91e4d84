//! Datasets: where the recording comes from, and the packet table it is binned into once.
//!
//! Owns: loading (built-in synthetic generator, NWB files), binning to 25 ms, the immutable
//! [`PacketTable`] shared by every session, and the trial table served by the REST API.
//! Must never: be touched mutably after startup, or do I/O once streaming has begun. Every
//! session holds an `Arc<PacketTable>` and building a packet is a row lookup.

mod load;
pub mod nwb;
pub mod synthetic;
mod table;

pub use load::load_dataset;

pub use table::{BinnedRecording, PacketTable, Row, Trial, BIN_MS, BIN_SECONDS};

use std::path::PathBuf;

/// Why a dataset could not be loaded or binned.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is readable but lacks something we need, or holds something inconsistent.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file (or `synthetic`).
        path: PathBuf,
        /// What is wrong, naming the offending HDF5 path or column.
        detail: String,
    },
}
