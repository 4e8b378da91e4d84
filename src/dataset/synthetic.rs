//! Built-in synthetic dataset shaped like MC_Maze small: delayed centre-out reaches with
//! velocity- and target-tuned Poisson units, so a decoder has real signal to learn.
//!
//! Owns: the generative model (trial schedule, 1 kHz minimum-jerk kinematics, unit tuning,
//! spike sampling). Must never: read files, clocks or unseeded randomness, or iterate a hash
//! map while generating: the same seed must give the same recording, bit for bit.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_pcg::Pcg64Mcg;
use serde_json::{json, Map, Value};

use super::{BinnedRecording, Trial, BIN_MS, BIN_SECONDS};

/// Target positions in millimetres around the centre, where every reach starts; a trial's
/// `target_id` indexes this table. Uneven radii (88–144 mm) like MC_Maze's targets.
pub const TARGET_POSITIONS: [[f64; 2]; 8] = [
    [125.0, -3.0],
    [87.0, 84.0],
    [2.0, 105.0],
    [-84.0, 78.0],
    [-127.0, 4.0],
    [-118.0, -83.0],
    [-3.0, -88.0],
    [92.0, -71.0],
];

/// Behaviour runs on a 1 kHz clock, so event times are whole milliseconds.
const BIN_SAMPLES: u64 = BIN_MS as u64;

// Trial phase durations, milliseconds.
const FIXATION_MS: (u64, u64) = (200, 400);
const DELAY_MS: (u64, u64) = (0, 900);
const RT_MEAN_MS: f64 = 300.0;
const RT_SD_MS: f64 = 40.0;
const RT_MS: (f64, f64) = (200.0, 450.0);
const REACH_MS: (f64, f64) = (400.0, 600.0);
const HOLD_MS: (u64, u64) = (300, 500);
/// A failed trial is a hold broken early; its reach also lands off target.
const FAILED_HOLD_MS: (u64, u64) = (50, 150);
const FAILURE_RATE: f64 = 0.05;
const RETURN_DELAY_MS: (u64, u64) = (50, 150);
const RETURN_MS: (u64, u64) = (400, 600);
/// Rest at the centre before the first trial and after each return.
const LEAD_MS: u64 = 200;
const MIN_REST_MS: u64 = 100;

// Unit model.
const BASE_RATE_HZ: (f64, f64) = (2.0, 40.0);
/// Speed at which a unit's tuning depth is specified; reaches here peak around 300–450 mm/s.
const REFERENCE_SPEED: f64 = 350.0;
/// Neural activity leads the hand by this many whole bins (50–150 ms).
const LAG_BINS: (usize, usize) = (2, 6);
const PREP_LATENCY_MS: f64 = 80.0;
const PREP_RISE_MS: f64 = 80.0;
const PREP_DECAY_MS: f64 = 150.0;
/// Trial-to-trial excitability drift: log-normal gain, so spike counts are slightly
/// over-dispersed as in cortex rather than exactly Poisson.
const GAIN_LOG_SD: f64 = 0.15;
/// Refractoriness caps any unit's rate.
const MAX_RATE_HZ: f64 = 400.0;

// Independent PRNG streams, so changing the unit count leaves the behaviour unchanged.
const STREAM_TRIALS: u64 = 0x7472_6961_6c73_0001;
const STREAM_UNITS: u64 = 0x756e_6974_7300_0002;
const STREAM_SPIKES: u64 = 0x7370_696b_6573_0003;

/// Shape and seed of the synthetic recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticConfig {
    /// PRNG seed: the same seed gives the same recording, bit for bit.
    pub seed: u64,
    /// Number of units (channels).
    pub num_units: usize,
    /// Number of delayed-reach trials.
    pub num_trials: usize,
    /// Number of 25 ms bins (packets).
    pub num_bins: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            num_units: 142,
            num_trials: 100,
            num_bins: 11_748,
        }
    }
}

/// Generates the recording: delayed reaches to [`TARGET_POSITIONS`] and the units driving them.
///
/// Each trial: fixation at the centre, target on, delay of 0–900 ms, go cue, reaction time
/// around 300 ms, a 400–600 ms minimum-jerk reach (bell-shaped speed) to the target, hold; the
/// hand returns to the centre between trials. About 5 % of trials fail (hold broken, reach off
/// target). Targets are balanced across trials in shuffled order. Kinematics are defined on
/// the 1 kHz clock and sampled at each bin's start; position in mm, velocity in mm/s.
///
/// Unit rates are a log-uniform 2–40 Hz baseline, cosine tuning to hand velocity (so
/// direction scaled by speed) plus a speed term, both leading the hand by 50–150 ms, and
/// preparatory tuning to the target from shortly after target onset until movement; rates
/// are clamped to 0–400 Hz and spikes are Poisson per bin.
///
/// Trial `extra` columns, named as in MC_Maze: `target_on_time`, `go_cue_time`,
/// `move_onset_time` (seconds since the recording start, like `start_time`), `delay` and `rt`
/// (milliseconds), `num_targets` (1), `active_target` (0), `target_pos` (`[[x, y]]`, mm) and
/// `maze_id` (equal to `target_id`: one barrier-free maze per target).
///
/// If the trials cannot fit in `num_bins`, every phase is shortened in proportion, so the
/// trials still never overlap and always lie inside the recording. The same config gives
/// the same recording on the same platform (`exp`/`cos` come from the platform's libm).
pub fn generate(config: &SyntheticConfig) -> BinnedRecording {
    let bins = config.num_bins;
    let plans = schedule(config);
    let segments = movements(&plans);

    let mut x = Vec::with_capacity(bins);
    let mut y = Vec::with_capacity(bins);
    let mut vx = Vec::with_capacity(bins);
    let mut vy = Vec::with_capacity(bins);
    let mut hand = Sampler::new(&segments);
    for bin in 0..bins {
        let (pos, vel) = hand.at((bin as u64 * BIN_SAMPLES) as f64);
        x.push(pos[0]);
        y.push(pos[1]);
        vx.push(vel[0]);
        vy.push(vel[1]);
    }

    let spike_counts = spikes(config, &plans, &segments);
    let trials = plans
        .iter()
        .enumerate()
        .map(|(id, p)| p.trial(id))
        .collect();
    BinnedRecording {
        name: "MC_Maze".into(),
        source: format!("synthetic seed={}", config.seed),
        num_units: config.num_units,
        spike_counts,
        x,
        y,
        vx,
        vy,
        trials,
    }
}

/// One trial's timeline in milliseconds on the 1 kHz clock, and where the hand goes.
#[derive(Debug, Clone)]
struct TrialPlan {
    target: usize,
    success: bool,
    start: u64,
    target_on: u64,
    go_cue: u64,
    move_onset: u64,
    reach_end: u64,
    stop: u64,
    return_start: u64,
    return_end: u64,
    endpoint: [f64; 2],
    home: [f64; 2],
}

impl TrialPlan {
    fn trial(&self, id: usize) -> Trial {
        let [tx, ty] = TARGET_POSITIONS[self.target];
        let seconds = |ms: u64| ms as f64 / 1000.0;
        let mut extra = Map::with_capacity(9);
        let mut put = |key: &str, value: Value| extra.insert(key.into(), value);
        put("target_on_time", json!(seconds(self.target_on)));
        put("go_cue_time", json!(seconds(self.go_cue)));
        put("move_onset_time", json!(seconds(self.move_onset)));
        put("delay", json!(self.go_cue - self.target_on));
        put("rt", json!(self.move_onset - self.go_cue));
        put("num_targets", json!(1));
        put("active_target", json!(0));
        put("target_pos", json!([[tx, ty]]));
        put("maze_id", json!(self.target));
        Trial {
            id: id as u32,
            start_time: seconds(self.start),
            stop_time: seconds(self.stop),
            target_id: Some(self.target as u32),
            target_x: Some(tx),
            target_y: Some(ty),
            success: Some(self.success),
            extra,
        }
    }
}

fn uniform_ms(rng: &mut Pcg64Mcg, (low, high): (u64, u64)) -> u64 {
    rng.gen_range(low..=high)
}

/// Draws every trial's phases, then spreads the spare time over the inter-trial rests.
fn schedule(config: &SyntheticConfig) -> Vec<TrialPlan> {
    let n = config.num_trials;
    let available = config.num_bins as u64 * BIN_SAMPLES;
    let mut rng = Pcg64Mcg::seed_from_u64(config.seed ^ STREAM_TRIALS);
    let unit_normal = Normal::new(0.0, 1.0).expect("valid normal");

    // Balanced targets: each gets num_trials / 8 trials (give or take one), in random order.
    let mut targets: Vec<usize> = (0..n).map(|i| i % TARGET_POSITIONS.len()).collect();
    for i in (1..n).rev() {
        targets.swap(i, rng.gen_range(0..=i));
    }

    // Per trial: fixation, delay, rt, reach, hold, return delay, return, minimum rest.
    const PHASES: usize = 8;
    let mut phases = Vec::with_capacity(n * PHASES);
    let mut aims = Vec::with_capacity(n);
    for &target in &targets {
        let success = !rng.gen_bool(FAILURE_RATE);
        let [tx, ty] = TARGET_POSITIONS[target];
        let (aim, scatter) = if success {
            (1.0, 3.0)
        } else {
            (rng.gen_range(0.7..0.9), 8.0)
        };
        let endpoint = [
            tx * aim + scatter * unit_normal.sample(&mut rng),
            ty * aim + scatter * unit_normal.sample(&mut rng),
        ];
        let home = [
            2.0 * unit_normal.sample(&mut rng),
            2.0 * unit_normal.sample(&mut rng),
        ];
        let rt = (RT_MEAN_MS + RT_SD_MS * unit_normal.sample(&mut rng)).clamp(RT_MS.0, RT_MS.1);
        // Longer reaches take longer (Fitts), within MC_Maze's 400–600 ms.
        let distance = tx.hypot(ty);
        let reach = (330.0 + 1.5 * distance + 25.0 * unit_normal.sample(&mut rng))
            .clamp(REACH_MS.0, REACH_MS.1);
        let hold = if success { HOLD_MS } else { FAILED_HOLD_MS };
        phases.extend_from_slice(&[
            uniform_ms(&mut rng, FIXATION_MS),
            uniform_ms(&mut rng, DELAY_MS),
            rt.round() as u64,
            reach.round() as u64,
            uniform_ms(&mut rng, hold),
            uniform_ms(&mut rng, RETURN_DELAY_MS),
            uniform_ms(&mut rng, RETURN_MS),
            MIN_REST_MS,
        ]);
        aims.push((target, success, endpoint, home));
    }

    let mut lead = LEAD_MS;
    let required = lead + phases.iter().sum::<u64>();
    if required > available {
        // Too many trials for the recording: shrink everything alike rather than overlap.
        let scale = |ms: u64| (ms as u128 * available as u128 / required as u128) as u64;
        lead = scale(lead);
        for phase in &mut phases {
            *phase = scale(*phase);
        }
    }
    // Spare time goes to the rests before the first trial and after each return, unevenly
    // like a real session's pacing; rounding leftovers land in the final rest.
    let spare = available - lead - phases.iter().sum::<u64>();
    let weights: Vec<f64> = (0..=n).map(|_| rng.gen_range(0.5..1.5)).collect();
    let total_weight: f64 = weights.iter().sum();
    let mut extra_rest: Vec<u64> = weights
        .iter()
        .map(|w| (spare as f64 * w / total_weight).floor() as u64)
        .collect();
    let given: u64 = extra_rest.iter().sum();
    extra_rest[n] += spare.saturating_sub(given);

    let mut t = lead + extra_rest[0];
    let mut plans = Vec::with_capacity(n);
    for (i, &(target, success, endpoint, home)) in aims.iter().enumerate() {
        let p = &phases[i * PHASES..(i + 1) * PHASES];
        let start = t;
        let target_on = start + p[0];
        let go_cue = target_on + p[1];
        let move_onset = go_cue + p[2];
        let reach_end = move_onset + p[3];
        let stop = reach_end + p[4];
        let return_start = stop + p[5];
        let return_end = return_start + p[6];
        t = return_end + p[7] + extra_rest[i + 1];
        plans.push(TrialPlan {
            target,
            success,
            start,
            target_on,
            go_cue,
            move_onset,
            reach_end,
            stop,
            return_start,
            return_end,
            endpoint,
            home,
        });
    }
    plans
}

/// A minimum-jerk movement; times in milliseconds, positions in millimetres.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: f64,
    duration: f64,
    from: [f64; 2],
    to: [f64; 2],
}

/// Every reach and return in time order; between them the hand rests where it stopped.
fn movements(plans: &[TrialPlan]) -> Vec<Segment> {
    let mut segments = Vec::with_capacity(plans.len() * 2);
    let mut hand = [0.0, 0.0];
    for p in plans {
        segments.push(Segment {
            start: p.move_onset as f64,
            duration: (p.reach_end - p.move_onset) as f64,
            from: hand,
            to: p.endpoint,
        });
        segments.push(Segment {
            start: p.return_start as f64,
            duration: (p.return_end - p.return_start) as f64,
            from: p.endpoint,
            to: p.home,
        });
        hand = p.home;
    }
    segments
}

/// Evaluates the hand trajectory at non-decreasing times in one pass over the segments.
struct Sampler<'a> {
    segments: &'a [Segment],
    next: usize,
    rest: [f64; 2],
}

impl<'a> Sampler<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        Self {
            segments,
            next: 0,
            rest: [0.0, 0.0],
        }
    }

    /// Position (mm) and velocity (mm/s) at `t` milliseconds.
    fn at(&mut self, t: f64) -> ([f64; 2], [f64; 2]) {
        while let Some(s) = self.segments.get(self.next) {
            if s.start + s.duration > t {
                break;
            }
            self.rest = s.to;
            self.next += 1;
        }
        match self.segments.get(self.next) {
            Some(s) if t >= s.start => {
                let tau = (t - s.start) / s.duration;
                let shape = tau * tau * tau * (10.0 + tau * (-15.0 + 6.0 * tau));
                let speed = 30.0 * tau * tau * (1.0 - tau) * (1.0 - tau) / (s.duration / 1000.0);
                let d = [s.to[0] - s.from[0], s.to[1] - s.from[1]];
                (
                    [s.from[0] + d[0] * shape, s.from[1] + d[1] * shape],
                    [d[0] * speed, d[1] * speed],
                )
            }
            _ => (self.rest, [0.0, 0.0]),
        }
    }
}

/// One unit's tuning; rate terms in Hz, velocity gains in Hz per mm/s.
#[derive(Debug, Clone, Copy)]
struct Unit {
    base: f64,
    vel: [f64; 2],
    speed: f64,
    prep: [f64; 2],
    lag: usize,
}

fn draw_units(seed: u64, count: usize) -> Vec<Unit> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ STREAM_UNITS);
    let log_base = BASE_RATE_HZ.0.ln()..BASE_RATE_HZ.1.ln();
    (0..count)
        .map(|_| {
            let base = rng.gen_range(log_base.clone()).exp();
            let depth = base * rng.gen_range(0.3..1.2) + rng.gen_range(3.0..15.0);
            let preferred = rng.gen_range(0.0..std::f64::consts::TAU);
            let gain = depth / REFERENCE_SPEED;
            // Preparatory and movement preferred directions are related but not equal.
            let prep_direction = preferred + rng.gen_range(-1.2..1.2);
            let prep_depth = depth * rng.gen_range(0.2..0.8);
            Unit {
                base,
                vel: [gain * preferred.cos(), gain * preferred.sin()],
                speed: gain * rng.gen_range(0.0..0.5),
                prep: [
                    prep_depth * prep_direction.cos(),
                    prep_depth * prep_direction.sin(),
                ],
                lag: rng.gen_range(LAG_BINS.0..=LAG_BINS.1),
            }
        })
        .collect()
}

/// Spike counts, row-major by bin, from each unit's rate at the bin's centre.
fn spikes(config: &SyntheticConfig, plans: &[TrialPlan], segments: &[Segment]) -> Vec<u16> {
    let bins = config.num_bins;
    let num_units = config.num_units;
    let units = draw_units(config.seed, num_units);
    let mut rng = Pcg64Mcg::seed_from_u64(config.seed ^ STREAM_SPIKES);

    // Hand velocity at bin centres, running past the end so every lagged unit can look ahead.
    let half_bin = BIN_MS / 2.0;
    let span = bins + LAG_BINS.1;
    let mut velocity = Vec::with_capacity(span);
    let mut hand = Sampler::new(segments);
    for j in 0..span {
        let (_, [vx, vy]) = hand.at(j as f64 * BIN_MS + half_bin);
        velocity.push([vx, vy, vx.hypot(vy)]);
    }

    // Per bin: preparatory drive toward the cued target, and which trial's gain applies.
    let mut prep = Vec::with_capacity(bins);
    let mut epoch = Vec::with_capacity(bins);
    let (mut started, mut cued) = (0usize, None::<&TrialPlan>);
    let mut cued_count = 0;
    for bin in 0..bins {
        let t = bin as f64 * BIN_MS + half_bin;
        while started < plans.len() && plans[started].start as f64 <= t {
            started += 1;
        }
        while cued_count < plans.len() && plans[cued_count].target_on as f64 <= t {
            cued = Some(&plans[cued_count]);
            cued_count += 1;
        }
        epoch.push(started);
        prep.push(cued.map_or([0.0, 0.0], |p| {
            let since = t - p.target_on as f64 - PREP_LATENCY_MS;
            if since <= 0.0 {
                return [0.0, 0.0];
            }
            let mut envelope = 1.0 - (-since / PREP_RISE_MS).exp();
            let moving = t - p.move_onset as f64;
            if moving > 0.0 {
                envelope *= (-moving / PREP_DECAY_MS).exp();
            }
            let [tx, ty] = TARGET_POSITIONS[p.target];
            let r = tx.hypot(ty);
            [envelope * tx / r, envelope * ty / r]
        }));
    }

    let gain_noise = Normal::new(0.0, GAIN_LOG_SD).expect("valid normal");
    let gains: Vec<f64> = (0..(plans.len() + 1) * num_units)
        .map(|_| gain_noise.sample(&mut rng).exp())
        .collect();

    let mut counts = vec![0u16; bins * num_units];
    if num_units == 0 {
        return counts;
    }
    for (bin, row) in counts.chunks_exact_mut(num_units).enumerate() {
        let [px, py] = prep[bin];
        let gain = &gains[epoch[bin] * num_units..][..num_units];
        for ((count, unit), g) in row.iter_mut().zip(&units).zip(gain) {
            let [vx, vy, speed] = velocity[bin + unit.lag];
            let rate = g
                * (unit.base
                    + unit.vel[0] * vx
                    + unit.vel[1] * vy
                    + unit.speed * speed
                    + unit.prep[0] * px
                    + unit.prep[1] * py);
            *count = poisson(&mut rng, rate.clamp(0.0, MAX_RATE_HZ) * BIN_SECONDS);
        }
    }
    counts
}

/// Poisson draw by inversion: one uniform and about `lambda` steps, which beats a general
/// sampler for the small per-bin means here (at most 10 at the rate cap).
fn poisson(rng: &mut Pcg64Mcg, lambda: f64) -> u16 {
    if lambda <= 0.0 {
        return 0;
    }
    let u: f64 = rng.gen();
    let mut p = (-lambda).exp();
    let mut cdf = p;
    let mut k = 0u16;
    // The bound stops a u within rounding of 1 from running on once p underflows.
    while u > cdf && k < 100 {
        k += 1;
        p *= lambda / f64::from(k);
        cdf += p;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_sampler_matches_mean_and_variance() {
        let mut rng = Pcg64Mcg::seed_from_u64(7);
        for lambda in [0.05, 0.4, 3.0, 10.0] {
            let n = 200_000;
            let draws: Vec<f64> = (0..n)
                .map(|_| f64::from(poisson(&mut rng, lambda)))
                .collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!(
                (mean / lambda - 1.0).abs() < 0.03,
                "lambda {lambda}: mean {mean}"
            );
            assert!(
                (var / lambda - 1.0).abs() < 0.05,
                "lambda {lambda}: var {var}"
            );
        }
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(poisson(&mut rng, -1.0), 0);
    }

    #[test]
    fn overfull_schedule_shrinks_but_stays_inside_and_ordered() {
        let config = SyntheticConfig {
            seed: 3,
            num_units: 4,
            num_trials: 50,
            num_bins: 400, // 10 s for 50 trials: about a tenth of the time they need
        };
        let rec = generate(&config);
        let end = config.num_bins as f64 * BIN_SECONDS;
        let mut previous_stop = 0.0;
        for trial in &rec.trials {
            assert!(
                trial.start_time >= previous_stop,
                "trial {} overlaps",
                trial.id
            );
            assert!(trial.stop_time >= trial.start_time);
            previous_stop = trial.stop_time;
        }
        assert!(previous_stop <= end);
        assert!(rec.vx.iter().chain(&rec.vy).all(|v| v.is_finite()));
    }

    #[test]
    fn degenerate_configs_do_not_panic() {
        for (num_units, num_trials, num_bins) in [(0, 5, 100), (3, 0, 100), (3, 5, 0), (3, 5, 1)] {
            let rec = generate(&SyntheticConfig {
                seed: 1,
                num_units,
                num_trials,
                num_bins,
            });
            assert_eq!(rec.x.len(), num_bins);
            assert_eq!(rec.spike_counts.len(), num_bins * num_units);
            assert_eq!(rec.trials.len(), num_trials);
        }
    }
}
