//! Unusable NWB inputs: each is one clear error naming the file (and the HDF5 path when one is
//! at fault), never a panic, a hang or a silently partial load.

use std::path::{Path, PathBuf};

use phantomlink::dataset::{nwb, DatasetError};
use rand::{Rng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A scratch file unique to this test process and `tag`.
fn scratch(tag: &str, bytes: &[u8]) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("phantomlink-nwb-{}-{tag}.nwb", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn invalid_detail(path: &Path) -> String {
    match nwb::load(path) {
        Err(DatasetError::Invalid { path: p, detail }) => {
            assert_eq!(p, path, "the error names the file");
            detail
        }
        Err(other) => panic!("{}: expected Invalid, got {other}", path.display()),
        Ok(rec) => panic!(
            "{}: loaded {} bins from an unusable file",
            path.display(),
            rec.x.len()
        ),
    }
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = fixture("does_not_exist.nwb");
    match nwb::load(&path) {
        Err(e @ DatasetError::Io { .. }) => {
            assert!(e.to_string().contains("does_not_exist.nwb"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(nwb::inspect(&path).is_err());
}

#[test]
fn a_directory_is_an_io_error() {
    assert!(matches!(
        nwb::load(&fixture("")),
        Err(DatasetError::Io { .. })
    ));
}

#[test]
fn missing_units_names_the_spike_times_path() {
    let path = fixture("no_units.nwb");
    let detail = invalid_detail(&path);
    assert!(detail.contains("/units/spike_times"), "{detail}");
    let line = nwb::inspect(&path).unwrap_err().to_string();
    assert!(
        line.contains("no_units.nwb") && line.contains("/units/spike_times"),
        "{line}"
    );
    assert!(!line.contains('\n'), "one line: {line}");
}

#[test]
fn missing_position_names_the_cursor_path() {
    let detail = invalid_detail(&fixture("no_position.nwb"));
    assert!(
        detail.contains("/processing/behavior/cursor_pos"),
        "{detail}"
    );
}

#[test]
fn truncated_files_are_errors() {
    let full = std::fs::read(fixture("mc_maze_gzip.nwb")).unwrap();
    for keep in [
        0,
        7,
        100,
        2_000,
        50_000,
        full.len() / 3,
        full.len() / 2,
        full.len() - 5_000,
        full.len() - 1,
    ] {
        let path = scratch(&format!("trunc{keep}"), &full[..keep]);
        let detail = invalid_detail(&path);
        assert!(!detail.is_empty());
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn random_bytes_are_errors() {
    let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
    for (i, len) in [0usize, 1, 8, 512, 100_000].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let path = scratch(&format!("random{i}"), &bytes);
        invalid_detail(&path);
        // The HDF5 signature followed by garbage gets past the magic check.
        let mut signed = b"\x89HDF\r\n\x1a\n".to_vec();
        signed.extend(&bytes);
        std::fs::write(&path, &signed).unwrap();
        invalid_detail(&path);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Overwrite a few bytes at random places: metadata, chunk indexes, compressed data. Each
    // load is an error or a recording; what must not happen is a panic, a hang or an abort.
    let full = std::fs::read(fixture("mc_maze_gzip.nwb")).unwrap();
    let mut rng = rand_pcg::Pcg64::seed_from_u64(11);
    let path = scratch("corrupt", &full);
    let mut errors = 0;
    for _ in 0..150 {
        let mut bytes = full.clone();
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..bytes.len());
            bytes[at] = rng.gen();
        }
        std::fs::write(&path, &bytes).unwrap();
        errors += usize::from(nwb::load(&path).is_err());
    }
    std::fs::remove_file(&path).unwrap();
    // Most bytes of the file are spec text and sample values, whose damage is undetectable;
    // still some corruptions must have been caught.
    assert!(errors > 0);
}
