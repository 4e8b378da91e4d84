//! NWB files with the MC_Maze layout, read natively (pure-Rust HDF5) and binned once.
//!
//! Owns: turning an NWB file shaped like DANDI 000128/000138/000139/000140 into a
//! [`BinnedRecording`] — `/units` spike trains into 25 ms spike counts, `/processing/behavior`
//! series into per-bin kinematics, `/intervals/trials` into [`Trial`]s — and describing what a
//! file holds ([`inspect`], [`NwbReport`]).
//! Must never: panic, hang or allocate without bound on a damaged file (every failure is a
//! [`DatasetError`] naming the file and the HDF5 path), need a system HDF5 library, or be
//! called once streaming has begun (it does file I/O).
//!
//! # The binning rule
//!
//! Spike times are seconds quantised to the 30 kHz acquisition clock, so many lie exactly on a
//! 25 ms bin edge, where comparing floats against `t0 + k * 0.025` would put them in either bin
//! depending on rounding. Instead every time is first put on that clock:
//! `tick = round(t * 30000)`, which is exact for any time written as `n / 30000`. Then
//!
//! * **t0** is the tick of the first sample of the position series (`cursor_pos`);
//! * bin `k` holds the ticks `[t0 + 750k, t0 + 750(k + 1))` — half-open, so a spike exactly on
//!   an edge starts the later bin — computed as the integer `(tick - t0) / 750`;
//! * the bins cover `t0 ..= end`, `end` being the later of the last position sample and the last
//!   trial `stop_time`: `num_bins = (end - t0) / 750 + 1`. Spikes before t0 or after the last bin
//!   are left out and counted in the report.
//!
//! A time that is not on the 30 kHz grid is moved to the nearest tick (at most 16.7 µs).
//!
//! # Kinematics and trials
//!
//! * `x, y` = `cursor_pos`; `vx, vy` = `hand_vel` (the decoding target of the NLB benchmark).
//!   If `cursor_pos` is missing `hand_pos` stands in; if `hand_vel` is missing the velocity is
//!   the central difference of `hand_pos` (one-sided at the ends). Both cases are warnings.
//! * Each bin takes the **sample at or before its start** (the reference's choice: the state the
//!   decoder sees when the bin opens); the first sample if the series starts later.
//! * Series timing is explicit `timestamps` (possibly an HDF5 soft link to another series'
//!   timestamps, which is then read once) or `starting_time` + `rate`
//!   (sample `i` at `starting_time + i / rate`).
//! * Trial `id` is the row index; `target_id = active_target`,
//!   `target_x/y = target_pos[active_target]` (ragged `(M, 2)`); `success` from the bool enum;
//!   every other column goes into [`Trial::extra`], ragged ones as nested arrays. Times —
//!   `start_time`, `stop_time` and float columns named `*_time` — are seconds since t0, the
//!   clock of `trial_time_ms`.

mod binning;
mod reader;
mod trials;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hdf5_reader::Dataset;

use self::binning::{sample_at_bin_starts, tick_seconds, to_tick, SpikeTally, Timebase, BIN_TICKS};
use self::reader::NwbFile;
use super::{BinnedRecording, DatasetError, Trial, BIN_SECONDS};

/// Where the behaviour series live.
const BEHAVIOR: &str = "/processing/behavior";
/// The spike trains.
const SPIKE_TIMES: &str = "/units/spike_times";
/// End offsets of each unit's spikes in [`SPIKE_TIMES`].
const SPIKE_INDEX: &str = "/units/spike_times_index";
/// Most spike-count cells (bins x units) a file may ask for: 1 GiB of u16. The full MC_Maze
/// needs 52 M; a damaged timestamp claiming years of recording is refused, not allocated.
const MAX_COUNT_CELLS: usize = 1 << 29;
/// Trial columns the MC_Maze layout has besides start/stop, reported when absent.
const OPTIONAL_TRIAL_COLUMNS: [&str; 15] = [
    "success",
    "num_targets",
    "target_pos",
    "active_target",
    "target_on_time",
    "go_cue_time",
    "move_onset_time",
    "rt",
    "delay",
    "maze_id",
    "trial_type",
    "trial_version",
    "num_barriers",
    "barrier_pos",
    "split",
];
/// Unit columns the MC_Maze layout has besides the spike trains, reported when absent.
const OPTIONAL_UNIT_COLUMNS: [&str; 3] = ["obs_intervals", "electrodes", "heldout"];
/// Behaviour series of the MC_Maze layout, in the order they are reported.
const KNOWN_SERIES: [&str; 4] = ["cursor_pos", "hand_pos", "hand_vel", "eye_pos"];

/// Loads an MC_Maze-layout NWB file and bins it to 25 ms (see the [module docs](self) for the
/// exact rules). Warnings (missing optional data, fallbacks, dropped spikes) go to the log.
///
/// Errors: [`DatasetError::Io`] if the file cannot be opened; [`DatasetError::Invalid`] naming
/// the HDF5 path if a required dataset is missing or malformed, or the file is not HDF5,
/// truncated or corrupt.
pub fn load(path: &Path) -> Result<BinnedRecording, DatasetError> {
    let (recording, report) = load_with_report(path)?;
    for warning in &report.warnings {
        log::warn!("{}: {warning}", path.display());
    }
    Ok(recording)
}

/// Loads the file exactly as [`load`] does and describes what was found. An `Err` means the
/// file is unusable (the server would refuse it too); the error names the path at fault.
pub fn inspect(path: &Path) -> Result<NwbReport, DatasetError> {
    load_with_report(path).map(|(_, report)| report)
}

/// What [`inspect`] found in a file. Its `Display` is the text `phantomlink inspect` prints.
#[derive(Debug, Clone)]
pub struct NwbReport {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Number of units (rows of `/units`).
    pub num_units: usize,
    /// Number of spikes in `/units/spike_times`.
    pub num_spikes: u64,
    /// Spikes counted into a bin (the rest were before t0, after the last bin, or unusable).
    pub spikes_binned: u64,
    /// Earliest and latest spike time, seconds (file clock), if there are spikes.
    pub spike_time_range: Option<(f64, f64)>,
    /// Stored datatype of `/units/spike_times_index` (`uint8`, `uint16`, ...).
    pub spike_index_dtype: String,
    /// t0, the start of bin 0, seconds (file clock).
    pub t0_seconds: f64,
    /// Number of 25 ms bins (packets).
    pub num_bins: usize,
    /// `num_bins x 25 ms`, seconds.
    pub duration_seconds: f64,
    /// Behaviour series found under `/processing/behavior`.
    pub series: Vec<SeriesReport>,
    /// The series kinematics `x, y` come from.
    pub position_source: String,
    /// Where `vx, vy` come from (`hand_vel`, or a derivative).
    pub velocity_source: String,
    /// Number of trials (0 if there is no trial table).
    pub num_trials: usize,
    /// Trial columns found, with their kind (`float`, `int[2] ragged`, `string`, ...).
    pub trial_columns: Vec<(String, String)>,
    /// Columns of `/units` found besides `spike_times` and the index columns.
    pub unit_columns: Vec<String>,
    /// Optional parts of the MC_Maze layout that this file lacks (`/intervals/trials/go_cue_time`,
    /// `/processing/behavior/eye_pos`, ...). Their absence is fine.
    pub missing_optional: Vec<String>,
    /// Things the loader worked around (fallbacks, dropped spikes, unserved columns).
    pub warnings: Vec<String>,
    /// Wall time of the load and binning, seconds.
    pub load_seconds: f64,
}

/// One behaviour series as found in the file.
#[derive(Debug, Clone)]
pub struct SeriesReport {
    /// HDF5 path of the series group.
    pub path: String,
    /// Shape of its `data`.
    pub shape: Vec<u64>,
    /// `chunked` or `contiguous` storage of its `data`.
    pub storage: String,
    /// How its samples are timed.
    pub timing: SeriesTiming,
}

/// How a behaviour series' samples are timed.
#[derive(Debug, Clone)]
pub enum SeriesTiming {
    /// An explicit `timestamps` dataset.
    Timestamps {
        /// Number of timestamps.
        count: u64,
        /// First timestamp, seconds.
        first: f64,
        /// Last timestamp, seconds.
        last: f64,
        /// Mean sampling rate `(count - 1) / (last - first)`, Hz.
        mean_rate_hz: f64,
        /// Another series whose timestamps dataset this one shares (an HDF5 link).
        shared_with: Option<String>,
    },
    /// `starting_time` and its `rate` attribute.
    Rate {
        /// `starting_time`, seconds.
        starting_time: f64,
        /// Samples per second.
        rate_hz: f64,
    },
    /// Neither: the series cannot be used.
    Missing,
}

impl fmt::Display for NwbReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({:.1} MB)",
            self.path.display(),
            self.file_bytes as f64 / 1e6
        )?;
        writeln!(
            f,
            "  units: {} ({} spikes, index {}{})",
            self.num_units,
            self.num_spikes,
            self.spike_index_dtype,
            match self.spike_time_range {
                Some((a, b)) => format!(", {a:.3} .. {b:.3} s"),
                None => String::new(),
            }
        )?;
        writeln!(
            f,
            "  binned: {} bins of 25 ms from t0 = {:.6} s ({:.3} s), {} spikes counted",
            self.num_bins, self.t0_seconds, self.duration_seconds, self.spikes_binned
        )?;
        writeln!(
            f,
            "  kinematics: x, y from {}; vx, vy from {}",
            self.position_source, self.velocity_source
        )?;
        writeln!(f, "  behaviour series:")?;
        for s in &self.series {
            let timing = match &s.timing {
                SeriesTiming::Timestamps {
                    count,
                    first,
                    last,
                    mean_rate_hz,
                    shared_with,
                } => format!(
                    "{count} timestamps {first:.3} .. {last:.3} s, {mean_rate_hz:.1} Hz{}",
                    shared_with
                        .as_ref()
                        .map_or(String::new(), |o| format!(", shared with {o}"))
                ),
                SeriesTiming::Rate {
                    starting_time,
                    rate_hz,
                } => {
                    format!("starting_time {starting_time:.3} s + rate {rate_hz} Hz")
                }
                SeriesTiming::Missing => "no timestamps or starting_time".into(),
            };
            writeln!(f, "    {} {:?} {}: {timing}", s.path, s.shape, s.storage)?;
        }
        writeln!(f, "  trials: {}", self.num_trials)?;
        if !self.trial_columns.is_empty() {
            let cols: Vec<String> = self
                .trial_columns
                .iter()
                .map(|(n, k)| format!("{n} ({k})"))
                .collect();
            writeln!(f, "    columns: {}", cols.join(", "))?;
        }
        writeln!(f, "  unit columns: {}", self.unit_columns.join(", "))?;
        if !self.missing_optional.is_empty() {
            writeln!(
                f,
                "  optional, not in this file: {}",
                self.missing_optional.join(", ")
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        write!(f, "  loaded and binned in {:.3} s", self.load_seconds)
    }
}

/// Logs progress of a load once it has taken more than a second.
struct Progress {
    started: Instant,
    path: String,
}

impl Progress {
    fn step(&self, done: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        log::debug!("{}: {done} ({elapsed:.3} s)", self.path);
        if elapsed >= 1.0 {
            log::info!("{}: {done} ({elapsed:.1} s)", self.path);
        }
    }
}

/// The `data` of a behaviour series, not yet read.
#[derive(Clone)]
struct SeriesData {
    /// HDF5 path of the series group.
    path: String,
    data: Dataset,
    /// Columns per sample (2 for x, y).
    width: usize,
}

/// A behaviour series the loader reads: its data handle and its (already read) timing.
#[derive(Clone)]
struct Series {
    name: &'static str,
    data: SeriesData,
    time: Timebase,
    /// Address of its timestamps dataset, to notice one shared through a link.
    timestamps_address: Option<u64>,
}

/// How `vx, vy` are made, decided — every timestamps array read and sampled — before any large
/// data array is read, so no timestamps are held while the data is.
enum VelocityPlan {
    /// Sample a velocity series (`hand_vel`) at these samples.
    Series { data: SeriesData, samples: Vec<u32> },
    /// Central difference of a position series at these samples.
    Derivative { series: Series, samples: Vec<u32> },
}

fn load_with_report(path: &Path) -> Result<(BinnedRecording, NwbReport), DatasetError> {
    // Defence in depth: the HDF5 reader is hardened against malformed input, but a panic deep
    // inside it on some file nobody foresaw must still be an error naming the file, not a
    // crash of the server at startup.
    std::panic::catch_unwind(|| load_unguarded(path)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(DatasetError::Invalid {
            path: path.to_path_buf(),
            detail: format!("the HDF5 reader failed on this file ({what}); is it corrupt?"),
        })
    })
}

fn load_unguarded(path: &Path) -> Result<(BinnedRecording, NwbReport), DatasetError> {
    let progress = Progress {
        started: Instant::now(),
        path: path.display().to_string(),
    };
    let file = NwbFile::open(path)?;
    let mut warnings = Vec::new();
    let mut missing_optional = Vec::new();

    // Behaviour: survey everything, then pick the position series; its first sample is t0.
    let series = survey_series(&file, &mut missing_optional)?;
    let position_name = if has_series(&file, "cursor_pos")? {
        "cursor_pos"
    } else if has_series(&file, "hand_pos")? {
        warnings.push(format!(
            "{BEHAVIOR}/cursor_pos is missing; x, y come from hand_pos"
        ));
        "hand_pos"
    } else {
        return Err(file.invalid(format!(
            "required dataset {BEHAVIOR}/cursor_pos/data (or {BEHAVIOR}/hand_pos/data) is \
             missing: no cursor position to stream"
        )));
    };
    let position = open_series(&file, position_name, None, &mut warnings)?;
    let t0 = position
        .time
        .tick(0)
        .map_err(|e| file.invalid(format!("{}: {e}", position.data.path)))?;
    let last = position.time.len() - 1;
    let position_end = position
        .time
        .tick(last)
        .map_err(|e| file.invalid(format!("{}: {e}", position.data.path)))?;
    let t0_seconds = tick_seconds(t0);
    progress.step("behaviour timestamps read");

    // Trials (they may extend the recording past the last behaviour sample).
    let trial_table = trials::read(&file, t0_seconds, &mut warnings)?;
    if trial_table.is_none() {
        warnings.push(format!(
            "{} is missing: no trials, intention fields are null",
            trials::TRIALS
        ));
    }
    let trial_columns = trial_table
        .as_ref()
        .map(|t| t.columns.clone())
        .unwrap_or_default();
    if trial_table.is_some() {
        for name in OPTIONAL_TRIAL_COLUMNS {
            if !trial_columns.iter().any(|(n, _)| n == name) {
                missing_optional.push(format!("{}/{name}", trials::TRIALS));
            }
        }
    }
    let mut end = position_end;
    if let Some(stop) = trial_table.as_ref().and_then(|t| t.last_stop) {
        end =
            end.max(to_tick(stop).ok_or_else(|| file.invalid(format!("trial stop_time {stop}")))?);
    }
    let num_bins = usize::try_from((end - t0) / BIN_TICKS + 1)
        .map_err(|_| file.invalid(format!("{}: timestamps go backwards", position.data.path)))?;

    // Units: the index first, so the count matrix is sized (and bounded) before any big read.
    let spike_ds = file.require(SPIKE_TIMES, "it holds the spike trains")?;
    let index_ds = file.require(SPIKE_INDEX, "it splits the spike trains into units")?;
    if spike_ds.ndim() != 1 {
        return Err(file.invalid(format!(
            "{SPIKE_TIMES} has shape {:?}; expected one spike time per element",
            spike_ds.shape()
        )));
    }
    let spike_index_dtype = dtype_name(index_ds.dtype());
    let total_spikes = spike_ds.shape().first().copied().unwrap_or(0) as usize;
    let ends = file.read_index(&index_ds, SPIKE_INDEX, total_spikes)?;
    let num_units = ends.len();
    if num_units == 0 {
        return Err(file.invalid(format!("{SPIKE_INDEX} is empty: the file has no units")));
    }
    let indexed = ends[num_units - 1];
    if indexed < total_spikes {
        warnings.push(format!(
            "{} spike times past the last unit's end in {SPIKE_INDEX} belong to no unit",
            total_spikes - indexed
        ));
    }
    if num_bins
        .checked_mul(num_units)
        .is_none_or(|cells| cells > MAX_COUNT_CELLS)
    {
        return Err(file.invalid(format!(
            "{num_bins} bins x {num_units} units is more than this loader holds; is \
             {}/timestamps or a trial stop_time corrupt?",
            position.data.path
        )));
    }

    // Sample index per bin for every series used; then the timestamps go, before the big reads.
    let position_samples = sample_at_bin_starts(&position.time, t0, num_bins)
        .map_err(|e| file.invalid(format!("{}: {e}", position.data.path)))?;
    let velocity_plan = plan_velocity(
        &file,
        &position,
        &position_samples,
        t0,
        num_bins,
        &mut warnings,
    )?;
    // A partial move would keep the timestamps alive to the end of the scope: drop them now.
    let Series {
        data: position,
        time,
        ..
    } = position;
    drop(time);

    let mut counts = vec![0u16; num_bins * num_units];
    let spike_times = file.read_f64(&spike_ds, SPIKE_TIMES)?;
    progress.step("spike times read");
    let mut tally = SpikeTally::default();
    let mut begin = 0;
    for (unit, &end) in ends.iter().enumerate() {
        binning::bin_spikes(
            &spike_times[begin..end],
            unit,
            num_units,
            t0,
            &mut counts,
            &mut tally,
        );
        begin = end;
    }
    let spike_time_range = spike_times
        .iter()
        .filter(|t| t.is_finite())
        .fold(None, |r: Option<(f64, f64)>, &t| {
            Some(r.map_or((t, t), |(a, b)| (a.min(t), b.max(t))))
        });
    drop(spike_times);
    tally_warnings(&tally, total_spikes, &mut warnings);
    progress.step("spikes binned");

    // Kinematics at each bin start.
    let (x, y) = gather_xy(&file, &position, &position_samples)?;
    drop(position_samples);
    let (vx, vy, velocity_source) = velocity(&file, velocity_plan)?;
    progress.step("kinematics sampled");

    let unit_columns = match file.members("/units")? {
        Some(members) => members
            .datasets
            .into_iter()
            .filter(|n| n != "spike_times" && n != "id" && !n.ends_with("_index"))
            .collect(),
        None => Vec::new(),
    };
    for name in OPTIONAL_UNIT_COLUMNS {
        if !unit_columns.iter().any(|n| n == name) {
            missing_optional.push(format!("/units/{name}"));
        }
    }

    let trials: Vec<Trial> = trial_table.map(|t| t.trials).unwrap_or_default();
    let report = NwbReport {
        path: path.to_path_buf(),
        file_bytes: file.bytes(),
        num_units,
        num_spikes: total_spikes as u64,
        spikes_binned: tally.binned,
        spike_time_range,
        spike_index_dtype,
        t0_seconds,
        num_bins,
        duration_seconds: num_bins as f64 * BIN_SECONDS,
        series,
        position_source: position.path.clone(),
        velocity_source,
        num_trials: trials.len(),
        trial_columns,
        unit_columns,
        missing_optional,
        warnings,
        load_seconds: progress.started.elapsed().as_secs_f64(),
    };
    let recording = BinnedRecording {
        name: path
            .file_stem()
            .map_or_else(|| "nwb".into(), |s| s.to_string_lossy().into_owned()),
        source: path.display().to_string(),
        num_units,
        spike_counts: counts,
        x,
        y,
        vx,
        vy,
        trials,
    };
    progress.step("loaded");
    Ok((recording, report))
}

fn tally_warnings(tally: &SpikeTally, total: usize, warnings: &mut Vec<String>) {
    if tally.before + tally.after > 0 {
        warnings.push(format!(
            "{} of {total} spikes lie outside the binned span and are left out ({} before t0, {} \
             after the last bin)",
            tally.before + tally.after,
            tally.before,
            tally.after
        ));
    }
    if tally.unusable > 0 {
        warnings.push(format!(
            "{} spike times are NaN, infinite or absurd and are left out",
            tally.unusable
        ));
    }
    if tally.saturated > 0 {
        warnings.push(format!(
            "{} spikes did not fit a 16-bit bin count (kept at 65535)",
            tally.saturated
        ));
    }
}

/// Whether `/processing/behavior/NAME/data` exists.
fn has_series(file: &NwbFile, name: &str) -> Result<bool, DatasetError> {
    Ok(file.dataset(&format!("{BEHAVIOR}/{name}/data"))?.is_some())
}

/// Opens a behaviour series and reads its timing (the data itself is read later, by the
/// caller, so only one big array is in memory at a time).
///
/// Timestamps linked to those of `known` (same HDF5 object) are shared, not read again.
fn open_series(
    file: &NwbFile,
    name: &'static str,
    known: Option<&Series>,
    warnings: &mut Vec<String>,
) -> Result<Series, DatasetError> {
    let path = format!("{BEHAVIOR}/{name}");
    let data_path = format!("{path}/data");
    let data = file.require(&data_path, "kinematics come from it")?;
    let shape = data.shape().to_vec();
    if shape.len() != 2 || shape[1] < 2 {
        return Err(file.invalid(format!(
            "{data_path} has shape {shape:?}; expected (samples, 2)"
        )));
    }
    let rows = shape[0] as usize;
    let width = shape[1] as usize;
    let ts_path = format!("{path}/timestamps");
    let (mut time, timestamps_address) = if let Some(ts) = file.dataset(&ts_path)? {
        let linked = known.filter(|k| k.timestamps_address == Some(ts.address()));
        let time = match linked {
            Some(k) => k.time.clone(),
            None => Timebase::Timestamps(Arc::new(file.read_f64(&ts, &ts_path)?)),
        };
        (time, Some(ts.address()))
    } else if let Some(st) = file.dataset(&format!("{path}/starting_time"))? {
        let st_path = format!("{path}/starting_time");
        let start = *file
            .read_f64(&st, &st_path)?
            .first()
            .ok_or_else(|| file.invalid(format!("{st_path} is empty")))?;
        let rate = file
            .attr_f64(&st, &st_path, "rate")?
            .ok_or_else(|| file.invalid(format!("{st_path} has no rate attribute")))?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(file.invalid(format!("{st_path}@rate is {rate}")));
        }
        (
            Timebase::Rate {
                start,
                rate,
                len: rows,
            },
            None,
        )
    } else {
        return Err(file.invalid(format!(
            "{path} has neither timestamps nor starting_time: its samples cannot be placed in time"
        )));
    };
    if time.len() != rows {
        warnings.push(format!(
            "{path}: {rows} data rows but {} timestamps; using the first {}",
            time.len(),
            rows.min(time.len())
        ));
        time.truncate(rows.min(time.len()));
    }
    if time.len() == 0 {
        return Err(file.invalid(format!("{data_path} has no samples")));
    }
    Ok(Series {
        name,
        data: SeriesData { path, data, width },
        time,
        timestamps_address,
    })
}

/// Reads a series' data and picks columns 0 and 1 at the given samples.
fn gather_xy(
    file: &NwbFile,
    series: &SeriesData,
    samples: &[u32],
) -> Result<(Vec<f64>, Vec<f64>), DatasetError> {
    let data = file.read_f64(&series.data, &format!("{}/data", series.path))?;
    let w = series.width;
    Ok(samples
        .iter()
        .map(|&i| (data[i as usize * w], data[i as usize * w + 1]))
        .unzip())
}

/// Decides where `vx, vy` come from and samples that series' timing at the bin starts.
fn plan_velocity(
    file: &NwbFile,
    position: &Series,
    position_samples: &[u32],
    t0: i64,
    bins: usize,
    warnings: &mut Vec<String>,
) -> Result<VelocityPlan, DatasetError> {
    let samples_of = |series: &Series| {
        let shared = series.timestamps_address.is_some()
            && series.timestamps_address == position.timestamps_address
            && series.time.len() == position.time.len();
        if shared {
            return Ok(position_samples.to_vec());
        }
        sample_at_bin_starts(&series.time, t0, bins)
            .map_err(|e| file.invalid(format!("{}: {e}", series.data.path)))
    };
    if has_series(file, "hand_vel")? {
        let vel = open_series(file, "hand_vel", Some(position), warnings)?;
        let samples = samples_of(&vel)?;
        return Ok(VelocityPlan::Series {
            data: vel.data,
            samples,
        });
    }
    // No velocity series: differentiate hand position (the hand is what the monkey moves).
    let series = if position.name == "hand_pos" || !has_series(file, "hand_pos")? {
        position.clone()
    } else {
        open_series(file, "hand_pos", Some(position), warnings)?
    };
    warnings.push(format!(
        "{BEHAVIOR}/hand_vel is missing; vx, vy are the central difference of {}",
        series.data.path
    ));
    let samples = samples_of(&series)?;
    Ok(VelocityPlan::Derivative { series, samples })
}

/// `vx, vy` per bin and a description of where they came from.
fn velocity(
    file: &NwbFile,
    plan: VelocityPlan,
) -> Result<(Vec<f64>, Vec<f64>, String), DatasetError> {
    let (series, samples) = match plan {
        VelocityPlan::Series { data, samples } => {
            let (vx, vy) = gather_xy(file, &data, &samples)?;
            return Ok((vx, vy, data.path));
        }
        VelocityPlan::Derivative { series, samples } => (series, samples),
    };
    let data = file.read_f64(&series.data.data, &format!("{}/data", series.data.path))?;
    let w = series.data.width;
    // Keep columns 0 and 1 only, so velocity_at can index pairs.
    let pairs: Vec<f64> = if w == 2 {
        data
    } else {
        data.chunks(w).flat_map(|r| [r[0], r[1]]).collect()
    };
    let (vx, vy) = samples
        .iter()
        .map(|&i| binning::velocity_at(&pairs, &series.time, i as usize))
        .unzip();
    Ok((vx, vy, format!("d/dt {}", series.data.path)))
}

/// Every series under `/processing/behavior`, described without reading its data.
fn survey_series(
    file: &NwbFile,
    missing: &mut Vec<String>,
) -> Result<Vec<SeriesReport>, DatasetError> {
    let Some(members) = file.members(BEHAVIOR)? else {
        missing.push(BEHAVIOR.into());
        return Ok(Vec::new());
    };
    let mut names: Vec<&str> = KNOWN_SERIES
        .iter()
        .copied()
        .filter(|n| members.groups.iter().any(|g| g == n))
        .collect();
    names.extend(
        members
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| !KNOWN_SERIES.contains(g)),
    );
    for known in KNOWN_SERIES {
        if !names.contains(&known) {
            missing.push(format!("{BEHAVIOR}/{known}"));
        }
    }
    let mut reports = Vec::new();
    let mut addresses: Vec<(u64, String)> = Vec::new();
    for name in names {
        let path = format!("{BEHAVIOR}/{name}");
        let Some(data) = file.dataset(&format!("{path}/data"))? else {
            continue;
        };
        let storage = match data.chunks() {
            Some(c) => format!("chunked {c:?}"),
            None => "contiguous".into(),
        };
        let ts_path = format!("{path}/timestamps");
        let st_path = format!("{path}/starting_time");
        let timing = if let Some(ts) = file.dataset(&ts_path)? {
            let count = ts.shape().first().copied().unwrap_or(0);
            let (first, last) = if count > 0 {
                (
                    file.read_f64_at(&ts, &ts_path, 0)?,
                    file.read_f64_at(&ts, &ts_path, count - 1)?,
                )
            } else {
                (f64::NAN, f64::NAN)
            };
            let shared_with = addresses
                .iter()
                .find(|(a, _)| *a == ts.address())
                .map(|(_, p)| p.clone());
            if shared_with.is_none() {
                addresses.push((ts.address(), path.clone()));
            }
            SeriesTiming::Timestamps {
                count,
                first,
                last,
                mean_rate_hz: (count.saturating_sub(1)) as f64 / (last - first),
                shared_with,
            }
        } else if let Some(st) = file.dataset(&st_path)? {
            SeriesTiming::Rate {
                starting_time: file
                    .read_f64(&st, &st_path)?
                    .first()
                    .copied()
                    .unwrap_or(f64::NAN),
                rate_hz: file.attr_f64(&st, &st_path, "rate")?.unwrap_or(f64::NAN),
            }
        } else {
            SeriesTiming::Missing
        };
        reports.push(SeriesReport {
            path,
            shape: data.shape().to_vec(),
            storage,
            timing,
        });
    }
    Ok(reports)
}

/// `uint16`-style name of an integer datatype, for reports.
fn dtype_name(dtype: &hdf5_reader::Datatype) -> String {
    match dtype {
        hdf5_reader::Datatype::FixedPoint { size, signed, .. } => {
            format!("{}int{}", if *signed { "" } else { "u" }, *size as u32 * 8)
        }
        other => format!("{other:?}"),
    }
}
