//! `phantomlink-monitor` against a real server: `--check` exits 0 within generous thresholds,
//! 1 when one is crossed, 2 when the server cannot be read; the live view renders what
//! `/metrics` says.

mod metrics_support;

use std::process::{Command, Output};
use std::time::Duration;

use metrics_support::{engine, wait_for, Receiver, TestServer};

const CODE: &str = "monitor-check";

fn monitor(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_phantomlink-monitor"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run phantomlink-monitor");
    eprintln!(
        "phantomlink-monitor {args:?} -> {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const GENEROUS: [&str; 8] = [
    "--max-latency-ms",
    "1000",
    "--max-timing-error-ms",
    "1000",
    "--max-drop-rate",
    "0.5",
    "--max-memory-mb",
    "1000",
];

#[test]
fn check_mode_exit_codes() {
    let server = TestServer::start(engine());
    let url = server.base_url();
    let client = Receiver::connect(&server.ws_url(&format!("/stream/{CODE}")));
    wait_for(Duration::from_secs(10), || {
        (client.received() >= 20).then_some(())
    })
    .expect("the client receives packets");

    // Healthy, generous limits: 0, twice in a row with --samples.
    let mut args = vec![
        "--url",
        url.as_str(),
        "--check",
        "--samples",
        "2",
        "--interval",
        "0.2",
    ];
    args.extend(GENEROUS);
    let ok = monitor(&args);
    assert_eq!(ok.status.code(), Some(0));
    assert!(stdout(&ok).contains("OK: 1 session(s) within thresholds in 2 poll(s)"));

    // An impossible latency limit: 1, naming the session, the client and the percentile.
    let bad = monitor(&[
        "--url",
        &url,
        "--check",
        "--max-latency-ms",
        "0.000001",
        "--max-timing-error-ms",
        "1000",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(
        text.contains(&format!("VIOLATION session {CODE}: network latency p99")),
        "{text}"
    );
    assert!(
        text.contains(&format!("VIOLATION session {CODE} client ")),
        "{text}"
    );
    assert!(text.contains("FAIL:"), "{text}");

    // The judged statistic is selectable; timing error on a 1-minute window.
    let bad = monitor(&[
        "--url",
        &url,
        "--check",
        "--stat",
        "max",
        "--window",
        "1m",
        "--max-timing-error-ms",
        "0",
        "--max-latency-ms",
        "1000",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stdout(&bad).contains("timing error max (1m)"),
        "{}",
        stdout(&bad)
    );

    // Narrowed to the session, a base URL ending in /metrics is fine too.
    let metrics_url = format!("{url}/metrics");
    let mut args = vec!["--url", metrics_url.as_str(), "--check", "--session", CODE];
    args.extend(GENEROUS);
    assert_eq!(monitor(&args).status.code(), Some(0));

    // An unknown session is an answer the monitor cannot judge: 2.
    let unknown = monitor(&["--url", &url, "--check", "--session", "no-such-session"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));

    // Something that is not PhantomLink's /metrics: 2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    let not_metrics = monitor(&[
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--check",
        "--timeout",
        "5",
    ]);
    fake.join().unwrap();
    assert_eq!(not_metrics.status.code(), Some(2));

    client.stop();
}

#[test]
fn check_mode_without_a_server_exits_2() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let down = monitor(&["--url", &url, "--check", "--timeout", "2"]);
    assert_eq!(down.status.code(), Some(2));
    assert!(stdout(&down).contains("UNKNOWN"));
    // Bad arguments are not a pass either.
    assert_eq!(
        monitor(&["--url", "https://127.0.0.1:1", "--check"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        monitor(&["--max-drop-rate", "2", "--check"]).status.code(),
        Some(2)
    );
}

#[test]
fn live_view_shows_sessions_and_clients() {
    let server = TestServer::start(engine());
    let client = Receiver::connect(&server.ws_url("/stream/monitor-live"));
    wait_for(Duration::from_secs(10), || {
        (client.received() >= 10).then_some(())
    })
    .expect("the client receives packets");
    let url = server.base_url();
    // Not a terminal: frames are printed one after another, without ANSI codes.
    let live = monitor(&["--url", &url, "--samples", "2", "--interval", "0.3"]);
    assert_eq!(live.status.code(), Some(0));
    let text = stdout(&live);
    assert!(!text.contains('\x1b'), "ANSI codes on a pipe");
    assert_eq!(text.matches("SESSION monitor-live").count(), 2, "{text}");
    for expected in [
        "timing error",
        "network latency",
        "  network 1m",
        "p99.9",
        "ring hw",
        &client.local.to_string(),
        "process: RSS",
        "sent/s",
        "alerts when network latency p99 <= 10 ms",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    client.stop();
}
