//! Latency summaries as reported in `/metrics`: the reference's mean/std/max plus exact
//! percentiles from the HDR counts.

use serde::Serialize;

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
