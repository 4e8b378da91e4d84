//! Signal impairments for stress-testing decoders: Gaussian noise, slow drift, channel dropout.
//!
//! The model is the reference implementation's, so its presets mean the same thing here:
//!
//! ```text
//! noisy = c + N(0, noise_std) · (c + 1)
//! drift = drift_amplitude · [sin(2πt/T) + 0.1 · sin(2πt/(T/10))] · (c + 1) · (1 + offset_ch)
//! out   = max(0, round(noisy + drift)),  0 for dropped channels
//! ```
//!
//! with `t` the session time of the packet (sequence number × 25 ms) and `offset_ch` a fixed
//! per-channel offset in ±0.25. Randomness comes from a PRNG seeded from the session seed and
//! the packet's sequence number, so the same seed and settings give byte-identical counts in
//! every run, whatever the timing. [`NoiseState::apply`] runs on the timing thread: it writes
//! into a buffer sized at construction and never allocates.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

/// How a session's spikes are impaired.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseConfig {
    /// Standard deviation of the Gaussian noise, as a fraction of (count + 1).
    pub noise_std: f64,
    /// Amplitude of the sinusoidal drift, as a fraction of (count + 1).
    pub drift_amplitude: f64,
    /// Period of the slow drift component, seconds (the fast one is a tenth of it).
    pub drift_period_seconds: f64,
    /// Fraction of units silenced (their counts are always 0).
    pub dropout: f64,
    /// Seed of the noise; `None` takes the session's.
    pub seed: Option<u64>,
    /// Delay added to every packet before it is written, ms (a delay line, per session).
    pub latency_ms: f64,
    /// Extra random delay per packet, uniform in 0..jitter_ms (order is kept).
    pub jitter_ms: f64,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self::OFF
    }
}

impl NoiseConfig {
    /// No impairment.
    pub const OFF: NoiseConfig = NoiseConfig {
        noise_std: 0.0,
        drift_amplitude: 0.0,
        drift_period_seconds: 60.0,
        dropout: 0.0,
        seed: None,
        latency_ms: 0.0,
        jitter_ms: 0.0,
    };

    /// The reference's presets: `light` (0.2 / 0.1), `moderate` (0.5 / 0.3), `intense`
    /// (1.0 / 0.5), `extreme` (2.0 / 0.8) as noise_std / drift_amplitude, and `off`.
    pub fn preset(name: &str) -> Option<Self> {
        let (noise_std, drift_amplitude) = match name.to_ascii_lowercase().as_str() {
            "off" | "none" | "clean" => (0.0, 0.0),
            "light" => (0.2, 0.1),
            "moderate" => (0.5, 0.3),
            "intense" => (1.0, 0.5),
            "extreme" => (2.0, 0.8),
            _ => return None,
        };
        Some(Self {
            noise_std,
            drift_amplitude,
            ..Self::OFF
        })
    }

    /// Names accepted by [`NoiseConfig::preset`].
    pub const PRESETS: [&'static str; 5] = ["off", "light", "moderate", "intense", "extreme"];

    /// Whether it changes spike counts (the timing thread's part).
    pub fn is_active(&self) -> bool {
        self.noise_std > 0.0 || self.drift_amplitude > 0.0 || self.dropout > 0.0
    }

    /// Whether it delays packets (the writers' part).
    pub fn delays(&self) -> bool {
        self.latency_ms > 0.0 || self.jitter_ms > 0.0
    }

    /// Checks every field is in range, saying which is not.
    pub fn validate(&self) -> Result<(), String> {
        let finite_in = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between {lo} and {hi}, got {v}"))
            }
        };
        finite_in("noise_std", self.noise_std, 0.0, 100.0)?;
        finite_in("drift_amplitude", self.drift_amplitude, 0.0, 100.0)?;
        finite_in("drift_period_seconds", self.drift_period_seconds, 0.1, 1e6)?;
        finite_in("dropout", self.dropout, 0.0, 1.0)?;
        // A packet delayed by more than its client's buffer holds would only be dropped.
        finite_in("latency_ms", self.latency_ms, 0.0, 1000.0)?;
        finite_in("jitter_ms", self.jitter_ms, 0.0, 1000.0)
    }
}

/// A noise configuration ready for the timing thread, with its per-channel constants and
/// output buffer allocated up front.
#[derive(Debug, Clone)]
pub struct NoiseState {
    config: NoiseConfig,
    seed: u64,
    offsets: Vec<f64>,
    dropped: Vec<bool>,
    out: Vec<u16>,
}

impl NoiseState {
    /// Prepares `config` for `units` channels; `session_seed` is used unless the config
    /// names its own seed.
    pub fn new(config: NoiseConfig, units: usize, session_seed: u64) -> Self {
        let seed = config.seed.unwrap_or(session_seed);
        let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0x6e6f_6973_6563_6831);
        let offsets = (0..units).map(|_| rng.gen_range(-0.25..0.25)).collect();
        // Dropout picks exactly round(dropout · units) channels, the same ones for a seed.
        let mut order: Vec<usize> = (0..units).collect();
        for i in (1..units).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let silenced = (config.dropout * units as f64).round() as usize;
        let mut dropped = vec![false; units];
        for &unit in order.iter().take(silenced) {
            dropped[unit] = true;
        }
        Self {
            config,
            seed,
            offsets,
            dropped,
            out: vec![0; units],
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NoiseConfig {
        &self.config
    }

    /// The seed in use.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Impaired counts for the packet with `sequence`. No allocation.
    pub fn apply(&mut self, counts: &[u16], sequence: u64) -> &[u16] {
        let n = counts.len().min(self.out.len());
        let t = sequence as f64 * crate::dataset::BIN_SECONDS;
        let c = &self.config;
        let period = c.drift_period_seconds;
        let tau = std::f64::consts::TAU;
        let drift_shape = (tau * t / period).sin() + 0.1 * (tau * t / (period / 10.0)).sin();
        let mut rng = Pcg64Mcg::seed_from_u64(mix(self.seed, sequence));
        let channels = counts
            .iter()
            .zip(&mut self.out)
            .zip(self.offsets.iter().zip(&self.dropped));
        for ((&count, out), (&offset, &dropped)) in channels {
            if dropped {
                *out = 0;
                continue;
            }
            let count = f64::from(count);
            let scale = count + 1.0;
            let mut value = count;
            if c.noise_std > 0.0 {
                let z: f64 = rng.sample(StandardNormal);
                value += z * c.noise_std * scale;
            }
            if c.drift_amplitude > 0.0 {
                value += c.drift_amplitude * drift_shape * scale * (1.0 + offset);
            }
            *out = value.round().clamp(0.0, f64::from(u16::MAX)) as u16;
        }
        &self.out[..n]
    }
}

/// SplitMix64 of the seed and sequence: independent streams per packet.
fn mix(seed: u64, sequence: u64) -> u64 {
    let mut z = seed ^ sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_counts_and_different_seed_differs() {
        let counts: Vec<u16> = (0..142).map(|i| (i % 5) as u16).collect();
        let config = NoiseConfig::preset("moderate").unwrap();
        let mut a = NoiseState::new(config, 142, 7);
        let mut b = NoiseState::new(config, 142, 7);
        let mut c = NoiseState::new(config, 142, 8);
        for seq in 1..200 {
            let x = a.apply(&counts, seq).to_vec();
            assert_eq!(x, b.apply(&counts, seq));
            if seq == 100 {
                assert_ne!(x, c.apply(&counts, seq));
            }
        }
    }

    #[test]
    fn noise_has_the_configured_spread() {
        // Counts of 0 with drift off: out = max(0, round(z · std)); with std = 10 the
        // rectified, rounded Gaussian has mean ≈ std / sqrt(2π) ≈ 3.99.
        let config = NoiseConfig {
            noise_std: 10.0,
            ..NoiseConfig::OFF
        };
        let mut state = NoiseState::new(config, 100, 1);
        let zeros = vec![0u16; 100];
        let mut sum = 0.0;
        let mut n = 0.0;
        for seq in 0..2000 {
            for &v in state.apply(&zeros, seq) {
                sum += f64::from(v);
                n += 1.0;
            }
        }
        let mean = sum / n;
        assert!((mean - 3.99).abs() < 0.1, "mean {mean}");
    }

    #[test]
    fn dropout_silences_the_same_channels() {
        let config = NoiseConfig {
            dropout: 0.25,
            ..NoiseConfig::OFF
        };
        let mut state = NoiseState::new(config, 100, 3);
        let ones = vec![5u16; 100];
        let first = state.apply(&ones, 1).to_vec();
        assert_eq!(first.iter().filter(|&&v| v == 0).count(), 25);
        assert_eq!(
            first,
            state.apply(&ones, 2),
            "no noise, no drift: only dropout"
        );
    }

    #[test]
    fn presets_and_validation() {
        assert_eq!(NoiseConfig::preset("extreme").unwrap().noise_std, 2.0);
        assert!(NoiseConfig::preset("loud").is_none());
        assert!(!NoiseConfig::OFF.is_active());
        let bad = NoiseConfig {
            dropout: 1.5,
            ..NoiseConfig::OFF
        };
        assert!(bad.validate().unwrap_err().contains("dropout"));
        let nan = NoiseConfig {
            noise_std: f64::NAN,
            ..NoiseConfig::OFF
        };
        assert!(nan.validate().is_err());
    }
}
