//! The `phantomlink` binary: listens where `--host`/`--port` or `PHANTOM_PORT` say, closes
//! clients with 1001 and exits 0 promptly on SIGTERM/SIGINT, and refuses bad options with a
//! clear message and a non-zero status.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A child process killed (SIGKILL) and reaped if the test ends while it still runs.
struct ChildGuard(Child);

impl ChildGuard {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped, so the pid is its.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits at most `timeout` for the process to exit.
    fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stderr (after it has exited).
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The binary with `args`, without any `PHANTOM_*` variable of the test environment, plus
/// `env`.
fn spawn(args: &[&str], env: &[(&str, String)]) -> ChildGuard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_phantomlink"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("PHANTOM_")) {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    ChildGuard(command.spawn().expect("spawning phantomlink"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts the binary on a free port (given by `--port` or by `PHANTOM_PORT`) and waits until
/// `/health` answers. Retries with another port if the chosen one was taken meanwhile.
fn start_server(port_from_env: bool) -> (ChildGuard, SocketAddr) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec![
            "--host",
            "127.0.0.1",
            "--realtime",
            "off",
            "--log-level",
            "warn",
        ];
        let mut env = Vec::new();
        if port_from_env {
            env.push(("PHANTOM_PORT", port_text.clone()));
        } else {
            args.extend(["--port", &port_text]);
        }
        let mut child = spawn(&args, &env);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = child.wait_for(Duration::from_millis(50)) {
                failures.push(format!("port {port}: exited {status}: {}", child.stderr()));
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let health = http(addr, "GET", "/health", None, &[]).ok_json();
                assert_eq!(health["status"], "healthy");
                return (child, addr);
            }
        }
        if failures.is_empty() {
            panic!("phantomlink did not answer on {addr} within 20 s");
        }
    }
    panic!("phantomlink did not start: {failures:#?}");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    let (mut child, addr) = start_server(false);
    let mut client = WsClient::connect(addr, "/stream/shutdown-test").expect("connect");
    client.metadata();
    client.data_n(3, Duration::from_secs(5));

    child.signal(libc::SIGTERM);
    let signalled = Instant::now();
    let mut close = None;
    while signalled.elapsed() < Duration::from_secs(3) && close.is_none() {
        match client.read(Duration::from_millis(200)) {
            Ok(Some(Received::Close(frame))) => close = Some(frame),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    let frame = close.expect("no close frame within 3 s of SIGTERM");
    let (code, reason) = frame.expect("close frame carries a code");
    assert_eq!(code, 1001, "close code on shutdown ({reason})");

    let status = child
        .wait_for(Duration::from_secs(2).saturating_sub(signalled.elapsed()))
        .unwrap_or_else(|| panic!("still running 2 s after SIGTERM"));
    assert!(status.success(), "exit status {status}: {}", child.stderr());
}

#[test]
fn phantom_port_is_honoured_and_sigint_stops_the_server() {
    let (mut child, addr) = start_server(true);
    let mut client = WsClient::connect(addr, "/stream/sigint-test").expect("connect");
    client.metadata();
    client.next_data();
    child.signal(libc::SIGINT);
    let status = child
        .wait_for(Duration::from_secs(2))
        .unwrap_or_else(|| panic!("still running 2 s after SIGINT"));
    assert!(status.success(), "exit status {status}: {}", child.stderr());
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "the port still accepts connections after exit"
    );
}

#[test]
fn an_invalid_port_is_refused_clearly() {
    let mut child = spawn(&["--port", "70000"], &[]);
    let status = child
        .wait_for(Duration::from_secs(10))
        .expect("exits at once");
    assert!(!status.success());
    let stderr = child.stderr();
    assert!(
        stderr.contains("70000") && stderr.contains("--port"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_dataset_is_one_error_line() {
    let port = free_port().to_string();
    let mut child = spawn(
        &[
            "--dataset",
            "/nonexistent.nwb",
            "--realtime",
            "off",
            "--port",
            &port,
        ],
        &[],
    );
    let status = child
        .wait_for(Duration::from_secs(10))
        .expect("exits at once");
    assert!(!status.success());
    let stderr = child.stderr();
    let mentions: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("nonexistent.nwb"))
        .collect();
    assert_eq!(
        mentions.len(),
        1,
        "one error line naming the file, got:\n{stderr}"
    );
    assert!(mentions[0].to_lowercase().contains("error"), "{stderr}");
}
