//! The NWB loader against reference values computed by `tools/make_nwb_fixture.py` through an
//! independent path (the generator's integer 30 kHz ticks, h5py, numpy): every bin's spike
//! counts and kinematics (bit for bit), the checksum, and the whole trial table.

use std::collections::BTreeSet;
use std::path::PathBuf;

use phantomlink::dataset::nwb::{self, SeriesTiming};
use phantomlink::dataset::{BinnedRecording, PacketTable, Trial};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> (BinnedRecording, Value) {
    let rec = nwb::load(&fixture(&format!("{name}.nwb"))).unwrap_or_else(|e| panic!("{name}: {e}"));
    (rec, reference(name))
}

/// The script's checksum: sum of count[i] * (i * 0x9E3779B97F4A7C15), wrapping, row-major.
fn checksum(counts: &[u16]) -> u64 {
    counts.iter().enumerate().fold(0u64, |acc, (i, &c)| {
        acc.wrapping_add(u64::from(c).wrapping_mul((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    })
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every bin of every unit and every kinematic value, against the reference.
fn check_bins(name: &str) {
    let (rec, r) = load(name);
    let units = r["num_units"].as_u64().unwrap() as usize;
    let bins = r["n_bins"].as_u64().unwrap() as usize;
    assert_eq!(rec.num_units, units, "{name}: units");
    assert_eq!(rec.x.len(), bins, "{name}: bins");
    assert_eq!(
        checksum(&rec.spike_counts).to_string(),
        r["checksum"].as_str().unwrap(),
        "{name}: checksum"
    );
    let total: u64 = rec.spike_counts.iter().map(|&c| u64::from(c)).sum();
    assert_eq!(
        total,
        r["total_spikes"].as_u64().unwrap(),
        "{name}: total spikes"
    );

    let counts = r["counts"]
        .as_array()
        .expect("small fixtures carry the full matrix");
    assert_eq!(counts.len(), bins);
    for (bin, row) in counts.iter().enumerate() {
        let expected: Vec<u16> = u64s(row).into_iter().map(|c| c as u16).collect();
        assert_eq!(
            &rec.spike_counts[bin * units..(bin + 1) * units],
            &expected[..],
            "{name}: counts of bin {bin}"
        );
    }
    let kin = &r["kinematics_bits"];
    for (axis, got) in [
        ("x", &rec.x),
        ("y", &rec.y),
        ("vx", &rec.vx),
        ("vy", &rec.vy),
    ] {
        let expected = u64s(&kin[axis]);
        let got = bits(got);
        if let Some(bin) = (0..bins).find(|&b| got[b] != expected[b]) {
            panic!(
                "{name}: {axis} of bin {bin} is {} , reference {}",
                f64::from_bits(got[bin]),
                f64::from_bits(expected[bin])
            );
        }
    }
}

/// The chosen rows, through the packet table: what a streamed packet carries.
fn check_rows(name: &str) {
    let (rec, r) = load(name);
    let table = PacketTable::new(rec).unwrap();
    for row in r["rows"].as_array().unwrap() {
        let bin = row["bin"].as_u64().unwrap() as u32;
        let packet = table.row(bin);
        let expected: Vec<u16> = u64s(&row["spike_counts"])
            .into_iter()
            .map(|c| c as u16)
            .collect();
        assert_eq!(
            packet.spike_counts,
            &expected[..],
            "{name}: packet {bin} spikes"
        );
        for (axis, got) in [
            ("x", packet.x),
            ("y", packet.y),
            ("vx", packet.vx),
            ("vy", packet.vy),
        ] {
            assert_eq!(
                got.to_bits(),
                row[format!("{axis}_bits")].as_u64().unwrap(),
                "{name}: packet {bin} {axis}"
            );
        }
        assert_eq!(packet.trial_time_ms, f64::from(bin) * 25.0);
    }
}

fn same_json(got: &Value, want: &Value, what: &str) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{what}: {a} != {b}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same_json(x, y, &format!("{what}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: reference {want}"));
    assert!((got - want).abs() <= 1e-9, "{what}: {got} != {want}");
}

/// Every trial and every column, against the trial table h5py read.
fn check_trials(name: &str) {
    let (rec, r) = load(name);
    let expected = r["trials"].as_array().unwrap();
    assert_eq!(
        rec.trials.len(),
        r["num_trials"].as_u64().unwrap() as usize,
        "{name}: trials"
    );
    let mut seen = 0;
    for want in expected {
        let id = want["id"].as_u64().unwrap() as u32;
        let t: &Trial = rec.trials.iter().find(|t| t.id == id).unwrap();
        let what = format!("{name} trial {id}");
        close(t.start_time, &want["start_time"], &format!("{what} start"));
        close(t.stop_time, &want["stop_time"], &format!("{what} stop"));
        assert_eq!(t.success, want["success"].as_bool(), "{what} success");
        assert_eq!(
            t.target_id.map(u64::from),
            want["target_id"].as_u64(),
            "{what} target_id"
        );
        assert_eq!(t.target_x, want["target_x"].as_f64(), "{what} target_x");
        assert_eq!(t.target_y, want["target_y"].as_f64(), "{what} target_y");
        let skip = [
            "id",
            "start_time",
            "stop_time",
            "success",
            "target_id",
            "target_x",
            "target_y",
        ];
        let columns: BTreeSet<&str> = want
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| !skip.contains(k))
            .collect();
        let served: BTreeSet<&str> = t.extra.keys().map(String::as_str).collect();
        assert_eq!(served, columns, "{what}: columns served");
        for column in columns {
            same_json(&t.extra[column], &want[column], &format!("{what} {column}"));
        }
        seen += 1;
    }
    assert!(seen > 0);
}

#[test]
fn gzip_linked_timestamps_bin_for_bin() {
    check_bins("mc_maze_gzip");
}

#[test]
fn rate_timing_and_velocity_fallback_bin_for_bin() {
    check_bins("mc_maze_rate");
}

#[test]
fn unlinked_timestamps_uint8_index_bin_for_bin() {
    check_bins("mc_maze_unlinked");
}

#[test]
fn packets_carry_the_reference_rows() {
    for name in ["mc_maze_gzip", "mc_maze_rate", "mc_maze_unlinked"] {
        check_rows(name);
    }
}

#[test]
fn trial_tables_match_h5py() {
    for name in ["mc_maze_gzip", "mc_maze_rate", "mc_maze_unlinked"] {
        check_trials(name);
    }
}

#[test]
fn packets_inside_trials_carry_the_target() {
    let (rec, _) = load("mc_maze_gzip");
    let trials = rec.trials.clone();
    let table = PacketTable::new(rec).unwrap();
    let mut checked = 0;
    for t in &trials {
        // The first bin whose start is at or after the trial start belongs to it.
        let bin = (t.start_time / 0.025 - 1e-6).ceil() as u32;
        let packet = table.row(bin);
        assert_eq!(packet.trial_id, Some(t.id));
        assert_eq!(packet.target_id, t.target_id);
        let d = (t.target_x.unwrap() - packet.x).hypot(t.target_y.unwrap() - packet.y);
        assert_eq!(packet.distance_to_target, Some(d));
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn inspect_reports_what_the_file_holds() {
    let report = nwb::inspect(&fixture("mc_maze_gzip.nwb")).unwrap();
    let r = reference("mc_maze_gzip");
    assert_eq!(report.num_units, 20);
    assert_eq!(report.num_bins as u64, r["n_bins"].as_u64().unwrap());
    assert_eq!(report.num_trials, 8);
    assert_eq!(
        report.spike_index_dtype,
        r["spike_times_index_dtype"].as_str().unwrap()
    );
    assert_eq!(
        report.num_spikes - report.spikes_binned,
        r["dropped_spikes"].as_u64().unwrap()
    );
    assert!(
        report.missing_optional.is_empty(),
        "{:?}",
        report.missing_optional
    );
    let hand = report
        .series
        .iter()
        .find(|s| s.path.ends_with("hand_pos"))
        .unwrap();
    match &hand.timing {
        SeriesTiming::Timestamps {
            count,
            mean_rate_hz,
            shared_with,
            ..
        } => {
            assert_eq!(*count, 16_000);
            assert!((mean_rate_hz - 1000.0).abs() < 1e-6);
            assert_eq!(
                shared_with.as_deref(),
                Some("/processing/behavior/cursor_pos")
            );
        }
        other => panic!("hand_pos timing {other:?}"),
    }
    let text = report.to_string();
    for needle in [
        "units: 20",
        "trials: 8",
        "target_pos (int[2] ragged)",
        "hand_vel",
        "1000.0 Hz",
    ] {
        assert!(text.contains(needle), "report lacks {needle:?}:\n{text}");
    }

    let report = nwb::inspect(&fixture("mc_maze_rate.nwb")).unwrap();
    assert!(
        matches!(report.series[0].timing, SeriesTiming::Rate { rate_hz, .. } if rate_hz == 500.0)
    );
    assert!((report.t0_seconds - 3.2).abs() < 1e-12);
    for missing in ["go_cue_time", "move_onset_time", "eye_pos", "hand_vel"] {
        assert!(
            report.missing_optional.iter().any(|m| m.ends_with(missing)),
            "{missing}: {:?}",
            report.missing_optional
        );
    }
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("hand_vel is missing")),
        "{:?}",
        report.warnings
    );
    assert!(report.velocity_source.contains("d/dt"));
}
