//! An NWB file served end to end: the packets a client receives carry exactly the spike
//! counts and kinematics that an independent numpy binning of the file (the fixture's
//! reference JSON, written by tools/make_nwb_fixture.py) computed, and the trials API serves
//! the file's trial table.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use phantomlink::dataset::load_dataset;
use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/mc_maze_gzip.nwb";

fn reference() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/mc_maze_gzip.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn streamed_packets_equal_the_numpy_binning() {
    let table = Arc::new(load_dataset(FIXTURE, 0).expect("fixture loads"));
    let reference = reference();
    let counts = reference["counts"].as_array().unwrap();
    let server = TestServer::of(Arc::clone(&table));
    let mut client = server.ws("/stream/nwb-replay");
    let metadata = client.metadata();
    assert_eq!(metadata["data"]["total_packets"], reference["n_bins"]);
    assert_eq!(metadata["data"]["num_channels"], reference["num_units"]);
    assert_eq!(metadata["data"]["num_trials"], reference["num_trials"]);

    // The first packets play bins 0, 1, 2, ...: every count must equal numpy's.
    let packets = client.data_n(80, Duration::from_secs(6));
    assert_eq!(packets.len(), 80);
    for data in &packets {
        let bin = bin(data) as usize;
        assert_eq!(
            data["spikes"]["spike_counts"], counts[bin],
            "bin {bin}: streamed counts differ from the reference"
        );
    }

    // Kinematics at the reference's chosen rows, reached by seeking.
    for row in reference["rows"].as_array().unwrap().iter().take(3) {
        let target = row["bin"].as_u64().unwrap();
        server.control("nwb-replay", &format!("seek?packet_id={target}"));
        let found = client.data_until(200, Duration::from_secs(5), |d| bin(d) == target);
        let data = found.last().expect("the seeked bin arrives");
        assert_eq!(bin(data), target);
        assert_eq!(data["spikes"]["spike_counts"], row["spike_counts"]);
        for key in ["x", "y", "vx", "vy"] {
            let got = data["kinematics"][key].as_f64().unwrap();
            let want = row[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{key} at bin {target}: {got} vs {want}"
            );
        }
    }

    // The trials API serves the file's trial table.
    let trials = server.get("/api/trials").ok_json();
    let want = reference["trials"].as_array().unwrap();
    assert_eq!(trials["count"], want.len());
    for (got, want) in trials["trials"].as_array().unwrap().iter().zip(want) {
        for key in [
            "id",
            "target_id",
            "active_target",
            "success",
            "num_targets",
            "maze_id",
        ] {
            assert_eq!(got[key], want[key], "trial {} {key}", want["id"]);
        }
        let start = got["start_time"].as_f64().unwrap();
        assert!((start - want["start_time"].as_f64().unwrap()).abs() < 1e-9);
    }
}
