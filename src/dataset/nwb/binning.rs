//! Binning on the 30 kHz clock: spike counts per 25 ms bin and kinematics at each bin start.
//!
//! Owns: the exact binning rule (see the [parent module](super) docs) — every time becomes an
//! integer tick of the 30 kHz acquisition clock by rounding, bin `k` holds the ticks
//! `[t0 + 750k, t0 + 750(k+1))`, and the sample of a behaviour series for a bin is the last one
//! at or before the bin start.
//! Must never: compare float seconds against float bin edges (spike times sit exactly on edges,
//! and `k * 0.025` is not exactly representable), read files, or allocate per spike.

use std::sync::Arc;

/// Ticks per second of the clock spike times are quantised to (Blackrock/Cerebus, 30 kHz).
pub(crate) const TICK_HZ: f64 = 30_000.0;
/// Ticks per 25 ms bin.
pub(crate) const BIN_TICKS: i64 = 750;
/// Times beyond this many seconds from zero are refused: an f64 time that large cannot be a
/// recording clock, and the tick conversion must stay far inside i64.
const MAX_ABS_SECONDS: f64 = 1e9;

/// `t` seconds as the nearest tick of the 30 kHz clock, or `None` if it is not a usable time.
///
/// A time written as `n / 30000.0` comes back as exactly `n`: the product `t * 30000` is
/// within a few ulps of `n`, far less than the half tick that rounding forgives.
pub(crate) fn to_tick(t: f64) -> Option<i64> {
    (t.is_finite() && t.abs() <= MAX_ABS_SECONDS).then(|| (t * TICK_HZ).round() as i64)
}

/// Seconds of the tick `tick`.
pub(crate) fn tick_seconds(tick: i64) -> f64 {
    tick as f64 / TICK_HZ
}

/// When each sample of a behaviour series was taken.
#[derive(Debug, Clone)]
pub(crate) enum Timebase {
    /// Explicit `timestamps`, seconds.
    /// Shared between series whose timestamps are one HDF5 dataset (a soft link).
    Timestamps(Arc<Vec<f64>>),
    /// `starting_time` + `rate`: sample `i` is at `start + i / rate` (what pynwb computes).
    Rate {
        /// `starting_time`, seconds.
        start: f64,
        /// `starting_time@rate`, Hz.
        rate: f64,
        /// Number of samples.
        len: usize,
    },
}

impl Timebase {
    /// Number of samples.
    pub(crate) fn len(&self) -> usize {
        match self {
            Timebase::Timestamps(t) => t.len(),
            Timebase::Rate { len, .. } => *len,
        }
    }

    /// Time of sample `i`, seconds.
    pub(crate) fn seconds(&self, i: usize) -> f64 {
        match self {
            Timebase::Timestamps(t) => t[i],
            Timebase::Rate { start, rate, .. } => start + i as f64 / rate,
        }
    }

    /// Keeps only the first `len` samples (when data and timestamps disagree in length).
    pub(crate) fn truncate(&mut self, new_len: usize) {
        match self {
            Timebase::Timestamps(t) => {
                if new_len < t.len() {
                    *t = Arc::new(t[..new_len].to_vec());
                }
            }
            Timebase::Rate { len, .. } => *len = new_len.min(*len),
        }
    }

    /// Tick of sample `i`, or an error saying which sample has an unusable time.
    pub(crate) fn tick(&self, i: usize) -> Result<i64, String> {
        let t = self.seconds(i);
        to_tick(t).ok_or_else(|| format!("sample {i} has time {t}"))
    }
}

/// For each bin start `t0 + k * BIN_TICKS` (`k < bins`), the index of the last sample at or
/// before it, or sample 0 when the series starts after the bin (only possible for a series that
/// starts later than the position series t0 is taken from).
///
/// One merge pass over sorted ticks: no tick array is materialised, which keeps the peak memory
/// of a 7.2 M-sample series at the size of its timestamps.
pub(crate) fn sample_at_bin_starts(
    time: &Timebase,
    t0: i64,
    bins: usize,
) -> Result<Vec<u32>, String> {
    let n = time.len();
    if n == 0 {
        return Err("no samples".into());
    }
    if n > u32::MAX as usize {
        return Err(format!("{n} samples, more than this loader indexes"));
    }
    let mut out = Vec::with_capacity(bins);
    let mut current = 0usize;
    let mut prev_tick = time.tick(0)?;
    let mut next_tick = if n > 1 { Some(time.tick(1)?) } else { None };
    for k in 0..bins as i64 {
        let start = t0 + k * BIN_TICKS;
        while let Some(next) = next_tick {
            if next > start {
                break;
            }
            if next < prev_tick {
                return Err(format!(
                    "timestamps go backwards at sample {} ({} s after {} s)",
                    current + 1,
                    tick_seconds(next),
                    tick_seconds(prev_tick)
                ));
            }
            current += 1;
            prev_tick = next;
            next_tick = if current + 1 < n {
                Some(time.tick(current + 1)?)
            } else {
                None
            };
        }
        out.push(current as u32);
    }
    Ok(out)
}

/// What happened to the spikes while binning.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SpikeTally {
    /// Spikes counted into a bin.
    pub(crate) binned: u64,
    /// Spikes before t0.
    pub(crate) before: u64,
    /// Spikes at or after the end of the last bin.
    pub(crate) after: u64,
    /// Spike times that are NaN, infinite or absurdly large.
    pub(crate) unusable: u64,
    /// Bins whose count for a unit exceeded `u16::MAX` (kept at `u16::MAX`).
    pub(crate) saturated: u64,
}

/// Adds one unit's spikes into column `unit` of the row-major `counts` (`bins x units`).
pub(crate) fn bin_spikes(
    spike_times: &[f64],
    unit: usize,
    units: usize,
    t0: i64,
    counts: &mut [u16],
    tally: &mut SpikeTally,
) {
    let bins = (counts.len() / units) as i64;
    for &t in spike_times {
        let Some(tick) = to_tick(t) else {
            tally.unusable += 1;
            continue;
        };
        let rel = tick - t0;
        if rel < 0 {
            tally.before += 1;
            continue;
        }
        // Integer floor division: a spike exactly on an edge starts the later bin, as a
        // half-open interval says, with no float rounding involved.
        let bin = rel / BIN_TICKS;
        if bin >= bins {
            tally.after += 1;
            continue;
        }
        let cell = &mut counts[bin as usize * units + unit];
        match cell.checked_add(1) {
            Some(c) => *cell = c,
            None => tally.saturated += 1,
        }
        tally.binned += 1;
    }
}

/// Central-difference velocity of a 2-D position series at sample `i` (one-sided at the ends),
/// units per second. Used only when `hand_vel` is missing.
pub(crate) fn velocity_at(pos: &[f64], time: &Timebase, i: usize) -> (f64, f64) {
    let n = time.len();
    if n < 2 {
        return (0.0, 0.0);
    }
    let (a, b) = match i {
        0 => (0, 1),
        i if i + 1 >= n => (n - 2, n - 1),
        i => (i - 1, i + 1),
    };
    let dt = time.seconds(b) - time.seconds(a);
    if dt == 0.0 {
        return (0.0, 0.0);
    }
    (
        (pos[2 * b] - pos[2 * a]) / dt,
        (pos[2 * b + 1] - pos[2 * a + 1]) / dt,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_exact_for_times_on_the_30khz_clock() {
        for n in [0i64, 1, 749, 750, 751, 29_999, 216_000_000, 215_999_999] {
            assert_eq!(to_tick(n as f64 / TICK_HZ), Some(n), "tick {n}");
        }
        assert_eq!(to_tick(f64::NAN), None);
        assert_eq!(to_tick(1e300), None);
    }

    #[test]
    fn spikes_on_an_edge_start_the_later_bin() {
        let mut counts = vec![0u16; 3 * 2];
        let mut tally = SpikeTally::default();
        // t0 = 30 ticks (1 ms); edges at 30, 780, 1530; end of bins at 2280.
        let spikes: Vec<f64> = [29, 30, 779, 780, 1529, 1530, 2279, 2280]
            .iter()
            .map(|&n| n as f64 / TICK_HZ)
            .collect();
        bin_spikes(&spikes, 1, 2, 30, &mut counts, &mut tally);
        assert_eq!(counts, vec![0, 2, 0, 2, 0, 2]);
        assert_eq!((tally.binned, tally.before, tally.after), (6, 1, 1));
    }

    #[test]
    fn kinematics_take_the_sample_at_or_before_the_bin_start() {
        // Samples every 2 ms (60 ticks) from tick 0; bins every 750 ticks from t0 = 0:
        // 0 -> sample 0; 750 -> 12 (720); 1500 -> 25 (exactly 1500); 2250 -> 37 (2220).
        let time = Timebase::Rate {
            start: 0.0,
            rate: 500.0,
            len: 100,
        };
        assert_eq!(sample_at_bin_starts(&time, 0, 4).unwrap(), [0, 12, 25, 37]);
        // Past the last sample the last one holds; before the first, the first.
        let time = Timebase::Timestamps(Arc::new(vec![0.1, 0.2]));
        assert_eq!(
            sample_at_bin_starts(&time, 0, 10).unwrap(),
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
        );
        let backwards = Timebase::Timestamps(Arc::new(vec![0.0, 0.02, 0.01]));
        assert!(sample_at_bin_starts(&backwards, 0, 2)
            .unwrap_err()
            .contains("backwards"));
    }
}
