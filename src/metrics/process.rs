//! The process's own resource use, read from `/proc/self` (Linux); zeros elsewhere.

use std::sync::OnceLock;

use serde::Serialize;

/// Resource use of the server process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessStats {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Threads in the process.
    pub threads: u64,
    /// Process start, Unix seconds.
    pub start_time_seconds: f64,
    /// Time since the process started, seconds.
    pub uptime_seconds: f64,
}

impl ProcessStats {
    /// Reads the current figures.
    pub fn read() -> Self {
        let mut stats = Self::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let value = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                if line.starts_with("VmRSS:") {
                    stats.rss_bytes = value(line) * 1024;
                } else if line.starts_with("Threads:") {
                    stats.threads = value(line);
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name, which may itself contain spaces.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // SAFETY: sysconf has no preconditions.
                let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
                stats.cpu_seconds = (field(11) + field(12)) / ticks;
                let start_ticks = field(19);
                stats.start_time_seconds = boot_time() + start_ticks / ticks;
                // Against the system's uptime (10 ms resolution), not btime (whole seconds).
                if let Some(system_up) = system_uptime() {
                    stats.uptime_seconds = (system_up - start_ticks / ticks).max(0.0);
                }
            }
        }
        stats
    }
}

fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The system's boot time, Unix seconds: read once, since it never changes and `/proc/stat`
/// (a line per CPU and per interrupt) takes 15–50 µs to generate, on every `/metrics`.
fn boot_time() -> f64 {
    static BOOT_TIME: OnceLock<f64> = OnceLock::new();
    *BOOT_TIME.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("btime"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_plausible_figures() {
        let stats = ProcessStats::read();
        assert!(stats.rss_bytes > 100_000, "{stats:?}");
        assert!(stats.threads >= 1, "{stats:?}");
        assert!(stats.start_time_seconds > 1.0e9, "{stats:?}");
        assert!(
            // Clock ticks are 10 ms: a test process may be younger than one.
            (0.0..86_400.0).contains(&stats.uptime_seconds),
            "{stats:?}"
        );
    }
}
