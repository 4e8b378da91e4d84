//! Sliding windows (1, 5 and 15 minutes) over a lifetime histogram.
//!
//! Every rotation (the housekeeping thread, every [`ROTATE_EVERY`]) stores what the histogram
//! gained since the previous rotation as a sparse interval (bucket index, count, and the
//! values' sum and sum of squares); a window is the sum of the intervals that started within
//! it plus what arrived since the last rotation. So the "1m" window covers between 45 and 60
//! seconds, and memory grows with the number of distinct values per interval, not with the
//! histogram's size.
//!
//! Reads are what must be cheap (`/metrics` summarises every window of every session), so the
//! rotation, which may take its time, also merges each window's intervals into a base (sparse
//! bucket counts plus dense block counts). A read is then base + live part, the live part
//! being the lifetime histogram's block counts minus those seen at the last rotation: a walk
//! of the blocks, opening only the few where a percentile lands ([`BlockCounts`]), with no
//! sorting or merging. An interval that leaves a window between two rotations (or, read at
//! the very instant of a rotation, one still in it) is taken out of (or added to) that read
//! only: the result is the same as summing the intervals then in the window.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use super::histogram::{AtomicHistogram, BlockCounts, BLOCK};
use super::LatencySummary;

/// How often intervals are cut.
pub const ROTATE_EVERY: Duration = Duration::from_secs(15);

/// The windows reported, by name.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("15m", Duration::from_secs(900)),
];

/// Sparse counts (bucket index, count; ascending) with their block totals and sums.
#[derive(Default)]
struct Sparse {
    counts: Vec<(u32, u32)>,
    /// First block of `blocks`.
    block_start: usize,
    /// Values per block from `block_start` on (dense: read once per block on every read).
    blocks: Vec<u32>,
    /// Where each of those blocks' buckets start in `counts`, and `counts.len()` last.
    offsets: Vec<u32>,
    sum: u64,
    sum_squares: f64,
}

impl Sparse {
    fn new(counts: Vec<(u32, u32)>, sum: u64, sum_squares: f64) -> Self {
        let mut sparse = Self {
            counts,
            block_start: 0,
            blocks: Vec::new(),
            offsets: Vec::new(),
            sum,
            sum_squares,
        };
        if let (Some(&(first, _)), Some(&(last, _))) = (sparse.counts.first(), sparse.counts.last())
        {
            sparse.block_start = first as usize / BLOCK;
            sparse.blocks = vec![0; last as usize / BLOCK + 1 - sparse.block_start];
            sparse.offsets = vec![0; sparse.blocks.len() + 1];
            for &(index, count) in &sparse.counts {
                let block = index as usize / BLOCK - sparse.block_start;
                sparse.blocks[block] += count;
                sparse.offsets[block + 1] += 1;
            }
            for i in 1..sparse.offsets.len() {
                sparse.offsets[i] += sparse.offsets[i - 1];
            }
        }
        sparse
    }

    fn block_range(&self) -> Range<usize> {
        self.block_start..self.block_start + self.blocks.len()
    }

    #[inline]
    fn block(&self, block: usize) -> u64 {
        block
            .checked_sub(self.block_start)
            .and_then(|i| self.blocks.get(i))
            .map_or(0, |&n| u64::from(n))
    }

    /// Adds `sign` × the counts of block `block` to `out`.
    fn add_buckets(&self, block: usize, sign: i64, out: &mut [i64; BLOCK]) {
        if self.block(block) == 0 {
            return;
        }
        let i = block - self.block_start;
        let start = (block * BLOCK) as u32;
        let (from, to) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        for &(index, count) in &self.counts[from..to] {
            out[(index - start) as usize] += sign * i64::from(count);
        }
    }

    /// Adds `sign` × the block counts to `out`, whose first slot is block `first`.
    fn add_blocks(&self, first: usize, sign: i64, out: &mut [i64]) {
        if self.blocks.is_empty() {
            return;
        }
        let offset = self.block_start - first;
        for (slot, &count) in out[offset..].iter_mut().zip(&self.blocks) {
            *slot += sign * i64::from(count);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * 8 + (self.blocks.capacity() + self.offsets.capacity()) * 4
    }
}

/// Merges two ascending sparse count lists, adding (`sign` 1) or taking away (`sign` -1)
/// `other`'s counts; buckets left at 0 are dropped.
fn merge(ours: &[(u32, u32)], other: &[(u32, u32)], sign: i64) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(ours.len() + if sign > 0 { other.len() } else { 0 });
    let (mut a, mut b) = (ours.iter().peekable(), other.iter().peekable());
    loop {
        let (index, count) = match (a.peek(), b.peek()) {
            (Some(&&(i, x)), Some(&&(j, y))) if i == j => {
                a.next();
                b.next();
                (i, i64::from(x) + sign * i64::from(y))
            }
            (Some(&&(i, x)), Some(&&(j, _))) if i < j => {
                a.next();
                (i, i64::from(x))
            }
            (Some(&&(i, x)), None) => {
                a.next();
                (i, i64::from(x))
            }
            (_, Some(&&(j, y))) => {
                b.next();
                (j, sign * i64::from(y))
            }
            (None, None) => break,
        };
        // Taking away an interval that was added: never below zero.
        debug_assert!(count >= 0, "bucket {index} below zero");
        if count > 0 {
            out.push((index, count as u32));
        }
    }
    out.shrink_to_fit();
    out
}

struct Interval {
    /// Sequence number, counting every interval ever cut (a base holds a suffix of them).
    seq: u64,
    start: Instant,
    gained: Sparse,
}

/// The intervals of one window merged, as of the last rotation: sequence numbers
/// `oldest..end`.
#[derive(Default)]
struct Base {
    oldest: u64,
    /// One past the newest interval merged.
    end: u64,
    merged: Sparse,
}

/// Interval history of one histogram, and each window's intervals merged.
#[derive(Default)]
pub struct Windows {
    /// The histogram's bucket counts at the last rotation.
    seen: Vec<u32>,
    /// Their block totals (kept from the same counts, so live blocks and live buckets agree).
    seen_blocks: Vec<u64>,
    seen_sum: u64,
    seen_sum_squares: f64,
    last_rotation: Option<Instant>,
    next_seq: u64,
    intervals: VecDeque<Interval>,
    /// Per window of [`WINDOWS`]: its intervals merged, as of the last rotation.
    bases: [Base; 3],
}

impl Windows {
    /// Cuts an interval if [`ROTATE_EVERY`] has passed since the last one.
    pub fn maybe_rotate(&mut self, hist: &AtomicHistogram, now: Instant) {
        match self.last_rotation {
            Some(last) if now.duration_since(last) < ROTATE_EVERY => {}
            _ => self.rotate(hist, now),
        }
    }

    /// Cuts an interval now, and merges each window's intervals again (linear in their
    /// distinct buckets; the caller, housekeeping, holds the session state lock meanwhile,
    /// which no timing thread or writer takes).
    pub fn rotate(&mut self, hist: &AtomicHistogram, now: Instant) {
        let start = self.last_rotation.unwrap_or(now);
        self.last_rotation = Some(now);
        if hist.is_empty() {
            return; // nothing recorded yet: keep `seen` unallocated
        }
        // The sums before the counts: a value recorded in between has its count here and its
        // sum in the next interval, never its sum without its count.
        let (sum, sum_squares) = (hist.sum(), hist.sum_squares());
        let mut counts = Vec::new();
        self.seen_blocks.resize(hist.block_len(), 0);
        let seen_blocks = &mut self.seen_blocks;
        hist.changes_since(&mut self.seen, |index, count| {
            counts.push((index as u32, count));
            seen_blocks[index / BLOCK] += u64::from(count);
        });
        if !counts.is_empty() {
            let gained = Sparse::new(
                counts,
                sum.wrapping_sub(self.seen_sum),
                sum_squares - self.seen_sum_squares,
            );
            self.seen_sum = sum;
            self.seen_sum_squares = sum_squares;
            self.intervals.push_back(Interval {
                seq: self.next_seq,
                start,
                gained,
            });
            self.next_seq += 1;
        }
        for (base, (_, span)) in self.bases.iter_mut().zip(WINDOWS) {
            // A base holds what a read just after this rotation sees: intervals that started
            // less than `span` ago (a read at this very instant adds the one exactly `span` old).
            let oldest = self
                .intervals
                .iter()
                .find(|i| now.duration_since(i.start) < span)
                .map_or(self.next_seq, |i| i.seq);
            let mut counts = std::mem::take(&mut base.merged.counts);
            if oldest < base.oldest {
                counts.clear(); // time went back: merge from scratch
                base.end = base.oldest.min(oldest);
                base.oldest = oldest;
            }
            for interval in &self.intervals {
                let was_in = (base.oldest..base.end).contains(&interval.seq);
                let is_in = interval.seq >= oldest;
                if was_in != is_in {
                    let sign = if is_in { 1 } else { -1 };
                    counts = merge(&counts, &interval.gained.counts, sign);
                }
            }
            let (mut sum, mut sum_squares) = (0u64, 0.0);
            for interval in self.intervals.iter().filter(|i| i.seq >= oldest) {
                sum = sum.wrapping_add(interval.gained.sum);
                sum_squares += interval.gained.sum_squares;
            }
            *base = Base {
                oldest,
                end: self.next_seq,
                merged: Sparse::new(counts, sum, sum_squares),
            };
        }
        let longest = WINDOWS[WINDOWS.len() - 1].1;
        while self
            .intervals
            .front()
            .is_some_and(|i| now.duration_since(i.start) > longest)
        {
            self.intervals.pop_front();
        }
    }

    /// Summaries of every window in [`WINDOWS`] (values divided by `per_unit`).
    pub fn summaries(
        &self,
        hist: &AtomicHistogram,
        now: Instant,
        per_unit: f64,
    ) -> [LatencySummary; 3] {
        let mut out = [LatencySummary::default(); 3];
        // The live part's block counts, read once for the three windows.
        let live_range = hist.block_range();
        let live: Vec<i64> = live_range
            .clone()
            .map(|b| {
                let seen = self.seen_blocks.get(b).copied().unwrap_or(0);
                hist.block(b).saturating_sub(seen) as i64
            })
            .collect();
        // Its lowest and highest buckets in use, also read once: with the first and last
        // bucket of each interval (their counts are sorted), they bound every window without
        // opening its first and last blocks.
        let live_bucket = |block: usize, from_end: bool| {
            let start = block * BLOCK;
            let mut buckets = start..(start + BLOCK).min(hist.bucket_len());
            let used = |&i: &usize| hist.bucket_count(i) > self.seen.get(i).copied().unwrap_or(0);
            // A block whose count grew has a bucket that grew; the block's edge otherwise.
            if from_end {
                buckets.rfind(used).unwrap_or(start + BLOCK - 1)
            } else {
                buckets.find(used).unwrap_or(start)
            }
        };
        let live_bounds = live
            .iter()
            .position(|&n| n > 0)
            .zip(live.iter().rposition(|&n| n > 0))
            .map(|(first, last)| {
                (
                    live_bucket(live_range.start + first, false),
                    live_bucket(live_range.start + last, true),
                )
            });
        let mut blocks = Vec::new();
        let opened = RefCell::new(Vec::new());
        for (summary, (base, (_, span))) in out.iter_mut().zip(self.bases.iter().zip(WINDOWS)) {
            // Intervals whose membership changed since the rotation (usually none): one that
            // aged out is taken away, one read at the rotation's instant added.
            let mut corrections = Vec::new();
            let mut bounds = live_bounds;
            for interval in &self.intervals {
                let in_base = (base.oldest..base.end).contains(&interval.seq);
                let in_window = now.duration_since(interval.start) <= span;
                if in_base != in_window {
                    corrections.push((&interval.gained, if in_window { 1 } else { -1 }));
                }
                let counts = &interval.gained.counts;
                if let (true, Some(first), Some(last)) = (in_window, counts.first(), counts.last())
                {
                    let (low, high) = (first.0 as usize, last.0 as usize);
                    bounds = Some(bounds.map_or((low, high), |(l, h)| (l.min(low), h.max(high))));
                }
            }
            let mut range = union(base.merged.block_range(), live_range.clone());
            for (gained, _) in &corrections {
                range = union(range, gained.block_range());
            }
            // The window's block counts, once: both walks of the summary then read an array.
            blocks.clear();
            blocks.resize(range.len(), 0i64);
            if !live_range.is_empty() {
                let offset = live_range.start - range.start;
                for (slot, &n) in blocks[offset..].iter_mut().zip(&live) {
                    *slot += n;
                }
            }
            base.merged.add_blocks(range.start, 1, &mut blocks);
            for (gained, sign) in &corrections {
                gained.add_blocks(range.start, *sign, &mut blocks);
            }
            let window = WindowCounts {
                hist,
                windows: self,
                base: &base.merged,
                corrections,
                range,
                blocks: &blocks,
                opened: &opened,
                bounds,
            };
            *summary = LatencySummary::from_blocks(&window, per_unit);
        }
        out
    }

    /// Bytes of heap held.
    pub fn heap_bytes(&self) -> usize {
        self.seen.capacity() * 4
            + self.seen_blocks.capacity() * 8
            + self
                .intervals
                .iter()
                .map(|i| i.gained.heap_bytes() + std::mem::size_of::<Interval>())
                .sum::<usize>()
            + self
                .bases
                .iter()
                .map(|b| b.merged.heap_bytes())
                .sum::<usize>()
    }
}

fn union(a: Range<usize>, b: Range<usize>) -> Range<usize> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.start.min(b.start)..a.end.max(b.end),
    }
}

/// One window at one read: its base, the corrections, and the live part (the lifetime
/// histogram minus what it held at the last rotation).
struct WindowCounts<'a> {
    hist: &'a AtomicHistogram,
    windows: &'a Windows,
    base: &'a Sparse,
    corrections: Vec<(&'a Sparse, i64)>,
    range: Range<usize>,
    /// Values per block of `range`.
    blocks: &'a [i64],
    /// Live bucket counts of the blocks opened so far, shared by the three windows (their
    /// percentiles often fall in the same blocks).
    opened: &'a RefCell<Vec<(usize, [i64; BLOCK])>>,
    /// Lowest and highest bucket in use: of the live counts and of the intervals in the
    /// window.
    bounds: Option<(usize, usize)>,
}

impl BlockCounts for WindowCounts<'_> {
    fn layout(&self) -> &AtomicHistogram {
        self.hist
    }

    fn block_range(&self) -> Range<usize> {
        self.range.clone()
    }

    #[inline]
    fn block(&self, block: usize) -> u64 {
        self.blocks[block - self.range.start].max(0) as u64
    }

    fn buckets(&self, block: usize, out: &mut [u64; BLOCK]) {
        let mut counts = [0i64; BLOCK];
        self.base.add_buckets(block, 1, &mut counts);
        for (gained, sign) in &self.corrections {
            gained.add_buckets(block, *sign, &mut counts);
        }
        let mut opened = self.opened.borrow_mut();
        let live = match opened.iter().find(|(b, _)| *b == block) {
            Some((_, live)) => live,
            None => {
                let mut live = [0i64; BLOCK];
                let start = block * BLOCK;
                let end = (start + BLOCK).min(self.hist.bucket_len());
                let seen = &self.windows.seen;
                for (slot, index) in live.iter_mut().zip(start..end) {
                    let before = seen.get(index).copied().unwrap_or(0);
                    *slot = i64::from(self.hist.bucket_count(index).wrapping_sub(before));
                }
                opened.push((block, live));
                &opened[opened.len() - 1].1
            }
        };
        for (slot, n) in counts.iter_mut().zip(live) {
            *slot += n;
        }
        for (o, c) in out.iter_mut().zip(counts) {
            *o = c.max(0) as u64;
        }
    }

    fn bounds(&self) -> Option<(usize, usize)> {
        self.bounds
    }

    fn sums(&self) -> (u64, f64) {
        let w = self.windows;
        let mut sum = self
            .base
            .sum
            .wrapping_add(self.hist.sum().wrapping_sub(w.seen_sum));
        let mut sum_squares =
            self.base.sum_squares + (self.hist.sum_squares() - w.seen_sum_squares);
        for (gained, sign) in &self.corrections {
            if *sign > 0 {
                sum = sum.wrapping_add(gained.sum);
            } else {
                sum = sum.wrapping_sub(gained.sum);
            }
            sum_squares += *sign as f64 * gained.sum_squares;
        }
        (sum, sum_squares.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::LATENCY;

    #[test]
    fn windows_hold_only_recent_intervals() {
        let hist = AtomicHistogram::new(LATENCY);
        let mut windows = Windows::default();
        let t0 = Instant::now();
        windows.rotate(&hist, t0);
        for minute in 0..20u64 {
            for _ in 0..10 {
                hist.record((minute + 1) * 1_000_000); // minute m records (m+1) ms
            }
            windows.rotate(&hist, t0 + Duration::from_secs(60 * (minute + 1)));
        }
        let now = t0 + Duration::from_secs(60 * 20);
        hist.record(500_000_000); // after the last rotation: in every window
        let [one, five, fifteen] = windows.summaries(&hist, now, 1e6);
        assert_eq!(one.count, 11, "last interval + the live value");
        assert!(
            one.min >= 19.0,
            "only minute 19 (20 ms values): {}",
            one.min
        );
        assert_eq!(five.count, 51);
        assert_eq!(fifteen.count, 151);
        assert_eq!(hist.len(), 201, "the lifetime histogram keeps everything");
    }

    /// The windows' semantics, on values: each value belongs to the interval it was
    /// recorded in (started at the rotation before), values since the last rotation to every
    /// window. An independent model of what [`Windows`] computes from counts.
    #[derive(Default)]
    struct Model {
        last: Option<Instant>,
        pending: Vec<u64>,
        intervals: Vec<(Instant, Vec<u64>)>,
    }

    impl Model {
        fn rotate(&mut self, now: Instant) {
            let start = self.last.unwrap_or(now);
            self.last = Some(now);
            if !self.pending.is_empty() {
                self.intervals
                    .push((start, std::mem::take(&mut self.pending)));
            }
        }

        fn window(&self, now: Instant, span: Duration) -> Vec<u64> {
            self.intervals
                .iter()
                .filter(|(start, _)| now.duration_since(*start) <= span)
                .flat_map(|(_, values)| values.iter().copied())
                .chain(self.pending.iter().copied())
                .collect()
        }
    }

    fn check(hist: &AtomicHistogram, windows: &Windows, model: &Model, now: Instant) {
        let ours = windows.summaries(hist, now, 1e6);
        for (summary, (name, span)) in ours.iter().zip(WINDOWS) {
            let values = model.window(now, span);
            let mut reference = hist.empty_like();
            for &v in &values {
                reference.record(v.min(hist.config().highest)).unwrap();
            }
            let theirs = LatencySummary::from_nanos(&reference);
            let what = format!("{name} at {:?}", now - model.intervals[0].0);
            assert_eq!(summary.count, theirs.count, "{what}");
            for (a, b) in [
                (summary.min, theirs.min),
                (summary.p50, theirs.p50),
                (summary.p90, theirs.p90),
                (summary.p99, theirs.p99),
                (summary.p999, theirs.p999),
                (summary.max, theirs.max),
            ] {
                assert_eq!(a, b, "{what}: {summary:?} vs {theirs:?}");
            }
            if !values.is_empty() {
                let n = values.len() as f64;
                let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n / 1e6;
                assert!(
                    (summary.mean - mean).abs() <= 1e-9 * mean.max(1e-3),
                    "{what}: exact mean {mean}: {summary:?}"
                );
            }
        }
    }

    #[test]
    fn window_summaries_equal_hdrhistogram_of_the_same_values() {
        use crate::metrics::histogram::LATENESS;
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(5);
        for config in [LATENCY, LATENESS] {
            let hist = AtomicHistogram::new(config);
            let mut windows = Windows::default();
            let mut model = Model::default();
            let t0 = Instant::now();
            let mut now = t0;
            // 90 rotations (past the 15 minutes kept), mostly 15 s apart, some late, some
            // intervals empty; the distribution drifts so windows differ from one another.
            for round in 0..90u64 {
                let values = if round % 7 == 3 {
                    0
                } else {
                    rng.gen_range(1..300)
                };
                for _ in 0..values {
                    let spread = rng.gen_range(10..31);
                    let v = 1_000 * round + rng.gen_range(0..1u64 << spread);
                    hist.record(v);
                    model.pending.push(v.min(config.highest));
                }
                // Reads between rotations: early, late, and at the rotation's instant.
                if round > 0 {
                    for after in [1, 7, 14] {
                        check(&hist, &windows, &model, now + Duration::from_secs(after));
                    }
                }
                now += ROTATE_EVERY
                    + match round % 11 {
                        5 => Duration::from_secs(40), // housekeeping late: several intervals age
                        8 => Duration::from_millis(700),
                        _ => Duration::ZERO,
                    };
                windows.rotate(&hist, now);
                model.rotate(now);
                check(&hist, &windows, &model, now);
            }
        }
    }

    #[test]
    fn window_reads_during_recording_stay_consistent() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let hist = AtomicHistogram::new(LATENCY);
        let recorded = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let mut windows = Windows::default();
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            let _stop = crate::metrics::summary::tests::StopOnDrop(&done);
            let (h, r, d) = (&hist, &recorded, &done);
            scope.spawn(move || {
                let mut x = 1u64;
                while !d.load(SeqCst) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    h.record(20_000 + (x >> 33) % 5_000_000);
                    r.fetch_add(1, SeqCst);
                }
            });
            for round in 1..200u32 {
                let now = t0 + ROTATE_EVERY * round;
                windows.rotate(&hist, now);
                for read in 0..20 {
                    let at = now + Duration::from_millis(700 * read);
                    let summaries = windows.summaries(&hist, at, 1e6);
                    let after = recorded.load(SeqCst) + 1;
                    for s in summaries.iter().filter(|s| s.count > 0) {
                        assert!(s.count <= after, "{s:?} counts more than {after}");
                        let chain = [s.min, s.p50, s.p90, s.p99, s.p999, s.max];
                        assert!(chain.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
                        assert!(s.min >= 0.0199 && s.max <= 5.02 * 1.01, "{s:?}");
                        assert!(s.min <= s.mean && s.mean <= s.max, "{s:?}");
                    }
                }
            }
            done.store(true, SeqCst);
        });
    }
}
