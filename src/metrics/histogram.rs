//! Lock-free HDR histograms: recorded with a few relaxed atomic operations, read at any time.
//!
//! The bucket layout is HdrHistogram's (same index math as the `hdrhistogram` crate), but the
//! counts are atomics, so a timing thread or writer records without a lock, without
//! allocating and without ever waiting for a reader. Besides the bucket counts a histogram
//! keeps a second level, one count per [`BLOCK`] consecutive buckets, and the exact running
//! sum and sum of squares of the values: a reader ([`BlockCounts`], the summaries) finds
//! percentiles by walking the block counts and opening only the few blocks where a percentile
//! lands, instead of every bucket. Readers may also take a snapshot into an ordinary
//! `hdrhistogram::Histogram` with the same configuration, where every count lands in exactly
//! the bucket it was recorded in. A read made while values are being recorded may miss the
//! values of that instant; it never invents or loses any afterwards.

use std::ops::Range;
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
/// also re-anchor the schedule and are counted in `schedule_resets`. 88 KiB of bucket counts
/// and 5.5 KiB of block counts.
pub const LATENESS: HistConfig = HistConfig {
    lowest: 1,
    highest: 1 << 30,
    digits: 3,
};

/// Network latency and ring wait: 1 µs resolution, 2 significant digits (1 %), up to 60 s.
/// 10.5 KiB of bucket counts and 0.7 KiB of block counts, so every client can afford its own.
pub const LATENCY: HistConfig = HistConfig {
    lowest: 1_000,
    highest: 60_000_000_000,
    digits: 2,
};

/// Buckets per block of the second level of counts. 32 keeps a block's buckets in two cache
/// lines and the block counts at 1/16 of the bucket counts' memory (u64 against 32 × u32).
pub const BLOCK: usize = 32;

/// An HDR histogram with atomic counts.
#[derive(Debug)]
pub struct AtomicHistogram {
    config: HistConfig,
    counts: Box<[AtomicU32]>,
    /// Values per block of [`BLOCK`] buckets; u64 because a block gathers far more values
    /// than one bucket.
    blocks: Box<[AtomicU64]>,
    /// Exact sum of the values recorded (after clamping to the range), in the histogram's unit.
    sum: AtomicU64,
    /// Sum of their squares, an `f64` kept as its bits (squares of nanoseconds overflow u64).
    sum_squares: AtomicU64,
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
            blocks: (0..len.div_ceil(BLOCK))
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum: AtomicU64::new(0),
            sum_squares: AtomicU64::new(0f64.to_bits()),
            min_index: AtomicU32::new(u32::MAX),
            max_index: AtomicU32::new(0),
            unit_magnitude,
            sub_bucket_half_count_magnitude,
            sub_bucket_half_count,
            sub_bucket_mask,
            leading_zero_count_base: 64 - unit_magnitude - sub_bucket_half_count_magnitude - 1,
        }
    }

    /// Counts one value (nanoseconds). No lock, no allocation: relaxed atomic adds, plus a
    /// compare-and-swap for the sum of squares, which retries only when another thread
    /// records into the same histogram at the same instant (one writer per histogram, except
    /// a session's latency histogram, shared by its clients' writers).
    #[inline]
    pub fn record(&self, nanos: u64) {
        let value = nanos.min(self.config.highest);
        let index = self.index_for(value);
        // The bucket before its block: a reader that sees a block's count then reads its
        // buckets finds at least as many there (on x86; readers cope when it does not).
        self.counts[index].fetch_add(1, Relaxed);
        self.blocks[index / BLOCK].fetch_add(1, Relaxed);
        // Wraps after 1.8e19 ns (584 years of summed latencies): never in practice.
        self.sum.fetch_add(value, Relaxed);
        let square = (value as f64) * (value as f64);
        let _ = self.sum_squares.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + square).to_bits())
        });
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

    /// Values recorded so far (a walk of the block counts: no total is kept, one atomic add
    /// less per value).
    pub fn len(&self) -> u64 {
        self.blocks.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Whether nothing was recorded (the lowest bucket used is still unset).
    pub fn is_empty(&self) -> bool {
        self.min_index.load(Relaxed) == u32::MAX
    }

    /// Exact sum of the values recorded (each clamped to the range), in the histogram's unit.
    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    /// Sum of the squares of the values recorded (each clamped to the range).
    pub fn sum_squares(&self) -> f64 {
        f64::from_bits(self.sum_squares.load(Relaxed))
    }

    /// Number of buckets.
    pub fn bucket_len(&self) -> usize {
        self.counts.len()
    }

    /// Number of blocks of [`BLOCK`] buckets.
    pub fn block_len(&self) -> usize {
        self.blocks.len()
    }

    /// Values recorded in bucket `index` (wraps at 2^32, as the bucket counts do).
    pub fn bucket_count(&self, index: usize) -> u32 {
        self.counts[index].load(Relaxed)
    }

    /// The index of the bucket `value` falls in (clamped to the range), as [`Self::record`]
    /// computes it.
    pub fn index_of(&self, value: u64) -> usize {
        self.index_for(value.min(self.config.highest))
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

    /// Indices that may hold counts. A value being recorded right now may land just outside
    /// and be read on the next snapshot, as with any value recorded after a snapshot.
    pub fn used_span(&self) -> Range<usize> {
        let low = self.min_index.load(Relaxed) as usize;
        let high = self.max_index.load(Relaxed) as usize;
        if low > high {
            0..0
        } else {
            low..(high + 1).min(self.counts.len())
        }
    }

    /// Asks the CPU to start loading this histogram's own fields (span, sums, pointers).
    #[inline]
    pub fn prefetch_header(&self) {
        prefetch(self as *const Self);
        prefetch((self as *const Self).cast::<u8>().wrapping_add(64));
    }

    /// Asks the CPU to start loading what reading `indices` (bucket indices, within the used
    /// span) and the block counts of the used span will touch.
    #[inline]
    pub fn prefetch_buckets(&self, indices: impl IntoIterator<Item = usize>) {
        let span = self.used_span();
        if span.is_empty() {
            return;
        }
        for line in self.blocks[span.start / BLOCK..=(span.end - 1) / BLOCK].chunks(8) {
            prefetch(line.as_ptr());
        }
        for index in indices.into_iter().filter(|i| span.contains(i)) {
            prefetch(&self.counts[index - index % BLOCK]);
            prefetch(&self.counts[index]);
        }
    }

    /// Bytes of heap the counts occupy.
    pub fn heap_bytes(&self) -> usize {
        self.counts.len() * std::mem::size_of::<AtomicU32>()
            + self.blocks.len() * std::mem::size_of::<AtomicU64>()
    }
}

/// Counts of one distribution in an [`AtomicHistogram`]'s layout, readable block by block:
/// a lifetime histogram itself, or a window of one (see [`super::window`]). What the
/// summaries and the Prometheus buckets are computed from, without visiting every bucket.
///
/// Counts read twice may have grown in between (values being recorded), never shrunk, so a
/// reader that totals the blocks first always reaches that total on a second walk.
pub trait BlockCounts {
    /// The histogram whose layout (bucket values, blocks) the counts use.
    fn layout(&self) -> &AtomicHistogram;
    /// The blocks that may hold counts; the others hold none.
    fn block_range(&self) -> Range<usize>;
    /// Values in block `block`.
    fn block(&self, block: usize) -> u64;
    /// The counts of the buckets of block `block`, in order (slots past the histogram's last
    /// bucket are 0).
    fn buckets(&self, block: usize, out: &mut [u64; BLOCK]);
    /// Calls `f` with the index and count of each bucket of block `block` in order, until it
    /// returns false: summaries stop once the block holds no further percentile.
    #[inline]
    fn scan(&self, block: usize, mut f: impl FnMut(usize, u64) -> bool) {
        let mut buckets = [0u64; BLOCK];
        self.buckets(block, &mut buckets);
        for (slot, &count) in buckets.iter().enumerate() {
            if !f(block * BLOCK + slot, count) {
                break;
            }
        }
    }
    /// Exact sum and sum of squares of the values, in the histogram's unit.
    fn sums(&self) -> (u64, f64);
    /// The lowest and highest buckets in use, when known without opening blocks.
    fn bounds(&self) -> Option<(usize, usize)> {
        None
    }
}

impl BlockCounts for AtomicHistogram {
    fn layout(&self) -> &AtomicHistogram {
        self
    }

    fn block_range(&self) -> Range<usize> {
        let span = self.used_span();
        if span.is_empty() {
            0..0
        } else {
            span.start / BLOCK..(span.end - 1) / BLOCK + 1
        }
    }

    #[inline]
    fn block(&self, block: usize) -> u64 {
        self.blocks[block].load(Relaxed)
    }

    #[inline]
    fn buckets(&self, block: usize, out: &mut [u64; BLOCK]) {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.counts.len());
        *out = [0; BLOCK];
        for (slot, count) in out.iter_mut().zip(&self.counts[start..end]) {
            *slot = u64::from(count.load(Relaxed));
        }
    }

    /// Reads the atomics one by one as the scan goes, without copying the block.
    #[inline]
    fn scan(&self, block: usize, mut f: impl FnMut(usize, u64) -> bool) {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.counts.len());
        for (index, count) in (start..end).zip(&self.counts[start..end]) {
            if !f(index, u64::from(count.load(Relaxed))) {
                break;
            }
        }
    }

    fn sums(&self) -> (u64, f64) {
        (self.sum(), self.sum_squares())
    }

    fn bounds(&self) -> Option<(usize, usize)> {
        let span = self.used_span();
        (!span.is_empty()).then(|| (span.start, span.end - 1))
    }
}

/// Cumulative counts of `src` at `cutoffs` (ascending bucket indices, each inclusive; `None`:
/// below every bucket) into `out`, and the total. Walks the blocks once and opens only the
/// blocks a cutoff falls in. The results never decrease along `cutoffs` and never exceed the
/// total, also while values are being recorded.
pub fn cumulative_counts(
    src: &impl BlockCounts,
    cutoffs: &[Option<usize>],
    out: &mut [u64],
) -> u64 {
    let mut next = 0;
    let mut cumulative = 0u64;
    let mut buckets = [0u64; BLOCK];
    for block in src.block_range() {
        let count = src.block(block);
        let end = (block + 1) * BLOCK;
        let mut opened = false;
        while next < cutoffs.len() && cutoffs[next].is_none_or(|c| c < end) {
            out[next] = match cutoffs[next] {
                Some(cutoff) if count > 0 && cutoff >= block * BLOCK => {
                    if !opened {
                        src.buckets(block, &mut buckets);
                        opened = true;
                    }
                    let inside: u64 = buckets[..=cutoff - block * BLOCK].iter().sum();
                    // Buckets read after their block may hold a few more values: stay within
                    // the block's count so the buckets keep adding up.
                    cumulative + inside.min(count)
                }
                _ => cumulative,
            };
            next += 1;
        }
        cumulative += count;
    }
    for slot in &mut out[next..cutoffs.len()] {
        *slot = cumulative;
    }
    cumulative
}

/// A hint to start loading the cache line at `ptr`. Reports read a few scattered lines of
/// thousands of histograms: asking for the next ones while working on this one lets the
/// loads overlap instead of waiting for each miss in turn.
#[inline(always)]
fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no memory, whatever
    // the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
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
        assert_eq!(
            AtomicHistogram::new(LATENESS).heap_bytes(),
            22 * 1024 * 4 + 22 * 1024 / BLOCK * 8
        );
        assert!(AtomicHistogram::new(LATENCY).heap_bytes() < 11 * 1024 + 512);
    }

    #[test]
    fn blocks_sums_and_cumulative_counts_agree_with_the_buckets() {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        for config in [LATENESS, LATENCY] {
            let h = AtomicHistogram::new(config);
            let (mut sum, mut sum_squares) = (0u64, 0f64);
            for _ in 0..5_000 {
                let magnitude = rng.gen_range(0..36);
                let v = rng.gen_range(0..=1u64 << magnitude);
                h.record(v);
                let clamped = v.min(config.highest);
                sum += clamped;
                sum_squares += (clamped as f64).powi(2);
            }
            assert_eq!(h.sum(), sum);
            assert!((h.sum_squares() - sum_squares).abs() <= 1e-12 * sum_squares);
            let mut buckets = [0u64; BLOCK];
            for block in 0..h.block_len() {
                h.buckets(block, &mut buckets);
                assert_eq!(h.block(block), buckets.iter().sum::<u64>(), "block {block}");
            }
            // Cumulative counts at random cutoffs against a sum over every bucket.
            let mut cutoffs: Vec<Option<usize>> = (0..20)
                .map(|_| Some(rng.gen_range(0..h.bucket_len())))
                .chain([None, Some(0), Some(h.bucket_len() - 1)])
                .collect();
            cutoffs.sort();
            let mut out = vec![0; cutoffs.len()];
            let total = cumulative_counts(&h, &cutoffs, &mut out);
            assert_eq!(total, 5_000);
            for (cutoff, got) in cutoffs.iter().zip(&out) {
                let expected: u64 =
                    cutoff.map_or(0, |c| (0..=c).map(|i| u64::from(h.bucket_count(i))).sum());
                assert_eq!(*got, expected, "cutoff {cutoff:?}");
            }
        }
    }
}
