//! Sliding windows (1, 5 and 15 minutes) over a lifetime histogram.
//!
//! Every rotation (the housekeeping thread, every [`ROTATE_EVERY`]) stores what the histogram
//! gained since the previous rotation as a sparse interval (bucket index, count); a window is
//! the sum of the intervals that started within it plus what arrived since the last rotation.
//! So the "1m" window covers between 45 and 60 seconds, and memory grows with the number of
//! distinct values per interval, not with the histogram's size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::histogram::AtomicHistogram;
use super::LatencySummary;

/// How often intervals are cut.
pub const ROTATE_EVERY: Duration = Duration::from_secs(15);

/// The windows reported, by name.
pub const WINDOWS: [(&str, Duration); 3] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("15m", Duration::from_secs(900)),
];

struct Interval {
    start: Instant,
    counts: Vec<(u32, u32)>,
}

/// Interval history of one histogram.
#[derive(Default)]
pub struct Windows {
    seen: Vec<u32>,
    last_rotation: Option<Instant>,
    intervals: VecDeque<Interval>,
}

impl Windows {
    /// Cuts an interval if [`ROTATE_EVERY`] has passed since the last one.
    pub fn maybe_rotate(&mut self, hist: &AtomicHistogram, now: Instant) {
        match self.last_rotation {
            Some(last) if now.duration_since(last) < ROTATE_EVERY => {}
            _ => self.rotate(hist, now),
        }
    }

    /// Cuts an interval now.
    pub fn rotate(&mut self, hist: &AtomicHistogram, now: Instant) {
        let start = self.last_rotation.unwrap_or(now);
        self.last_rotation = Some(now);
        if hist.is_empty() {
            return; // nothing recorded yet: keep `seen` unallocated
        }
        let mut counts = Vec::new();
        hist.changes_since(&mut self.seen, |index, count| {
            counts.push((index as u32, count))
        });
        if !counts.is_empty() {
            counts.shrink_to_fit();
            self.intervals.push_back(Interval { start, counts });
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

    /// Summaries of every window in [`WINDOWS`] (values divided by `per_unit`). The live
    /// part (since the last rotation) is read once and shared by the three.
    pub fn summaries(
        &self,
        hist: &AtomicHistogram,
        now: Instant,
        per_unit: f64,
    ) -> [LatencySummary; 3] {
        let mut live = Vec::new();
        if self.seen.is_empty() {
            live = hist.counts();
        } else {
            hist.changes_from(&self.seen, |index, count| {
                live.push((index as u32, u64::from(count)))
            });
        }
        WINDOWS.map(|(_, span)| {
            let mut counts = live.clone();
            counts.extend(
                self.intervals
                    .iter()
                    .filter(|i| now.duration_since(i.start) <= span)
                    .flat_map(|i| {
                        i.counts
                            .iter()
                            .map(|&(index, count)| (index, u64::from(count)))
                    }),
            );
            counts.sort_unstable_by_key(|&(index, _)| index);
            counts.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1 += later.1;
                }
                same
            });
            LatencySummary::from_counts(hist, &counts, per_unit)
        })
    }

    /// Bytes of heap held.
    pub fn heap_bytes(&self) -> usize {
        self.seen.capacity() * 4
            + self
                .intervals
                .iter()
                .map(|i| i.counts.capacity() * 8 + std::mem::size_of::<Interval>())
                .sum::<usize>()
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
}
