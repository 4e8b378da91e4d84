//! The process's own resource use, read from `/proc/self` and the process CPU clock (Linux);
//! zeros elsewhere. Read on every `/metrics`: only sources that cost the kernel the same with
//! a thousand threads as with ten.

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
        stats.cpu_seconds = process_cpu_seconds();
        if let Some(start) = start_seconds_after_boot() {
            stats.start_time_seconds = boot_time() + start;
            // Against the system's uptime (10 ms resolution), not btime (whole seconds).
            if let Some(system_up) = system_uptime() {
                stats.uptime_seconds = (system_up - start).max(0.0);
            }
        }
        stats
    }
}

/// User + system CPU time of every thread, living or gone, from the clock the kernel keeps
/// for the process. `/proc/self/stat` gives the same in clock ticks, but producing it walks
/// and formats every thread's figures: 0.5 ms and more per `/metrics` with a thousand client
/// threads.
fn process_cpu_seconds() -> f64 {
    clock_seconds(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has run, seconds (its own clock, to the nanosecond): what a
/// piece of work cost on this thread, whatever else the machine did meanwhile.
pub fn thread_cpu_seconds() -> f64 {
    clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec into a live local.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// When the process started, seconds after boot (`/proc/self/stat`, read once: it never
/// changes).
fn start_seconds_after_boot() -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name, which may itself contain spaces;
        // starttime is field 22 of stat, 19 after the name.
        let rest = stat.rsplit_once(')')?.1;
        let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(start_ticks / ticks)
    })
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
/// (a line per CPU and per interrupt) would otherwise be generated on every `/metrics`.
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

    /// utime + stime of `/proc/self/stat`, the figure the process CPU clock replaces.
    fn stat_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<f64> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (fields[0] + fields[1]) / ticks
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn cpu_time_advances_with_work_and_agrees_with_proc_stat() {
        let before = ProcessStats::read().cpu_seconds;
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 1u64;
        while ProcessStats::read().cpu_seconds < before + 0.1 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            assert!(
                std::time::Instant::now() < give_up,
                "CPU clock stuck at {before}"
            );
        }
        // /proc/self/stat counts in clock ticks (10 ms) and other test threads run too: read
        // it between two clock reads.
        let low = ProcessStats::read().cpu_seconds;
        let stat = stat_cpu_seconds();
        let high = ProcessStats::read().cpu_seconds;
        assert!(
            stat >= low - 0.05 && stat <= high + 0.05,
            "stat {stat} s outside {low}..{high} s"
        );
    }
}
