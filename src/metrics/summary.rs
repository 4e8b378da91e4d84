//! Latency summaries as reported in `/metrics`: the reference's mean/std/max plus exact
//! percentiles from the HDR counts, computed from block counts ([`BlockCounts`]) so that a
//! summary costs a walk of the blocks, not of every bucket.

use serde::Serialize;

use super::histogram::{AtomicHistogram, BlockCounts, BLOCK};
use super::json::{json_object, WriteJson};
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

impl WriteJson for LatencySummary {
    /// The bytes of the derived `Serialize` through serde_json, written directly: the
    /// document holds thousands of summaries.
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "mean" => self.mean,
            "std" => self.std,
            "max" => self.max,
            "min" => self.min,
            "p50" => self.p50,
            "p90" => self.p90,
            "p99" => self.p99,
            "p999" => self.p999,
            "count" => self.count,
        );
    }
}

impl LatencySummary {
    /// Summarises `src`, values divided by `per_unit`. Count, min, max and percentiles are
    /// the figures hdrhistogram would give for the same counts (percentile q: the highest
    /// value of the first bucket whose cumulative count reaches ⌈q·count⌉); mean and std are
    /// exact, from the running sums, not from bucket middles.
    ///
    /// Walks the block counts twice (a total, then the thresholds) and opens at most six
    /// blocks: the first and last non-empty ones (min, max) and those holding a percentile.
    /// While values are being recorded every figure stays consistent: `count` never exceeds
    /// what was recorded, and min ≤ p50 ≤ p90 ≤ p99 ≤ p999 ≤ max, with the mean in between.
    pub fn from_blocks(src: &impl BlockCounts, per_unit: f64) -> Self {
        let hist = src.layout();
        let range = src.block_range();
        let total: u64 = range.clone().map(|b| src.block(b)).sum();
        if total == 0 {
            return Self::default();
        }
        // hdrhistogram's rule: the first bucket whose cumulative count reaches ⌈q·total⌉.
        let thresholds =
            [0.50, 0.90, 0.99, 0.999].map(|q| ((q * total as f64).ceil() as u64).max(1));
        let mut found = [usize::MAX; 4];
        let (mut next, mut cumulative) = (0, 0u64);
        let (mut first, mut last) = (None, None);
        for block in range.clone() {
            let count = src.block(block);
            if count == 0 {
                continue;
            }
            if next == thresholds.len() {
                // Every percentile found: only the last block in use is left to find, and
                // it is nearer the end (distributions have long tails).
                last = (block..range.end).rev().find(|&b| src.block(b) > 0);
                break;
            }
            first.get_or_insert(block);
            last = Some(block);
            // Within the block, until its count holds no further percentile.
            let holds_next =
                |next: usize| next < thresholds.len() && cumulative + count >= thresholds[next];
            if holds_next(next) {
                let (mut inside, mut last_used) = (cumulative, block * BLOCK + BLOCK - 1);
                src.scan(block, |index, n| {
                    if n > 0 {
                        inside += n;
                        last_used = index;
                        while next < thresholds.len() && inside >= thresholds[next] {
                            found[next] = index;
                            next += 1;
                        }
                    }
                    holds_next(next)
                });
                // Buckets read after their block may not show all of its values yet: a
                // threshold the block reaches falls on its last bucket seen in use.
                while holds_next(next) {
                    found[next] = last_used;
                    next += 1;
                }
            }
            cumulative += count;
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Self::default(); // every block emptied between the two walks: impossible
        };
        let (min, max) = match src.bounds() {
            // A lifetime histogram tracks them; widened to the blocks read, in case a value
            // counted there has not updated them yet.
            Some((low, high)) => (
                if first < low / BLOCK {
                    first * BLOCK
                } else {
                    low
                },
                if last > high / BLOCK {
                    (last * BLOCK + BLOCK - 1).min(hist.bucket_len() - 1)
                } else {
                    high
                },
            ),
            None => {
                let mut min = first * BLOCK;
                src.scan(first, |index, n| {
                    min = index;
                    n == 0
                });
                let mut buckets = [0u64; BLOCK];
                src.buckets(last, &mut buckets);
                let max = last * BLOCK + buckets.iter().rposition(|&n| n > 0).unwrap_or(0);
                (min, max.clamp(min, hist.bucket_len() - 1))
            }
        };
        // Thresholds not reached (counts cannot shrink, so never) or outside [min, max]
        // (values recorded between the reads) are held to the range read.
        let percentile = |i: usize| hist.bucket_highest(i.clamp(min, max)) as f64 / per_unit;
        let (lowest, highest) = (
            hist.bucket_value(min) as f64,
            hist.bucket_highest(max) as f64,
        );
        let (sum, sum_squares) = src.sums();
        let mean = (sum as f64 / total as f64).clamp(lowest, highest);
        let variance = (sum_squares / total as f64 - mean * mean).max(0.0);
        Self {
            mean: mean / per_unit,
            std: variance.sqrt() / per_unit,
            max: highest / per_unit,
            min: lowest / per_unit,
            p50: percentile(found[0]),
            p90: percentile(found[1]),
            p99: percentile(found[2]),
            p999: percentile(found[3]),
            count: total,
        }
    }

    /// Summarises everything `hist` recorded, in milliseconds (values are nanoseconds).
    pub fn of(hist: &AtomicHistogram) -> Self {
        Self::from_blocks(hist, 1e6)
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
pub(crate) mod tests {
    use super::*;
    use crate::metrics::HistConfig;

    /// Exact mean and population standard deviation of `values`.
    fn exact(values: &[u64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// Block summaries against an hdrhistogram fed the same values: count, min, max and
    /// percentiles identical; mean and std exact, so within a bucket width of hdrhistogram's
    /// bucket-middle figures.
    fn check_against_hdrhistogram(config: HistConfig, values: &[u64]) {
        let atomic = AtomicHistogram::new(config);
        let mut reference = atomic.empty_like();
        for &v in values {
            atomic.record(v);
            reference.record(v.min(config.highest)).unwrap();
        }
        let ours = LatencySummary::of(&atomic);
        let theirs = LatencySummary::from_nanos(&reference);
        assert_eq!(ours.count, theirs.count);
        for (name, a, b) in [
            ("p50", ours.p50, theirs.p50),
            ("p90", ours.p90, theirs.p90),
            ("p99", ours.p99, theirs.p99),
            ("p999", ours.p999, theirs.p999),
            ("max", ours.max, theirs.max),
            ("min", ours.min, theirs.min),
        ] {
            assert_eq!(a, b, "{name} {config:?}: {ours:?} vs {theirs:?}");
        }
        let clamped: Vec<u64> = values.iter().map(|&v| v.min(config.highest)).collect();
        let (mean, std) = exact(&clamped);
        assert!(
            (ours.mean - mean / 1e6).abs() <= 1e-9 * (mean / 1e6).max(1e-3),
            "exact mean {mean} ns: {ours:?}"
        );
        // The std comes from E[x²] − mean², whose f64 rounding is relative to the mean.
        assert!(
            (ours.std - std / 1e6).abs() <= 1e-6 * (std / 1e6).max(mean / 1e6).max(1e-3),
            "exact std {std} ns: {ours:?}"
        );
        // hdrhistogram counts each value as its bucket's middle: at most half the widest
        // bucket used away from the exact figure.
        let top = atomic.index_of(reference.max());
        let widest = (atomic.bucket_highest(top) + 1 - atomic.bucket_value(top)) as f64 / 1e6;
        assert!(
            (ours.mean - theirs.mean).abs() <= widest,
            "{ours:?} vs {theirs:?}"
        );
    }

    #[test]
    fn block_summaries_equal_hdrhistogram_figures() {
        use crate::metrics::histogram::{LATENCY, LATENESS};
        for config in [LATENESS, LATENCY] {
            let values: Vec<u64> = (0..5_000u64)
                .map(|v| 1_000 + (v * 7_919) % 3_000_000)
                .collect();
            check_against_hdrhistogram(config, &values);
        }
        assert_eq!(
            LatencySummary::of(&AtomicHistogram::new(LATENCY)),
            LatencySummary::default()
        );
    }

    #[test]
    fn block_summaries_equal_hdrhistogram_under_random_values() {
        use crate::metrics::histogram::{LATENCY, LATENESS};
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
        for round in 0..60 {
            let config = if round % 2 == 0 { LATENESS } else { LATENCY };
            // From a single value to many, over narrow and wide spreads (up to past the top).
            let n = [1, 2, 3, 10, 999, 1_000, 1_001, 20_000][round % 8];
            let magnitude = rng.gen_range(4..40);
            let base = rng.gen_range(0..1u64 << magnitude);
            let values: Vec<u64> = (0..n)
                .map(|_| {
                    let spread = rng.gen_range(0..=magnitude);
                    base + rng.gen_range(0..=1u64 << spread)
                })
                .collect();
            check_against_hdrhistogram(config, &values);
        }
    }

    /// Sets the flag when dropped, also by a panic.
    pub(crate) struct StopOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn summaries_read_during_recording_stay_consistent() {
        use crate::metrics::histogram::LATENCY;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let hist = AtomicHistogram::new(LATENCY);
        let recorded = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let (low, high) = (20_000u64, 9_000_000u64);
        std::thread::scope(|scope| {
            let _stop = StopOnDrop(&done); // a failed assertion must not leave writers spinning
            for seed in 0..2u64 {
                let (hist, recorded, done) = (&hist, &recorded, &done);
                scope.spawn(move || {
                    let mut x = seed + 1;
                    while !done.load(SeqCst) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        hist.record(low + (x >> 33) % (high - low));
                        recorded.fetch_add(1, SeqCst);
                    }
                });
            }
            let mut reads = 0;
            while reads < 2_000 || recorded.load(SeqCst) < 100_000 {
                let s = LatencySummary::of(&hist);
                let after = recorded.load(SeqCst) + 2; // two records may be mid-way
                reads += 1;
                if s.count == 0 {
                    continue;
                }
                assert!(s.count <= after, "{s:?} counts more than {after} recorded");
                let chain = [s.min, s.p50, s.p90, s.p99, s.p999, s.max];
                assert!(chain.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
                assert!(s.min >= low as f64 / 1e6 * 0.99, "{s:?}");
                assert!(s.max <= high as f64 / 1e6 * 1.01, "{s:?}");
                assert!(s.min <= s.mean && s.mean <= s.max, "{s:?}");
            }
            done.store(true, SeqCst);
        });
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
