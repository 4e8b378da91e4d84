//! Lab Streaming Layer outlets, one set per session (cargo feature `lsl`, run-time `--lsl`).
//!
//! Each session gets a thread that owns its three outlets (liblsl outlets are not `Send`, so
//! they are created, used and destroyed on that thread):
//!
//! | stream | type | format × channels | channels |
//! |---|---|---|---|
//! | `{prefix}-Neural-{code}` | `EEG` | int32 × units | spike count per unit per 25 ms bin |
//! | `{prefix}-Kinematics-{code}` | `Kinematics` | float32 × 4 | vx, vy (mm/s), x, y (mm) |
//! | `{prefix}-Intention-{code}` | `Intention` | float32 × 4 | target_id, target_x, target_y (mm), trial_id |
//!
//! all at a nominal 40 Hz, with source ids `{source_id}-{code}-neural`, `-kinematics`,
//! `-intention` (stable for a session code, so LSL inlets reconnect across server restarts).
//! Outside a trial `target_id` and `trial_id` are -1 and `target_x`, `target_y` are NaN.
//!
//! The thread is fed by the session's [tap](crate::engine::Tap): the timing thread copies each
//! tick's counts into a recycled buffer and unparks this thread, which looks kinematics and
//! intention up in the packet table row and pushes one sample per outlet, timestamped with the
//! tick's deadline mapped onto `lsl::local_clock()`. Consumers therefore see exactly 25 ms
//! between samples whatever the push jitter. Deadline → pushes returned is recorded in an HDR
//! histogram (`lsl.push_latency_ms` in `/metrics`). The outlets exist from the session's
//! creation, whether or not WebSocket clients connect, and go when the session ends.
//!
//! Discovery follows liblsl's configuration file (`LSLAPICFG`); see `docs/LSL.md` and the
//! machine-only `lsl_api.cfg` at the repository root.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::thread::Builder;
use std::time::{Duration, Instant};

use ::lsl::{ChannelFormat, ExPushable, StreamInfo, StreamOutlet};

use crate::config::LslConfig;
use crate::dataset::{PacketTable, BIN_SECONDS};
use crate::engine::{TapConsumer, TapReceiver, TapShared, TapSource};

/// Nominal sampling rate of every stream.
pub const NOMINAL_RATE: f64 = 1.0 / BIN_SECONDS;

/// Seconds of data an outlet buffers for a slow inlet.
const MAX_BUFFERED_SECONDS: i32 = 60;

/// How long session creation waits for the outlets to exist.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the thread sleeps when no tick has woken it (it is unparked on every tick).
const IDLE_PARK: Duration = Duration::from_millis(100);

/// The three streams of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Spike counts.
    Neural,
    /// Cursor velocity and position.
    Kinematics,
    /// Target and trial.
    Intention,
}

impl Stream {
    /// All three, in the order they are reported.
    pub const ALL: [Stream; 3] = [Stream::Neural, Stream::Kinematics, Stream::Intention];

    /// Name part: `Neural`, `Kinematics`, `Intention`.
    pub fn title(self) -> &'static str {
        match self {
            Stream::Neural => "Neural",
            Stream::Kinematics => "Kinematics",
            Stream::Intention => "Intention",
        }
    }

    /// LSL content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Stream::Neural => "EEG",
            Stream::Kinematics => "Kinematics",
            Stream::Intention => "Intention",
        }
    }

    /// `{prefix}-{Title}-{code}`.
    pub fn name(self, config: &LslConfig, code: &str) -> String {
        format!("{}-{}-{code}", config.stream_name, self.title())
    }

    /// `{source_id}-{code}-{title in lower case}`.
    pub fn source_id(self, config: &LslConfig, code: &str) -> String {
        format!(
            "{}-{code}-{}",
            config.source_id,
            self.title().to_ascii_lowercase()
        )
    }
}

/// Channels of the kinematics stream: label, unit, type.
pub const KINEMATICS_CHANNELS: [(&str, &str, &str); 4] = [
    ("vx", "mm/s", "VelocityX"),
    ("vy", "mm/s", "VelocityY"),
    ("x", "mm", "PositionX"),
    ("y", "mm", "PositionY"),
];

/// Channels of the intention stream: label, unit, type.
pub const INTENTION_CHANNELS: [(&str, &str, &str); 4] = [
    ("target_id", "id", "TargetID"),
    ("target_x", "mm", "TargetX"),
    ("target_y", "mm", "TargetY"),
    ("trial_id", "id", "TrialID"),
];

/// Starts the LSL outlets of each session (give it to
/// [`Registry::with_tap_source`](crate::engine::Registry::with_tap_source)).
#[derive(Debug, Clone)]
pub struct LslSource {
    config: LslConfig,
}

impl LslSource {
    /// Outlets named after `config`.
    pub fn new(config: LslConfig) -> Self {
        Self { config }
    }
}

impl TapSource for LslSource {
    fn kind(&self) -> &'static str {
        "lsl"
    }

    fn start(
        &self,
        code: &str,
        table: Arc<PacketTable>,
        receiver: TapReceiver,
    ) -> Result<TapConsumer, String> {
        let names = Stream::ALL
            .iter()
            .map(|s| s.name(&self.config, code))
            .collect();
        let shared = Arc::new(TapShared::new("lsl", names));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let config = self.config.clone();
        let thread_code = code.to_string();
        let thread_shared = Arc::clone(&shared);
        let thread = Builder::new()
            .name(format!("lsl-{}", code.chars().take(11).collect::<String>()))
            .spawn(move || {
                let outlets = match Outlets::new(&config, &thread_code, &table) {
                    Ok(outlets) => {
                        let _ = ready_tx.send(Ok(()));
                        outlets
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                log::info!("session {thread_code}: LSL outlets up");
                outlets.run(&table, receiver, &thread_shared);
                drop(outlets);
                log::info!("session {thread_code}: LSL outlets removed");
            })
            .map_err(|e| format!("cannot spawn the LSL thread: {e}"))?;
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(TapConsumer { shared, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread ends by itself once the tap it would read is dropped.
            Err(_) => Err(format!("LSL outlets not created within {START_TIMEOUT:?}")),
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "stream_name": self.config.stream_name,
            "source_id": self.config.source_id,
            "nominal_srate": NOMINAL_RATE,
            "config_file": std::env::var("LSLAPICFG").ok(),
        })
    }
}

/// Maps `Instant`s onto liblsl's clock. Both are the monotonic clock (CLOCK_MONOTONIC on
/// Linux), so one offset, measured once per process, maps every instant.
#[derive(Debug, Clone, Copy)]
pub struct LslClock {
    origin: Instant,
    origin_lsl: f64,
}

impl LslClock {
    /// The process-wide mapping, measured on first use.
    pub fn get() -> LslClock {
        static CLOCK: OnceLock<LslClock> = OnceLock::new();
        *CLOCK.get_or_init(LslClock::measure)
    }

    /// Reads both clocks a few times and keeps the tightest bracket.
    fn measure() -> LslClock {
        let mut best: Option<(Duration, LslClock)> = None;
        for _ in 0..16 {
            let before = Instant::now();
            let lsl = ::lsl::local_clock();
            let after = Instant::now();
            let gap = after - before;
            let origin = before + gap / 2;
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((
                    gap,
                    LslClock {
                        origin,
                        origin_lsl: lsl,
                    },
                ));
            }
        }
        best.expect("measured at least once").1
    }

    /// `at` in `local_clock()` seconds.
    pub fn at(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.origin) {
            Some(after) => self.origin_lsl + after.as_secs_f64(),
            None => self.origin_lsl - (self.origin - at).as_secs_f64(),
        }
    }
}

/// A session's outlets.
struct Outlets {
    neural: StreamOutlet,
    kinematics: StreamOutlet,
    intention: StreamOutlet,
}

fn lsl_error(what: &str, e: ::lsl::Error) -> String {
    format!("{what}: {e}")
}

fn describe_channels(
    info: &mut StreamInfo,
    channels: impl Iterator<Item = (String, &'static str, &'static str)>,
) {
    let mut list = info.desc().append_child("channels");
    for (label, unit, kind) in channels {
        let mut channel = list.append_child("channel");
        channel.append_child_value("label", &label);
        channel.append_child_value("unit", unit);
        channel.append_child_value("type", kind);
    }
}

fn describe_source(info: &mut StreamInfo, code: &str, table: &PacketTable) {
    let mut desc = info.desc();
    let mut acquisition = desc.append_child("acquisition");
    acquisition.append_child_value("manufacturer", "PhantomLink");
    acquisition.append_child_value("model", "neural-data replay server");
    acquisition.append_child_value("version", env!("CARGO_PKG_VERSION"));
    let mut source = desc.append_child("phantomlink");
    source.append_child_value("session", code);
    source.append_child_value("dataset", table.name());
    source.append_child_value("source", table.source());
    source.append_child_value("bin_size_ms", &format!("{}", crate::dataset::BIN_MS));
    source.append_child_value("timestamps", "tick deadline (exact 25 ms grid)");
}

impl Outlets {
    fn new(config: &LslConfig, code: &str, table: &PacketTable) -> Result<Self, String> {
        let units = table.num_units();
        let make = |stream: Stream, channels: usize, format: ChannelFormat| {
            StreamInfo::new(
                &stream.name(config, code),
                stream.content_type(),
                channels as u32,
                NOMINAL_RATE,
                format,
                &stream.source_id(config, code),
            )
            .map_err(|e| lsl_error("stream info", e))
        };

        let mut neural = make(Stream::Neural, units, ChannelFormat::Int32)?;
        describe_channels(
            &mut neural,
            table
                .channel_ids()
                .iter()
                .map(|id| (format!("unit_{id}"), "count", "SpikeCount")),
        );
        describe_source(&mut neural, code, table);

        let mut kinematics = make(Stream::Kinematics, 4, ChannelFormat::Float32)?;
        describe_channels(
            &mut kinematics,
            KINEMATICS_CHANNELS
                .iter()
                .map(|&(l, u, t)| (l.to_string(), u, t)),
        );
        describe_source(&mut kinematics, code, table);

        let mut intention = make(Stream::Intention, 4, ChannelFormat::Float32)?;
        describe_channels(
            &mut intention,
            INTENTION_CHANNELS
                .iter()
                .map(|&(l, u, t)| (l.to_string(), u, t)),
        );
        describe_source(&mut intention, code, table);
        intention.desc().append_child_value(
            "outside_trials",
            "target_id = trial_id = -1, target_x = target_y = NaN",
        );

        let outlet = |info: &StreamInfo| {
            StreamOutlet::new(info, 0, MAX_BUFFERED_SECONDS).map_err(|e| lsl_error("outlet", e))
        };
        Ok(Self {
            neural: outlet(&neural)?,
            kinematics: outlet(&kinematics)?,
            intention: outlet(&intention)?,
        })
    }

    /// Pushes every tick the tap delivers until the session lets go of the tap.
    fn run(&self, table: &PacketTable, mut receiver: TapReceiver, shared: &TapShared) {
        let clock = LslClock::get();
        // Sample buffers reused for every push (the `lsl` crate takes `&Vec`).
        let mut counts = vec![0i32; table.num_units()];
        let mut kin = vec![0f32; KINEMATICS_CHANNELS.len()];
        let mut intent = vec![0f32; INTENTION_CHANNELS.len()];
        loop {
            while let Some(sample) = receiver.pop() {
                for (out, &c) in counts.iter_mut().zip(sample.counts.iter()) {
                    *out = i32::from(c);
                }
                let row = table.row(sample.bin);
                kin.copy_from_slice(&[row.vx as f32, row.vy as f32, row.x as f32, row.y as f32]);
                intent.copy_from_slice(&intention_values(
                    row.target_id,
                    row.target_x,
                    row.target_y,
                    row.trial_id,
                ));
                let timestamp = clock.at(sample.deadline);
                let pushed = self
                    .neural
                    .push_sample_ex(&counts, timestamp, true)
                    .and_then(|()| self.kinematics.push_sample_ex(&kin, timestamp, true))
                    .and_then(|()| self.intention.push_sample_ex(&intent, timestamp, true));
                let done = Instant::now();
                receiver.recycle(sample.counts);
                match pushed {
                    Ok(()) => {
                        shared.latency.record(
                            done.saturating_duration_since(sample.deadline).as_nanos() as u64,
                        );
                        shared.samples.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        if shared.errors.fetch_add(1, Relaxed) == 0 {
                            log::warn!("LSL push failed: {e}");
                        }
                    }
                }
            }
            if receiver.is_abandoned() && receiver.pending() == 0 {
                return;
            }
            std::thread::park_timeout(IDLE_PARK);
        }
    }
}

/// The intention sample: target id, target position, trial id; -1 and NaN where absent.
pub fn intention_values(
    target_id: Option<u32>,
    target_x: Option<f64>,
    target_y: Option<f64>,
    trial_id: Option<u32>,
) -> [f32; 4] {
    let id = |v: Option<u32>| v.map_or(-1.0, |v| v as f32);
    let pos = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
    [id(target_id), pos(target_x), pos(target_y), id(trial_id)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_source_ids() {
        let config = LslConfig::default();
        assert_eq!(
            Stream::Neural.name(&config, "abc"),
            "PhantomLink-Neural-abc"
        );
        assert_eq!(
            Stream::Intention.source_id(&config, "abc"),
            "phantomlink-abc-intention"
        );
    }

    #[test]
    fn intention_outside_trials() {
        let v = intention_values(None, None, None, None);
        assert_eq!((v[0], v[3]), (-1.0, -1.0));
        assert!(v[1].is_nan() && v[2].is_nan());
        assert_eq!(
            intention_values(Some(3), Some(-118.0), Some(2.5), Some(7)),
            [3.0, -118.0, 2.5, 7.0]
        );
    }

    #[test]
    fn the_clock_keeps_spacing() {
        // Arithmetic only: no liblsl call.
        let origin = Instant::now();
        let clock = LslClock {
            origin,
            origin_lsl: 12_345.678,
        };
        let period = Duration::from_millis(25);
        let a = clock.at(origin + period * 1000);
        let b = clock.at(origin + period * 1001);
        assert!(((b - a) - 0.025).abs() < 1e-9, "{}", b - a);
        assert!((clock.at(origin) - 12_345.678).abs() < 1e-12);
    }
}
