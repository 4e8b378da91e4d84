//! Loads and bins an NWB file once, as the server does at startup, and prints how long it took.
//!
//! ```text
//! cargo build --release --example nwb_load
//! /usr/bin/time -v target/release/examples/nwb_load FILE.nwb [REFERENCE.json] [--report]
//! ```
//!
//! The timed part is `nwb::load` (read + bin) and `PacketTable::new`; peak memory is what
//! `/usr/bin/time -v` reports as "Maximum resident set size". With a reference JSON written by
//! `tools/make_nwb_fixture.py` it also checks the binned counts against the reference
//! checksum, which is how the full-size speed run is verified. `--report` instead runs
//! `nwb::inspect` and prints what `phantomlink inspect` will print.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use phantomlink::dataset::{nwb, PacketTable};

/// The checksum `tools/make_nwb_fixture.py` writes: sum of count[i] * (i * 0x9E3779B97F4A7C15),
/// wrapping, over the row-major count matrix.
fn checksum(counts: &[u16]) -> u64 {
    counts.iter().enumerate().fold(0u64, |acc, (i, &c)| {
        acc.wrapping_add(u64::from(c).wrapping_mul((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = args.iter().any(|a| a == "--report");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let Some(path) = positional.next() else {
        eprintln!("usage: nwb_load FILE.nwb [REFERENCE.json] [--report]");
        return ExitCode::from(2);
    };
    let reference = positional.next();

    if report {
        return match nwb::inspect(Path::new(path)) {
            Ok(r) => {
                println!("{r}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let started = Instant::now();
    let recording = match nwb::load(Path::new(path)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let load_s = started.elapsed().as_secs_f64();
    let sum = checksum(&recording.spike_counts);
    let started = Instant::now();
    let table = match PacketTable::new(recording) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let table_s = started.elapsed().as_secs_f64();
    println!(
        "load+bin {load_s:.3} s, packet table {table_s:.3} s: {} bins x {} units, {} trials, \
         counts checksum {sum}",
        table.num_bins(),
        table.num_units(),
        table.trials().len()
    );
    if let Some(reference) = reference {
        let json: serde_json::Value = match std::fs::read_to_string(reference)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        {
            Ok(json) => json,
            Err(e) => {
                eprintln!("error: {reference}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let expected = json["checksum"].as_str().unwrap_or_default();
        if expected != sum.to_string() {
            eprintln!("checksum differs from the reference {reference} ({expected})");
            return ExitCode::FAILURE;
        }
        println!("checksum matches {reference}");
    }
    ExitCode::SUCCESS
}
