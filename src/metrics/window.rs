//! Sliding windows (1, 5 and 15 minutes) over a lifetime histogram.
//!
//! Every rotation (the housekeeping thread, every [`ROTATE_EVERY`]) stores what the histogram
//! gained since the previous rotation as a sparse interval (bucket index, count); a window is
//! the sum of the intervals that started within it plus what arrived since the last rotation.
//! So the "1m" window covers between 45 and 60 seconds, and memory grows with the number of
//! distinct values per interval, not with the histogram's size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::histogram::{AtomicHistogram, Hist};

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

    /// What was recorded in roughly the last `span`.
    pub fn window(&self, hist: &AtomicHistogram, span: Duration, now: Instant) -> Hist {
        let mut out = hist.empty_like();
        for interval in self
            .intervals
            .iter()
            .filter(|i| now.duration_since(i.start) <= span)
        {
            for &(index, count) in &interval.counts {
                let _ = out.record_n(hist.bucket_value(index as usize), u64::from(count));
            }
        }
        // Since the last rotation: the live counts above what was seen then.
        let mut seen = self.seen.clone();
        hist.changes_since(&mut seen, |index, count| {
            let _ = out.record_n(hist.bucket_value(index), u64::from(count));
        });
        out
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
        let one = windows.window(&hist, Duration::from_secs(60), now);
        assert_eq!(one.len(), 11, "last interval + the live value");
        assert!(
            one.min() >= 19_000_000,
            "only minute 19 (20 ms values): {}",
            one.min()
        );
        let five = windows.window(&hist, Duration::from_secs(300), now);
        assert_eq!(five.len(), 51);
        let fifteen = windows.window(&hist, Duration::from_secs(900), now);
        assert_eq!(fifteen.len(), 151);
        assert_eq!(hist.len(), 201, "the lifetime histogram keeps everything");
    }
}
