//! Latency summaries as reported in `/metrics`: the reference's mean/std/max plus exact
//! percentiles from the HDR counts.

use serde::Serialize;

use super::histogram::AtomicHistogram;
use super::Hist;

/// One distribution: milliseconds for latencies, the measured unit for decoding errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Mean, ms.
    pub mean: f64,
    /// Standard deviation, ms.
    pub std: f64,
    /// Largest value, ms.
    pub max: f64,
    /// Smallest value, ms.
    pub min: f64,
    /// Median, ms.
    pub p50: f64,
    /// 90th percentile, ms.
    pub p90: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// 99.9th percentile, ms.
    pub p999: f64,
    /// Number of values.
    pub count: u64,
}

impl LatencySummary {
    /// Summarises sparse counts (`(index, count)`, ascending) of `hist`'s layout, values
    /// divided by `per_unit`; the same figures hdrhistogram would give for them, without
    /// building one.
    pub fn from_counts(hist: &AtomicHistogram, counts: &[(u32, u64)], per_unit: f64) -> Self {
        let total: u64 = counts.iter().map(|&(_, c)| c).sum();
        let (Some(&(first, _)), Some(&(last, _))) = (counts.first(), counts.last()) else {
            return Self::default();
        };
        if total == 0 {
            return Self::default();
        }
        // hdrhistogram's rule: the first bucket whose cumulative count reaches ⌈q·total⌉.
        let thresholds =
            [0.50, 0.90, 0.99, 0.999].map(|q| ((q * total as f64).ceil() as u64).max(1));
        let mut values = [0u64; 4];
        let (mut cumulative, mut next) = (0u64, 0);
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for &(i, c) in counts {
            let middle = hist.bucket_middle(i as usize) as f64;
            sum += middle * c as f64;
            sum_sq += middle * middle * c as f64;
            cumulative += c;
            while next < thresholds.len() && cumulative >= thresholds[next] {
                values[next] = hist.bucket_highest(i as usize);
                next += 1;
            }
        }
        let mean = sum / total as f64;
        let variance = (sum_sq / total as f64 - mean * mean).max(0.0);
        let unit = |v: u64| v as f64 / per_unit;
        Self {
            mean: mean / per_unit,
            std: variance.sqrt() / per_unit,
            max: unit(hist.bucket_highest(last as usize)),
            min: unit(hist.bucket_value(first as usize)),
            p50: unit(values[0]),
            p90: unit(values[1]),
            p99: unit(values[2]),
            p999: unit(values[3]),
            count: total,
        }
    }

    /// Summarises everything `hist` recorded, in milliseconds (values are nanoseconds).
    pub fn of(hist: &AtomicHistogram) -> Self {
        Self::from_counts(hist, &hist.counts(), 1e6)
    }

    /// Summarises a histogram of nanoseconds in milliseconds; all zeros when it is empty.
    pub fn from_nanos(hist: &Hist) -> Self {
        Self::scaled(hist, 1e6)
    }

    /// Summarises a histogram whose values are `per_unit` to the reported unit (1e6 for
    /// ns → ms, 1e3 for thousandths → units).
    pub fn scaled(hist: &Hist, per_unit: f64) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / per_unit;
        Self {
            mean: hist.mean() / per_unit,
            std: hist.stdev() / per_unit,
            max: ms(hist.max()),
            min: ms(hist.min()),
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            count: hist.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_summaries_equal_hdrhistogram_figures() {
        use crate::metrics::histogram::{LATENCY, LATENESS};
        for config in [LATENESS, LATENCY] {
            let atomic = AtomicHistogram::new(config);
            for v in 0..5_000u64 {
                atomic.record(1_000 + (v * 7_919) % 3_000_000);
            }
            let ours = LatencySummary::of(&atomic);
            let theirs = LatencySummary::from_nanos(&atomic.snapshot());
            assert_eq!(ours.count, theirs.count);
            for (a, b) in [
                (ours.p50, theirs.p50),
                (ours.p99, theirs.p99),
                (ours.p999, theirs.p999),
                (ours.max, theirs.max),
                (ours.min, theirs.min),
            ] {
                assert_eq!(a, b, "{config:?}: {ours:?} vs {theirs:?}");
            }
            assert!(
                (ours.mean - theirs.mean).abs() < 1e-9 * theirs.mean.max(1.0),
                "{ours:?} vs {theirs:?}"
            );
            assert!(
                (ours.std - theirs.std).abs() < 1e-6 * theirs.std.max(1.0),
                "{ours:?} vs {theirs:?}"
            );
        }
        assert_eq!(
            LatencySummary::of(&AtomicHistogram::new(LATENCY)),
            LatencySummary::default()
        );
    }

    #[test]
    fn percentiles_come_from_the_distribution() {
        let mut hist =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            hist.record(v * 1_000).unwrap(); // 1 µs .. 1 ms
        }
        let s = LatencySummary::from_nanos(&hist);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 0.5).abs() < 0.001, "{s:?}");
        assert!((s.p99 - 0.99).abs() < 0.001, "{s:?}");
        assert!((s.max - 1.0).abs() < 0.001, "{s:?}");
        assert!((s.mean - 0.5005).abs() < 0.001, "{s:?}");
    }
}
