//! Built-in synthetic dataset shaped like MC_Maze small (placeholder being written).

use super::BinnedRecording;

/// Shape and seed of the synthetic recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// PRNG seed: the same seed gives the same recording, bit for bit.
    pub seed: u64,
    /// Number of units (channels).
    pub num_units: usize,
    /// Number of delayed-reach trials.
    pub num_trials: usize,
    /// Number of 25 ms bins (packets).
    pub num_bins: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            num_units: 142,
            num_trials: 100,
            num_bins: 11_748,
        }
    }
}

/// Generates the recording.
pub fn generate(config: &SyntheticConfig) -> BinnedRecording {
    let bins = config.num_bins;
    BinnedRecording {
        name: "MC_Maze".into(),
        source: format!("synthetic seed={}", config.seed),
        num_units: config.num_units,
        spike_counts: vec![0; bins * config.num_units],
        x: vec![0.0; bins],
        y: vec![0.0; bins],
        vx: vec![0.0; bins],
        vy: vec![0.0; bins],
        trials: Vec::new(),
    }
}
