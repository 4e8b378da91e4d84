//! Resource use from `/proc`: the server's CPU time and RSS, its CPU time per thread (grouped
//! by thread name), and the load generator's own CPU time.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

/// CPU and memory of a process at one instant.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Resident set, bytes.
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// The fields of `/proc/.../stat` after the command name, which may contain spaces.
fn stat_fields(text: &str) -> Vec<&str> {
    text.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat);
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    let cpu_seconds = (field(11)? + field(12)?) / clock_ticks();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_seconds,
        rss_bytes: value("VmRSS:")? * 1024,
        threads: value("Threads:").unwrap_or(0),
    })
}

/// Thread-name groups of the server: `tick-…` timing threads, `ws-writer-…` writers, `ws-r-…`
/// readers, `http-…` workers, `housekeeping`, everything else.
pub fn group_of(name: &str) -> &'static str {
    if name.starts_with("tick-") {
        "tick"
    } else if name.starts_with("ws-w-") || name.starts_with("ws-writer-") {
        "ws-writer"
    } else if name.starts_with("ws-r-") {
        "ws-reader"
    } else if name.starts_with("http-") {
        "http"
    } else if name.starts_with("housekeeping") {
        "housekeeping"
    } else {
        "other"
    }
}

/// On-CPU time of every thread of a process: tid → (group, ns).
pub type ThreadTimes = BTreeMap<u32, (&'static str, u64)>;

/// Reads every thread's run time: `/proc/PID/task/TID/schedstat` (ns, exact) when the kernel
/// keeps it, else utime + stime from `stat` (clock ticks).
pub fn thread_times(pid: u32) -> ThreadTimes {
    let mut times = ThreadTimes::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return times;
    };
    let ticks_ns = 1e9 / clock_ticks();
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(comm) = fs::read_to_string(format!("{base}/comm")) else {
            continue;
        };
        let schedstat = fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let ns = schedstat.or_else(|| {
            let stat = fs::read_to_string(format!("{base}/stat")).ok()?;
            let fields = stat_fields(&stat);
            let f = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            Some(((f(11)? + f(12)?) * ticks_ns) as u64)
        });
        if let Some(ns) = ns {
            times.insert(tid, (group_of(comm.trim()), ns));
        }
    }
    times
}

/// CPU spent by one group of threads between two snapshots.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GroupCpu {
    /// Threads of the group seen in the later snapshot.
    pub threads: usize,
    /// CPU seconds between the snapshots (threads that ended in between are not counted).
    pub cpu_seconds: f64,
}

/// CPU per group between `start` and `end`.
pub fn thread_delta(start: &ThreadTimes, end: &ThreadTimes) -> BTreeMap<&'static str, GroupCpu> {
    let mut groups: BTreeMap<&'static str, GroupCpu> = BTreeMap::new();
    for (tid, (group, ns)) in end {
        let before = start.get(tid).map_or(0, |(_, ns)| *ns);
        let entry = groups.entry(group).or_default();
        entry.threads += 1;
        entry.cpu_seconds += ns.saturating_sub(before) as f64 / 1e9;
    }
    groups
}

/// CPU time used by this process so far (user + system).
pub fn own_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Raises this process's open-file limit to its hard limit (thousands of sockets).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.threads >= 1, "{me:?}");
        let threads = thread_times(std::process::id());
        assert!(!threads.is_empty());
        assert_eq!(group_of("ws-writer-1"), "ws-writer");
        assert_eq!(group_of("tick-swift-neu"), "tick");
        assert_eq!(group_of("phantomlink"), "other");
    }
}
