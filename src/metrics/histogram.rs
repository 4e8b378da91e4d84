//! HDR histograms handed from a recording thread to readers through a pair of rtrb rings.
//!
//! The recorder owns the histogram it records into. Every so often it swaps it for a spare
//! that the collector has emptied and returned, and pushes the full one to the collector.
//! Exactly two histograms circulate, so each ring holds at most one and a push can never
//! fail: the recorder never waits and never allocates, and a reader that is slow or absent
//! only delays when the recorder's numbers become visible, it never loses them.

use hdrhistogram::Histogram;
use rtrb::{Consumer, Producer, RingBuffer};

/// Histogram of nanoseconds.
pub type Hist = Histogram<u64>;

/// Highest value a histogram tracks: 60 s. Larger values are clamped to it and still counted,
/// so a stall of minutes shows as "≥ 60 s", never as missing.
pub const HIGHEST_TRACKABLE_NS: u64 = 60_000_000_000;

/// A histogram of nanoseconds from 1 ns to 60 s with `significant_digits` (1–5) of precision.
pub fn new_histogram(significant_digits: u8) -> Hist {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_NS, significant_digits)
        .expect("bounds 1..60 s with 1-5 significant digits are valid")
}

/// Recording end of a histogram pipe; lives on the recording thread.
pub struct HistRecorder {
    current: Hist,
    full: Producer<Hist>,
    spare: Consumer<Hist>,
}

/// Reading end of a histogram pipe; lives with whoever aggregates (network threads).
pub struct HistCollector {
    full: Consumer<Hist>,
    spare: Producer<Hist>,
}

/// A recorder and its collector, sharing two histograms of `significant_digits`.
pub fn histogram_pipe(significant_digits: u8) -> (HistRecorder, HistCollector) {
    let (full_tx, full_rx) = RingBuffer::new(1);
    let (mut spare_tx, spare_rx) = RingBuffer::new(1);
    spare_tx
        .push(new_histogram(significant_digits))
        .expect("a fresh ring of one has room for one");
    (
        HistRecorder {
            current: new_histogram(significant_digits),
            full: full_tx,
            spare: spare_rx,
        },
        HistCollector {
            full: full_rx,
            spare: spare_tx,
        },
    )
}

impl HistRecorder {
    /// Records one value in nanoseconds; values above 60 s count as 60 s.
    #[inline]
    pub fn record(&mut self, nanos: u64) {
        self.current.saturating_record(nanos.max(1));
    }

    /// Hands what was recorded since the last publish to the collector, if the collector has
    /// returned the spare; otherwise keeps recording into the same histogram. Lock-free,
    /// allocation-free.
    pub fn publish(&mut self) {
        if self.current.is_empty() {
            return;
        }
        if let Ok(spare) = self.spare.pop() {
            let full = std::mem::replace(&mut self.current, spare);
            // Cannot fail: a spare was available, so the collector already took the last full.
            if let Err(rtrb::PushError::Full(full)) = self.full.push(full) {
                let spare = std::mem::replace(&mut self.current, full);
                drop(spare); // unreachable by the pool invariant; keep the data either way
            }
        }
    }

    /// Values recorded but not yet published.
    pub fn pending(&self) -> u64 {
        self.current.len()
    }
}

impl HistCollector {
    /// Passes every histogram the recorder has published to `merge`, then empties it and
    /// returns it as the recorder's next spare.
    pub fn drain(&mut self, mut merge: impl FnMut(&Hist)) {
        while let Ok(mut hist) = self.full.pop() {
            merge(&hist);
            hist.reset();
            // Cannot fail: the spare ring is empty while its only histogram was in `full`.
            let _ = self.spare.push(hist);
        }
    }
}

/// Adds `from` into `into`; both track the same range, so this never fails in practice, and
/// a value out of range is clamped rather than lost.
pub fn merge(into: &mut Hist, from: &Hist) {
    if into.add(from).is_err() {
        for value in from.iter_recorded() {
            into.saturating_record_n(value.value_iterated_to(), value.count_at_value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_reach_the_collector_and_nothing_is_lost() {
        let (mut recorder, mut collector) = histogram_pipe(3);
        let mut total = new_histogram(3);
        for round in 0..5u64 {
            for v in 0..100 {
                recorder.record(1_000 + v + round);
            }
            recorder.publish();
            // Publishing twice without a drain keeps recording into the same histogram.
            recorder.record(5);
            recorder.publish();
            collector.drain(|h| merge(&mut total, h));
        }
        assert_eq!(total.len() + recorder.pending(), 5 * 101);
        recorder.publish();
        collector.drain(|h| merge(&mut total, h));
        assert_eq!(total.len(), 505);
        assert_eq!(total.min(), 5);
    }

    #[test]
    fn huge_values_are_clamped_not_dropped() {
        let (mut recorder, mut collector) = histogram_pipe(2);
        recorder.record(u64::MAX);
        recorder.publish();
        let mut seen = 0;
        collector.drain(|h| seen += h.len());
        assert_eq!(seen, 1);
    }
}
