//! The packet table: a recording binned once into immutable 25 ms rows.
//!
//! Every loader (synthetic, NWB) produces a [`BinnedRecording`]; [`PacketTable::new`] checks it
//! and derives the per-bin trial and intention columns in one place, so both sources follow the
//! same rules. After construction nothing here changes, which is what lets every session share
//! the table through an `Arc` and build a packet with a row lookup.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::DatasetError;

/// Width of one bin, and so one packet, in milliseconds (40 Hz).
pub const BIN_MS: f64 = 25.0;
/// Width of one bin in seconds.
pub const BIN_SECONDS: f64 = BIN_MS / 1000.0;

/// Sentinel in the per-bin trial column for "not inside any trial".
const NO_TRIAL: u32 = u32::MAX;

/// One trial of the task, as served by `/api/trials`.
///
/// Times are seconds since the start of the first bin of the recording.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Trial identifier as carried in packets (`trial_id`).
    pub id: u32,
    /// Start of the trial, seconds since the recording start.
    pub start_time: f64,
    /// End of the trial (exclusive), seconds since the recording start.
    pub stop_time: f64,
    /// Identifier of the target being reached for (`target_id` in packets).
    pub target_id: Option<u32>,
    /// Target position, millimetres.
    pub target_x: Option<f64>,
    /// Target position, millimetres.
    pub target_y: Option<f64>,
    /// Whether the monkey completed the trial, when the source records it.
    pub success: Option<bool>,
    /// Every other trial column the source carries (go cue, delay, maze id, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A recording binned to 25 ms, as a loader hands it over.
///
/// Kinematics are the sample at each bin's start (the reference implementation's choice).
#[derive(Debug, Clone)]
pub struct BinnedRecording {
    /// Dataset name reported in metadata (`MC_Maze`, ...).
    pub name: String,
    /// Where it came from, for logs and `/api/metadata` (`synthetic seed=42`, a path, ...).
    pub source: String,
    /// Number of units (channels) per bin.
    pub num_units: usize,
    /// Spike counts, row-major: `spike_counts[bin * num_units + unit]`.
    pub spike_counts: Vec<u16>,
    /// Cursor position x per bin, millimetres.
    pub x: Vec<f64>,
    /// Cursor position y per bin, millimetres.
    pub y: Vec<f64>,
    /// Hand velocity x per bin, millimetres per second.
    pub vx: Vec<f64>,
    /// Hand velocity y per bin, millimetres per second.
    pub vy: Vec<f64>,
    /// Trials, in any order; times relative to the first bin's start.
    pub trials: Vec<Trial>,
}

/// One row of the table: everything a data packet carries except the session's sequence
/// number and timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row<'a> {
    /// Row index in the table (`bin_index` on the wire).
    pub bin_index: u32,
    /// Spike count per unit in this bin.
    pub spike_counts: &'a [u16],
    /// Cursor position, millimetres.
    pub x: f64,
    /// Cursor position, millimetres.
    pub y: f64,
    /// Hand velocity, millimetres per second.
    pub vx: f64,
    /// Hand velocity, millimetres per second.
    pub vy: f64,
    /// The trial containing this bin's start, if any.
    pub trial_id: Option<u32>,
    /// The target of that trial.
    pub target_id: Option<u32>,
    /// Target position, millimetres.
    pub target_x: Option<f64>,
    /// Target position, millimetres.
    pub target_y: Option<f64>,
    /// Euclidean distance from the cursor to the target, millimetres.
    pub distance_to_target: Option<f64>,
    /// Start of this bin in milliseconds since the start of the recording (the reference's
    /// `trial_time_ms`, despite the name).
    pub trial_time_ms: f64,
    /// Milliseconds since the current trial started.
    pub trial_elapsed_ms: Option<f64>,
}

/// The whole recording as immutable rows, shared by every session.
#[derive(Debug)]
pub struct PacketTable {
    name: String,
    source: String,
    num_units: usize,
    spike_counts: Vec<u16>,
    x: Vec<f64>,
    y: Vec<f64>,
    vx: Vec<f64>,
    vy: Vec<f64>,
    /// Index into `trials` per bin, or [`NO_TRIAL`].
    bin_trial: Vec<u32>,
    distance: Vec<f64>,
    trials: Vec<Trial>,
    trial_by_id: HashMap<u32, usize>,
    trial_bins: Vec<Range<u32>>,
    by_target: BTreeMap<u32, Arc<[Range<u32>]>>,
    everything: Arc<[Range<u32>]>,
    channel_ids: Vec<u32>,
}

impl PacketTable {
    /// Checks a binned recording and derives the per-bin trial and intention columns.
    pub fn new(rec: BinnedRecording) -> Result<Self, DatasetError> {
        let invalid = |detail: String| DatasetError::Invalid {
            path: PathBuf::from(&rec.source),
            detail,
        };
        let bins = rec.x.len();
        if rec.num_units == 0 {
            return Err(invalid("the recording has no units".into()));
        }
        if bins == 0 {
            return Err(invalid("the recording has no bins".into()));
        }
        if bins > (u32::MAX - 1) as usize {
            return Err(invalid(format!(
                "{bins} bins is more than a table can index"
            )));
        }
        for (name, len) in [
            ("y", rec.y.len()),
            ("vx", rec.vx.len()),
            ("vy", rec.vy.len()),
        ] {
            if len != bins {
                return Err(invalid(format!(
                    "kinematic column {name} has {len} bins, x has {bins}"
                )));
            }
        }
        if rec.spike_counts.len() != bins * rec.num_units {
            return Err(invalid(format!(
                "spike counts hold {} values, expected {bins} bins x {} units",
                rec.spike_counts.len(),
                rec.num_units
            )));
        }

        let mut trials = rec.trials;
        trials.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
        let mut trial_by_id = HashMap::with_capacity(trials.len());
        for (index, trial) in trials.iter().enumerate() {
            if !(trial.start_time.is_finite() && trial.stop_time.is_finite())
                || trial.stop_time < trial.start_time
            {
                return Err(invalid(format!(
                    "trial {} has start {} and stop {}",
                    trial.id, trial.start_time, trial.stop_time
                )));
            }
            if trial_by_id.insert(trial.id, index).is_some() {
                return Err(invalid(format!("trial id {} appears twice", trial.id)));
            }
        }

        let trial_bins: Vec<Range<u32>> = trials
            .iter()
            .map(|t| {
                first_bin_at_or_after(t.start_time, bins)..first_bin_at_or_after(t.stop_time, bins)
            })
            .collect();
        // A later trial wins where two overlap: the newest target is the one being reached for.
        let mut bin_trial = vec![NO_TRIAL; bins];
        for (index, range) in trial_bins.iter().enumerate() {
            for slot in &mut bin_trial[range.start as usize..range.end as usize] {
                *slot = index as u32;
            }
        }
        let distance = (0..bins)
            .map(|bin| {
                let trial = bin_trial[bin];
                if trial == NO_TRIAL {
                    return f64::NAN;
                }
                match (
                    trials[trial as usize].target_x,
                    trials[trial as usize].target_y,
                ) {
                    (Some(tx), Some(ty)) => (tx - rec.x[bin]).hypot(ty - rec.y[bin]),
                    _ => f64::NAN,
                }
            })
            .collect();

        let mut target_ranges: BTreeMap<u32, Vec<Range<u32>>> = BTreeMap::new();
        for (trial, range) in trials.iter().zip(&trial_bins) {
            if let Some(target) = trial.target_id {
                if !range.is_empty() {
                    target_ranges.entry(target).or_default().push(range.clone());
                }
            }
        }
        let by_target = target_ranges
            .into_iter()
            .map(|(target, ranges)| (target, Arc::from(ranges)))
            .collect();

        Ok(Self {
            name: rec.name,
            source: rec.source,
            num_units: rec.num_units,
            spike_counts: rec.spike_counts,
            x: rec.x,
            y: rec.y,
            vx: rec.vx,
            vy: rec.vy,
            bin_trial,
            distance,
            trials,
            trial_by_id,
            trial_bins,
            by_target,
            everything: std::iter::once(0..bins as u32).collect(),
            channel_ids: (0..rec.num_units as u32).collect(),
        })
    }

    /// Dataset name reported in metadata.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the dataset came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of rows (packets) in the recording.
    pub fn num_bins(&self) -> usize {
        self.x.len()
    }

    /// Number of units (channels) per packet.
    pub fn num_units(&self) -> usize {
        self.num_units
    }

    /// `0..num_units`, the `channel_ids` of every packet.
    pub fn channel_ids(&self) -> &[u32] {
        &self.channel_ids
    }

    /// Length of the recording in seconds.
    pub fn duration_seconds(&self) -> f64 {
        // Multiply by the exact integer 25 before dividing so 11,748 bins print as 293.7.
        self.num_bins() as f64 * BIN_MS / 1000.0
    }

    /// All trials, sorted by start time.
    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    /// The trial with this id.
    pub fn trial(&self, id: u32) -> Option<&Trial> {
        self.trial_by_id.get(&id).map(|&index| &self.trials[index])
    }

    /// Trials whose target is `target_id`.
    pub fn trials_for_target(&self, target_id: u32) -> impl Iterator<Item = &Trial> {
        self.trials
            .iter()
            .filter(move |t| t.target_id == Some(target_id))
    }

    /// Bin ranges of one trial, as a playlist; `None` for an unknown or empty trial.
    pub fn playlist_for_trial(&self, id: u32) -> Option<Arc<[Range<u32>]>> {
        let range = self.trial_bins[*self.trial_by_id.get(&id)?].clone();
        (!range.is_empty()).then(|| Arc::from(vec![range]))
    }

    /// Bin ranges of every trial reaching for `target_id`, as a playlist.
    pub fn playlist_for_target(&self, target_id: u32) -> Option<Arc<[Range<u32>]>> {
        self.by_target.get(&target_id).cloned()
    }

    /// The whole recording as a playlist.
    pub fn playlist_all(&self) -> Arc<[Range<u32>]> {
        self.everything.clone()
    }

    /// Target ids that occur in the trial table, ascending.
    pub fn target_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_target.keys().copied()
    }

    /// The row at `bin`. Panics if `bin >= num_bins()`; callers index from playlists built
    /// from this table, which only hold valid bins.
    pub fn row(&self, bin: u32) -> Row<'_> {
        let i = bin as usize;
        let units = self.num_units;
        let trial = match self.bin_trial[i] {
            NO_TRIAL => None,
            index => Some(&self.trials[index as usize]),
        };
        let trial_time_ms = bin as f64 * BIN_MS;
        let distance = self.distance[i];
        Row {
            bin_index: bin,
            spike_counts: &self.spike_counts[i * units..(i + 1) * units],
            x: self.x[i],
            y: self.y[i],
            vx: self.vx[i],
            vy: self.vy[i],
            trial_id: trial.map(|t| t.id),
            target_id: trial.and_then(|t| t.target_id),
            target_x: trial.and_then(|t| t.target_x),
            target_y: trial.and_then(|t| t.target_y),
            distance_to_target: (!distance.is_nan()).then_some(distance),
            trial_time_ms,
            trial_elapsed_ms: trial.map(|t| trial_time_ms - t.start_time * 1000.0),
        }
    }

    /// Bytes of heap this table holds, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let f64s = self.x.capacity()
            + self.y.capacity()
            + self.vx.capacity()
            + self.vy.capacity()
            + self.distance.capacity();
        self.spike_counts.capacity() * 2
            + f64s * 8
            + self.bin_trial.capacity() * 4
            + self.trials.capacity() * std::mem::size_of::<Trial>()
            + self.trial_bins.capacity() * std::mem::size_of::<Range<u32>>()
            + self.channel_ids.capacity() * 4
    }
}

/// Index of the first bin whose start is at or after `t` seconds, clamped to `bins`.
///
/// Trial edges are float seconds; a small tolerance keeps a time that is exactly on a bin edge
/// (but off by float rounding) in that bin rather than the next.
fn first_bin_at_or_after(t: f64, bins: usize) -> u32 {
    let bin = (t / BIN_SECONDS - 1e-6).ceil();
    bin.clamp(0.0, bins as f64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(bins: usize, trials: Vec<Trial>) -> BinnedRecording {
        BinnedRecording {
            name: "test".into(),
            source: "test".into(),
            num_units: 2,
            spike_counts: (0..bins * 2).map(|v| v as u16).collect(),
            x: (0..bins).map(|b| b as f64).collect(),
            y: vec![0.0; bins],
            vx: vec![1.0; bins],
            vy: vec![-1.0; bins],
            trials,
        }
    }

    fn trial(id: u32, start: f64, stop: f64, target: u32) -> Trial {
        Trial {
            id,
            start_time: start,
            stop_time: stop,
            target_id: Some(target),
            target_x: Some(10.0),
            target_y: Some(0.0),
            success: Some(true),
            extra: Default::default(),
        }
    }

    #[test]
    fn rows_carry_trial_fields_only_inside_trials() {
        let table = PacketTable::new(recording(10, vec![trial(7, 0.05, 0.15, 3)])).unwrap();
        let outside = table.row(1);
        assert_eq!(outside.trial_id, None);
        assert_eq!(outside.distance_to_target, None);
        let inside = table.row(2);
        assert_eq!(inside.trial_id, Some(7));
        assert_eq!(inside.target_id, Some(3));
        assert_eq!(inside.spike_counts, &[4, 5]);
        assert_eq!(inside.distance_to_target, Some(8.0));
        assert_eq!(inside.trial_elapsed_ms, Some(0.0));
        assert_eq!(table.row(5).trial_id, Some(7));
        assert_eq!(table.row(6).trial_id, None, "stop time is exclusive");
        assert_eq!(table.row(6).trial_time_ms, 150.0);
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one-range playlists are the point
    fn playlists_cover_trial_bins() {
        let trials = vec![
            trial(1, 0.0, 0.05, 2),
            trial(2, 0.1, 0.2, 2),
            trial(3, 0.2, 0.25, 5),
        ];
        let table = PacketTable::new(recording(10, trials)).unwrap();
        assert_eq!(&*table.playlist_for_trial(2).unwrap(), &[4..8]);
        assert_eq!(&*table.playlist_for_target(2).unwrap(), &[0..2, 4..8]);
        assert!(table.playlist_for_target(9).is_none());
        assert!(table.playlist_for_trial(42).is_none());
        assert_eq!(table.target_ids().collect::<Vec<_>>(), vec![2, 5]);
    }

    #[test]
    fn inconsistent_recordings_are_rejected() {
        let mut rec = recording(10, vec![]);
        rec.vy.pop();
        let err = PacketTable::new(rec).unwrap_err().to_string();
        assert!(err.contains("vy"), "{err}");
        let dup = recording(10, vec![trial(1, 0.0, 0.1, 0), trial(1, 0.1, 0.2, 0)]);
        assert!(PacketTable::new(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
