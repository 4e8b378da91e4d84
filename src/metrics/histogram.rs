//! Lock-free HDR histograms: recorded with one relaxed atomic add, read at any time.
//!
//! The bucket layout is HdrHistogram's (same index math as the `hdrhistogram` crate), but the
//! counts are atomics, so a timing thread or writer records without a lock, without
//! allocating and without ever waiting for a reader; readers take a snapshot into an ordinary
//! `hdrhistogram::Histogram` with the same configuration, where every count lands in exactly
//! the bucket it was recorded in. A snapshot taken while values are being recorded may miss
//! the values of that instant; it never invents or loses any afterwards.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Histogram of nanoseconds (reader side).
pub type Hist = Histogram<u64>;

/// Range and precision of a histogram of nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistConfig {
    /// Smallest value told apart from 0 (resolution at the bottom of the range).
    pub lowest: u64,
    /// Largest value tracked; larger values are counted as this one.
    pub highest: u64,
    /// Significant decimal digits kept at every magnitude.
    pub digits: u8,
}

/// Tick lateness: 1 ns resolution, 3 significant digits, up to 2^30 ns (1.07 s); later ticks
/// also re-anchor the schedule and are counted in `schedule_resets`. 90 KiB of counts.
pub const LATENESS: HistConfig = HistConfig {
    lowest: 1,
    highest: 1 << 30,
    digits: 3,
};

/// Network latency and ring wait: 1 µs resolution, 2 significant digits (1 %), up to 60 s.
/// 10.5 KiB of counts, so every client can afford its own.
pub const LATENCY: HistConfig = HistConfig {
    lowest: 1_000,
    highest: 60_000_000_000,
    digits: 2,
};

/// An HDR histogram with atomic counts.
#[derive(Debug)]
pub struct AtomicHistogram {
    config: HistConfig,
    counts: Box<[AtomicU32]>,
    total: AtomicU64,
    /// Lowest and highest bucket ever used, so readers scan only that span.
    min_index: AtomicU32,
    max_index: AtomicU32,
    unit_magnitude: u32,
    sub_bucket_half_count_magnitude: u32,
    sub_bucket_half_count: u64,
    sub_bucket_mask: u64,
    leading_zero_count_base: u32,
}

impl AtomicHistogram {
    /// An empty histogram. Panics on a configuration `hdrhistogram` would refuse (a bug).
    pub fn new(config: HistConfig) -> Self {
        assert!(config.lowest >= 1 && config.highest >= 2 * config.lowest && config.digits <= 5);
        let unit_magnitude = config.lowest.ilog2();
        let largest_single_unit = 2 * 10u64.pow(u32::from(config.digits));
        let sub_bucket_count_magnitude = largest_single_unit.next_power_of_two().ilog2();
        let sub_bucket_half_count_magnitude = sub_bucket_count_magnitude.max(1) - 1;
        let sub_bucket_count = 1u64 << (sub_bucket_half_count_magnitude + 1);
        let sub_bucket_half_count = sub_bucket_count / 2;
        let sub_bucket_mask = (sub_bucket_count - 1) << unit_magnitude;
        let mut smallest_untrackable = sub_bucket_count << unit_magnitude;
        let mut buckets = 1u64;
        while smallest_untrackable <= config.highest {
            if smallest_untrackable > u64::MAX / 2 {
                buckets += 1;
                break;
            }
            smallest_untrackable <<= 1;
            buckets += 1;
        }
        let len = ((buckets + 1) * sub_bucket_half_count) as usize;
        Self {
            config,
            counts: (0..len).map(|_| AtomicU32::new(0)).collect(),
            total: AtomicU64::new(0),
            min_index: AtomicU32::new(u32::MAX),
            max_index: AtomicU32::new(0),
            unit_magnitude,
            sub_bucket_half_count_magnitude,
            sub_bucket_half_count,
            sub_bucket_mask,
            leading_zero_count_base: 64 - unit_magnitude - sub_bucket_half_count_magnitude - 1,
        }
    }

    /// Counts one value (nanoseconds). Wait-free: two relaxed atomic adds, no allocation.
    #[inline]
    pub fn record(&self, nanos: u64) {
        let index = self.index_for(nanos.min(self.config.highest));
        self.counts[index].fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        // A plain load first: the read-modify-writes only happen when the span widens.
        let i = index as u32;
        if i > self.max_index.load(Relaxed) {
            self.max_index.fetch_max(i, Relaxed);
        }
        if i < self.min_index.load(Relaxed) {
            self.min_index.fetch_min(i, Relaxed);
        }
    }

    #[inline]
    fn index_for(&self, value: u64) -> usize {
        let bucket = self.leading_zero_count_base - (value | self.sub_bucket_mask).leading_zeros();
        let sub_bucket = value >> (bucket + self.unit_magnitude);
        (((u64::from(bucket) + 1) << self.sub_bucket_half_count_magnitude) + sub_bucket
            - self.sub_bucket_half_count) as usize
    }

    fn value_from_index(&self, index: usize) -> u64 {
        let index = index as u64;
        let mut bucket = (index >> self.sub_bucket_half_count_magnitude) as i64 - 1;
        let mut sub_bucket =
            (index & (self.sub_bucket_half_count - 1)) + self.sub_bucket_half_count;
        if bucket < 0 {
            sub_bucket -= self.sub_bucket_half_count;
            bucket = 0;
        }
        sub_bucket << (bucket as u32 + self.unit_magnitude)
    }

    /// Values recorded so far.
    pub fn len(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration.
    pub fn config(&self) -> HistConfig {
        self.config
    }

    /// An empty reader-side histogram of the same configuration.
    pub fn empty_like(&self) -> Hist {
        Histogram::new_with_bounds(self.config.lowest, self.config.highest, self.config.digits)
            .expect("configuration checked in new()")
    }

    /// Everything recorded so far, as an ordinary histogram (allocates; readers only).
    pub fn snapshot(&self) -> Hist {
        let mut hist = self.empty_like();
        self.for_each_count(|value, count| {
            let _ = hist.record_n(value, count);
        });
        hist
    }

    /// Calls `f(lowest value of bucket, count)` for every non-empty bucket.
    pub fn for_each_count(&self, mut f: impl FnMut(u64, u64)) {
        for (index, count) in self.counts.iter().enumerate() {
            let count = count.load(Relaxed);
            if count > 0 {
                f(self.value_from_index(index), u64::from(count));
            }
        }
    }

    /// Calls `f(index, increase)` for every bucket that grew since `previous` (the counts as
    /// of the last call, updated here), for interval histograms.
    pub fn changes_since(&self, previous: &mut Vec<u32>, mut f: impl FnMut(usize, u32)) {
        previous.resize(self.counts.len(), 0);
        for (index, (seen, count)) in previous.iter_mut().zip(self.counts.iter()).enumerate() {
            let now = count.load(Relaxed);
            if now != *seen {
                f(index, now.wrapping_sub(*seen));
                *seen = now;
            }
        }
    }

    /// Calls `f(index, increase)` for every bucket above `seen` (counts as of an earlier
    /// [`Self::changes_since`]), without updating it.
    pub fn changes_from(&self, seen: &[u32], mut f: impl FnMut(usize, u32)) {
        for (index, count) in self.counts.iter().enumerate() {
            let now = count.load(Relaxed);
            let before = seen.get(index).copied().unwrap_or(0);
            if now != before {
                f(index, now.wrapping_sub(before));
            }
        }
    }

    /// The lowest value of the bucket at `index` (for interpreting [`Self::changes_since`]).
    pub fn bucket_value(&self, index: usize) -> u64 {
        self.value_from_index(index)
    }

    /// The highest value that falls in the bucket at `index`.
    pub fn bucket_highest(&self, index: usize) -> u64 {
        let lowest = self.value_from_index(index);
        let bucket = (index as u64 >> self.sub_bucket_half_count_magnitude).saturating_sub(1);
        lowest + (1u64 << (bucket as u32 + self.unit_magnitude)) - 1
    }

    /// The middle of the bucket at `index` (what a mean counts a value as, as hdrhistogram does).
    pub fn bucket_middle(&self, index: usize) -> u64 {
        let lowest = self.value_from_index(index);
        lowest + (self.bucket_highest(index) - lowest).div_ceil(2)
    }

    /// Non-empty buckets as `(index, count)`, ascending: a snapshot that costs one pass of
    /// loads and a vector the size of the distinct values, not the histogram.
    pub fn counts(&self) -> Vec<(u32, u64)> {
        let span = self.used_span();
        let mut out = Vec::new();
        for (index, count) in self.counts[span.clone()].iter().enumerate() {
            let count = count.load(Relaxed);
            if count > 0 {
                out.push(((span.start + index) as u32, u64::from(count)));
            }
        }
        out
    }

    /// Indices that may hold counts. A value being recorded right now may land just outside
    /// and be read on the next snapshot, as with any value recorded after a snapshot.
    fn used_span(&self) -> std::ops::Range<usize> {
        let low = self.min_index.load(Relaxed) as usize;
        let high = self.max_index.load(Relaxed) as usize;
        if low > high {
            0..0
        } else {
            low..(high + 1).min(self.counts.len())
        }
    }

    /// Bytes of heap the counts occupy.
    pub fn heap_bytes(&self) -> usize {
        self.counts.len() * std::mem::size_of::<AtomicU32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The atomic layout must put every value in the bucket hdrhistogram would.
    fn matches_hdrhistogram(config: HistConfig) {
        let atomic = AtomicHistogram::new(config);
        let mut reference = atomic.empty_like();
        assert_eq!(
            atomic.counts.len(),
            reference.distinct_values(),
            "{config:?}"
        );
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        for _ in 0..20_000 {
            let magnitude = rng.gen_range(0..40);
            let value = rng
                .gen_range(0..=(1u64 << magnitude))
                .clamp(0, config.highest);
            atomic.record(value);
            reference.record(value).unwrap();
        }
        let snapshot = atomic.snapshot();
        assert_eq!(snapshot.len(), 20_000);
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                snapshot.value_at_quantile(q),
                reference.value_at_quantile(q),
                "q={q} {config:?}"
            );
        }
        assert_eq!(snapshot.max(), reference.max());
        assert_eq!(snapshot.min(), reference.min());
    }

    #[test]
    fn layout_matches_hdrhistogram() {
        matches_hdrhistogram(LATENESS);
        matches_hdrhistogram(LATENCY);
        matches_hdrhistogram(HistConfig {
            lowest: 1,
            highest: 60_000_000_000,
            digits: 3,
        });
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let h = AtomicHistogram::new(LATENESS);
        h.record(u64::MAX);
        h.record(0);
        let s = h.snapshot();
        assert_eq!(s.len(), 2);
        assert!(s.max() >= LATENESS.highest - LATENESS.highest / 1000);
    }

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(AtomicHistogram::new(LATENESS).heap_bytes(), 22 * 1024 * 4);
        assert!(AtomicHistogram::new(LATENCY).heap_bytes() < 11 * 1024);
    }
}
