//! `phantomlink-loadgen` against a test server: `--metrics-every` times `/metrics` in both
//! formats while the clients stream. (Its `--closed-loop` test lives in `closed_loop.rs`.)

mod common;

use common::*;

/// A short run polling `/metrics` every 50 ms: both formats are asked for, all answers are
/// 200, and the reported times are ordered.
#[test]
fn loadgen_times_metrics_in_both_formats_while_loaded() {
    let server = TestServer::start();
    let report = loadgen_report(&server, "2", &["--metrics-every", "50"]);
    let poll = &report["metrics_poll"];
    assert_eq!(poll["errors"], 0, "{poll}");
    assert_eq!(poll["capped"], false, "{poll}");
    for format in ["json", "prometheus"] {
        let f = &poll[format];
        let requests = f["requests"].as_u64().unwrap();
        assert!(requests > 0, "{format}: {f}");
        assert_eq!(f["ok"].as_u64().unwrap(), requests, "{format}: {f}");
        assert!(f["body_bytes_max"].as_u64().unwrap() > 0, "{format}: {f}");
        for times in ["response_us", "first_byte_us"] {
            let t = &f[times];
            assert_eq!(
                t["count"].as_u64().unwrap(),
                requests,
                "{format} {times}: {t}"
            );
            let (p50, max) = (t["p50"].as_f64().unwrap(), t["max"].as_f64().unwrap());
            assert!(p50 > 0.0 && p50 <= max, "{format} {times}: {t}");
        }
    }
    // Turns alternate, so neither format got more than one request more than the other.
    let (j, p) = (
        poll["json"]["requests"].as_u64().unwrap(),
        poll["prometheus"]["requests"].as_u64().unwrap(),
    );
    assert!(j == p || j == p + 1, "json {j}, prometheus {p}");
}
