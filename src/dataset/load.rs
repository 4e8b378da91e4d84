//! Choosing and loading the dataset named on the command line.

use std::path::Path;
use std::time::Instant;

use super::synthetic::{self, SyntheticConfig};
use super::{nwb, DatasetError, PacketTable};

/// Loads `spec` (`synthetic`, or the path of an MC_Maze-layout NWB file) and bins it into a
/// packet table.
pub fn load_dataset(spec: &str, seed: u64) -> Result<PacketTable, DatasetError> {
    let started = Instant::now();
    let recording = if spec == "synthetic" {
        synthetic::generate(&SyntheticConfig {
            seed,
            ..SyntheticConfig::default()
        })
    } else {
        nwb::load(Path::new(spec))?
    };
    let table = PacketTable::new(recording)?;
    log::info!(
        "dataset {} ({}): {} units, {} packets ({:.1} s), {} trials, ready in {:.0} ms",
        table.name(),
        table.source(),
        table.num_units(),
        table.num_bins(),
        table.duration_seconds(),
        table.trials().len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(table)
}
