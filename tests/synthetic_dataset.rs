//! The synthetic MC_Maze recording, checked through the public API: a linear decoder can
//! learn hand velocity from its spikes, its units look like cortex, it is deterministic, and
//! it has MC_Maze's shape and delayed-reach structure.

use std::ops::Range;
use std::sync::OnceLock;

use phantomlink::dataset::synthetic::{generate, SyntheticConfig, TARGET_POSITIONS};
use phantomlink::dataset::{BinnedRecording, PacketTable, Trial, BIN_SECONDS};
use phantomlink::decoder::{RidgeTrainer, SpikeHistory};

fn default_recording() -> &'static BinnedRecording {
    static RECORDING: OnceLock<BinnedRecording> = OnceLock::new();
    RECORDING.get_or_init(|| generate(&SyntheticConfig::default()))
}

fn extra(trial: &Trial, key: &str) -> f64 {
    trial.extra[key]
        .as_f64()
        .unwrap_or_else(|| panic!("trial {} lacks numeric {key}", trial.id))
}

/// First bin whose start is at or after `t` seconds (the packet table's rule).
fn bin_at_or_after(t: f64) -> usize {
    (t / BIN_SECONDS - 1e-6).ceil() as usize
}

fn speed(rec: &BinnedRecording, bin: usize) -> f64 {
    rec.vx[bin].hypot(rec.vy[bin])
}

/// Trials sorted by start, with the bins each one covers in the packet table.
fn trial_bins(rec: &BinnedRecording) -> Vec<(Trial, Range<usize>)> {
    let table = PacketTable::new(rec.clone()).expect("the packet table accepts the recording");
    table
        .trials()
        .iter()
        .map(|t| {
            let playlist = table
                .playlist_for_trial(t.id)
                .expect("every trial has bins");
            assert_eq!(playlist.len(), 1);
            let range = playlist[0].start as usize..playlist[0].end as usize;
            (t.clone(), range)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Decodability

/// The spike history ending at `bin`, as the decoder sees it live.
fn history_at(rec: &BinnedRecording, history: &mut SpikeHistory, bin: usize, depth: usize) {
    let units = rec.num_units;
    for b in bin + 1 - depth..=bin {
        history.push(&rec.spike_counts[b * units..][..units]);
    }
}

#[test]
fn ridge_decoder_predicts_velocity_on_held_out_trials() {
    const HISTORY: usize = 5;
    const RIDGE: f64 = 100.0;
    let rec = default_recording();
    let mut train = Vec::new();
    let mut test = Vec::new();
    // Every fifth trial is held out: a fifth of the trials, spread over the session.
    for (index, (_, bins)) in trial_bins(rec).into_iter().enumerate() {
        assert!(
            bins.start + 1 >= HISTORY,
            "trial too early for the spike history"
        );
        if index % 5 == 2 {
            test.extend(bins);
        } else {
            train.extend(bins);
        }
    }

    let mut trainer = RidgeTrainer::new(rec.num_units, HISTORY, RIDGE);
    let mut history = trainer.history();
    for &bin in &train {
        history_at(rec, &mut history, bin, HISTORY);
        trainer.add(&history, [rec.vx[bin], rec.vy[bin]]);
    }
    let mut decoder = trainer.finish().expect("normal equations solve");

    let mut truth = [Vec::new(), Vec::new()];
    let mut predicted = [Vec::new(), Vec::new()];
    for &bin in &test {
        history_at(rec, &mut history, bin, HISTORY);
        let [vx, vy] = decoder.predict(&history);
        predicted[0].push(vx);
        predicted[1].push(vy);
        truth[0].push(rec.vx[bin]);
        truth[1].push(rec.vy[bin]);
    }
    for (d, name) in ["vx", "vy"].iter().enumerate() {
        let mean = truth[d].iter().sum::<f64>() / truth[d].len() as f64;
        let total: f64 = truth[d].iter().map(|v| (v - mean).powi(2)).sum();
        let residual: f64 = truth[d]
            .iter()
            .zip(&predicted[d])
            .map(|(v, p)| (v - p).powi(2))
            .sum();
        let r2 = 1.0 - residual / total;
        println!(
            "{name}: held-out R² {r2:.3} on {} bins ({} train)",
            test.len(),
            train.len()
        );
        assert!(r2 >= 0.5, "{name}: held-out R² {r2:.3} < 0.5");
    }
}

// ---------------------------------------------------------------------------------------------
// Physiology

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn firing_rates_are_physiological() {
    let rec = default_recording();
    let units = rec.num_units;
    let seconds = rec.x.len() as f64 * BIN_SECONDS;
    let mut totals = vec![0u64; units];
    for row in rec.spike_counts.chunks_exact(units) {
        for (total, &count) in totals.iter_mut().zip(row) {
            *total += u64::from(count);
        }
    }
    let mut rates: Vec<f64> = totals.iter().map(|&n| n as f64 / seconds).collect();
    for (unit, rate) in rates.iter().enumerate() {
        assert!(
            (0.5..=100.0).contains(rate),
            "unit {unit} fires at {rate:.2} Hz"
        );
    }
    let median_rate = median(&mut rates);
    println!("median rate {median_rate:.2} Hz");
    assert!(
        (2.0..=40.0).contains(&median_rate),
        "median rate {median_rate:.2} Hz"
    );
}

#[test]
fn spike_counts_at_rest_have_physiological_fano_factors() {
    let rec = default_recording();
    let units = rec.num_units;
    let bins = rec.x.len();
    let mut in_trial = vec![false; bins];
    for (_, range) in trial_bins(rec) {
        in_trial[range].iter_mut().for_each(|b| *b = true);
    }
    // Between trials, with the hand still from 50 ms before to 200 ms after the bin, so
    // neither movement (which units lead by up to 150 ms) nor a cue drives the rate.
    let rest: Vec<usize> = (2..bins - 8)
        .filter(|&b| !in_trial[b] && (b - 2..=b + 8).all(|k| speed(rec, k) == 0.0))
        .collect();
    assert!(rest.len() >= 1000, "only {} rest bins", rest.len());

    let mut fanos = Vec::with_capacity(units);
    for unit in 0..units {
        let counts: Vec<f64> = rest
            .iter()
            .map(|&b| f64::from(rec.spike_counts[b * units + unit]))
            .collect();
        let n = counts.len() as f64;
        let mean = counts.iter().sum::<f64>() / n;
        // Too few spikes make the estimate itself too noisy to judge the unit.
        if mean * n < 50.0 {
            continue;
        }
        let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let fano = var / mean;
        assert!(
            (0.6..=3.0).contains(&fano),
            "unit {unit}: Fano factor {fano:.2} at rest"
        );
        fanos.push(fano);
    }
    assert!(
        fanos.len() >= units / 2,
        "only {} units judged",
        fanos.len()
    );
    let median_fano = median(&mut fanos);
    println!(
        "median Fano factor at rest {median_fano:.3} over {} units, {} bins",
        fanos.len(),
        rest.len()
    );
    assert!(
        (0.9..=2.0).contains(&median_fano),
        "median Fano factor {median_fano:.3}"
    );
}

// ---------------------------------------------------------------------------------------------
// Determinism

fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn trials_json(rec: &BinnedRecording) -> String {
    serde_json::to_string(&rec.trials).unwrap()
}

#[test]
fn same_seed_gives_the_same_recording_and_another_seed_does_not() {
    let first = default_recording();
    let again = generate(&SyntheticConfig::default());
    assert_eq!(first.name, again.name);
    assert_eq!(first.source, again.source);
    assert_eq!(first.num_units, again.num_units);
    assert!(first.spike_counts == again.spike_counts, "spikes differ");
    for (a, b) in [
        (&first.x, &again.x),
        (&first.y, &again.y),
        (&first.vx, &again.vx),
        (&first.vy, &again.vy),
    ] {
        assert!(bits(a) == bits(b), "kinematics differ");
    }
    assert_eq!(trials_json(first), trials_json(&again));

    let other = generate(&SyntheticConfig {
        seed: 43,
        ..SyntheticConfig::default()
    });
    assert_eq!(other.source, "synthetic seed=43");
    let differing = first
        .spike_counts
        .iter()
        .zip(&other.spike_counts)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing * 10 > first.spike_counts.len(),
        "only {differing} spike counts differ between seeds"
    );
    assert!(
        bits(&first.x) != bits(&other.x),
        "kinematics ignore the seed"
    );
    assert_ne!(trials_json(first), trials_json(&other));
}

#[test]
fn unit_count_does_not_change_the_behaviour() {
    let first = default_recording();
    let fewer = generate(&SyntheticConfig {
        num_units: 10,
        ..SyntheticConfig::default()
    });
    assert!(bits(&first.vx) == bits(&fewer.vx) && bits(&first.y) == bits(&fewer.y));
    assert_eq!(trials_json(first), trials_json(&fewer));
}

// ---------------------------------------------------------------------------------------------
// Shape and task structure

#[test]
fn recording_has_mc_maze_shape() {
    let rec = default_recording();
    assert_eq!(rec.name, "MC_Maze");
    assert_eq!(rec.source, "synthetic seed=42");
    assert_eq!(rec.num_units, 142);
    let bins = 11_748;
    for column in [&rec.x, &rec.y, &rec.vx, &rec.vy] {
        assert_eq!(column.len(), bins);
    }
    assert_eq!(rec.spike_counts.len(), bins * 142);
    assert_eq!(rec.trials.len(), 100);

    let table = PacketTable::new(rec.clone()).expect("the packet table accepts it");
    assert_eq!(table.num_bins(), bins);
    assert!((table.duration_seconds() - 293.7).abs() < 1e-9);
    assert_eq!(
        table.target_ids().collect::<Vec<_>>(),
        (0..TARGET_POSITIONS.len() as u32).collect::<Vec<_>>()
    );
    for target in table.target_ids() {
        let count = table.trials_for_target(target).count();
        assert!(count >= 10, "target {target} has {count} trials");
        assert!(!table.playlist_for_target(target).unwrap().is_empty());
    }
}

#[test]
fn trials_are_ordered_delayed_reaches_inside_the_recording() {
    let rec = default_recording();
    let duration = rec.x.len() as f64 * BIN_SECONDS;
    let mut trials = rec.trials.clone();
    trials.sort_by(|a, b| a.start_time.total_cmp(&b.start_time));
    let mut previous_stop = 0.0;
    let mut successes = 0;
    for t in &trials {
        assert!(
            t.start_time >= previous_stop,
            "trial {} overlaps the one before",
            t.id
        );
        assert!(t.stop_time <= duration, "trial {} runs past the end", t.id);
        previous_stop = t.stop_time;

        let target_on = extra(t, "target_on_time");
        let go_cue = extra(t, "go_cue_time");
        let onset = extra(t, "move_onset_time");
        assert!(t.start_time < target_on && target_on <= go_cue && go_cue < onset);
        assert!(onset < t.stop_time, "trial {} ends before movement", t.id);
        let delay = extra(t, "delay");
        let rt = extra(t, "rt");
        assert!((delay - (go_cue - target_on) * 1000.0).abs() < 1e-6);
        assert!((rt - (onset - go_cue) * 1000.0).abs() < 1e-6);
        assert!((0.0..=900.0).contains(&delay), "delay {delay} ms");
        assert!((150.0..=500.0).contains(&rt), "rt {rt} ms");
        assert_eq!(extra(t, "num_targets"), 1.0);
        assert_eq!(extra(t, "active_target"), 0.0);

        let id = t.target_id.expect("every trial has a target") as usize;
        let [tx, ty] = TARGET_POSITIONS[id];
        assert_eq!((t.target_x, t.target_y), (Some(tx), Some(ty)));
        assert_eq!(
            t.extra["target_pos"],
            serde_json::json!([[tx, ty]]),
            "trial {}",
            t.id
        );
        assert!((80.0..=150.0).contains(&tx.hypot(ty)));
        successes += usize::from(t.success.expect("success is recorded"));
    }
    assert!(successes >= 85, "only {successes} successful trials");
}

#[test]
fn position_changes_match_velocity() {
    let rec = default_recording();
    let mut worst: f64 = 0.0;
    for b in 0..rec.x.len() - 1 {
        for (pos, vel) in [(&rec.x, &rec.vx), (&rec.y, &rec.vy)] {
            let from_position = (pos[b + 1] - pos[b]) / BIN_SECONDS;
            let mean_velocity = (vel[b] + vel[b + 1]) / 2.0;
            worst = worst.max((from_position - mean_velocity).abs());
        }
    }
    let peak = (0..rec.x.len()).map(|b| speed(rec, b)).fold(0.0, f64::max);
    println!("peak speed {peak:.0} mm/s, worst mismatch {worst:.2} mm/s");
    assert!(peak > 200.0, "the hand barely moves: peak {peak:.1} mm/s");
    assert!(
        worst < 0.03 * peak,
        "velocity disagrees with position by {worst:.2} mm/s"
    );
}

#[test]
fn reaches_start_still_at_centre_and_have_bell_shaped_speed() {
    let rec = default_recording();
    for (t, bins) in trial_bins(rec) {
        let onset = bin_at_or_after(extra(&t, "move_onset_time"));
        assert!(
            rec.x[bins.start].hypot(rec.y[bins.start]) < 10.0,
            "trial {} starts away from the centre",
            t.id
        );
        for b in bins.start..onset {
            assert_eq!(speed(rec, b), 0.0, "trial {} moves before onset", t.id);
        }
        if t.success != Some(true) {
            continue;
        }

        let profile: Vec<f64> = (onset..bins.end).map(|b| speed(rec, b)).collect();
        let (peak_at, peak) = profile
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let end = (peak_at..profile.len())
            .find(|&i| profile[i] < 0.02 * peak)
            .unwrap_or_else(|| panic!("trial {} is still moving when it ends", t.id));
        let id = t.id;
        assert!(profile[0] < 0.1 * peak, "trial {id} starts fast");
        assert!(
            profile[..=peak_at].windows(2).all(|w| w[0] <= w[1]),
            "trial {id}: speed does not rise steadily to its peak"
        );
        assert!(
            profile[peak_at..=end].windows(2).all(|w| w[0] >= w[1]),
            "trial {id}: speed does not fall steadily after its peak"
        );
        let middle = peak_at as f64 / end as f64;
        assert!(
            (0.35..=0.65).contains(&middle),
            "trial {id}: speed peaks at {middle:.2} of the reach"
        );
        let reach_ms = end as f64 * BIN_SECONDS * 1000.0;
        assert!(
            (350.0..=700.0).contains(&reach_ms),
            "trial {id}: reach lasts {reach_ms} ms"
        );
        let last = bins.end - 1;
        let miss = (rec.x[last] - t.target_x.unwrap()).hypot(rec.y[last] - t.target_y.unwrap());
        assert!(miss < 15.0, "trial {id} ends {miss:.1} mm from its target");
    }
}
