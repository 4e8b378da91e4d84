//! Making a timing thread punctual: core pinning, SCHED_FIFO, timer slack (and SCHED_FIFO, one
//! step lower, for the writer pool's threads).
//!
//! Called once at the start of each timing or writer thread, never on the tick path. Refusals (no
//! permission for SCHED_FIFO, a core that does not exist) are reported, not fatal; the
//! `--realtime on` check happens once at startup through [`probe_fifo`].

use std::fmt;

/// Whether timing threads ask for SCHED_FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RealtimeMode {
    /// Use SCHED_FIFO when permitted (root, CAP_SYS_NICE, RLIMIT_RTPRIO), else warn once.
    Auto,
    /// Require SCHED_FIFO: refuse to start without it.
    On,
    /// Never ask for it.
    Off,
}

impl fmt::Display for RealtimeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RealtimeMode::Auto => "auto",
            RealtimeMode::On => "on",
            RealtimeMode::Off => "off",
        })
    }
}

/// SCHED_FIFO priority of timing threads: above normal threads, below kernel watchdogs (99).
pub const FIFO_PRIORITY: i32 = 50;

/// SCHED_FIFO priority of the writer pool's threads: below timing threads, which must never
/// wait for a writer, and above normal threads, so a busy machine (a decoder, a build) does
/// not leave packets waiting in the rings. Writers only run when woken and never spin.
pub const WRITER_FIFO_PRIORITY: i32 = 40;

/// Makes the calling writer-pool thread SCHED_FIFO at [`WRITER_FIFO_PRIORITY`] unless `mode`
/// is `Off`, with a 1 µs timer slack so delay-line deadlines end on time. Returns whether it
/// runs SCHED_FIFO (a refusal was already reported for the timing threads).
pub fn setup_writer_thread(mode: RealtimeMode) -> bool {
    set_timer_slack_ns(1_000);
    mode != RealtimeMode::Off && set_fifo(WRITER_FIFO_PRIORITY).is_ok()
}

/// What a timing thread got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadSetup {
    /// The core it is pinned to, if pinning worked.
    pub core: Option<usize>,
    /// Whether it runs SCHED_FIFO.
    pub fifo: bool,
    /// Why SCHED_FIFO was refused, when it was asked for.
    pub fifo_error: Option<String>,
}

/// Pins the calling thread to `core`, lowers its timer slack to 1 ns so sleeps end on time,
/// and switches it to SCHED_FIFO unless `mode` is `Off`.
pub fn setup_current_thread(core: Option<usize>, mode: RealtimeMode) -> ThreadSetup {
    let mut setup = ThreadSetup::default();
    if let Some(id) = core {
        if core_affinity::set_for_current(core_affinity::CoreId { id }) {
            setup.core = Some(id);
        }
    }
    set_timer_slack_ns(1);
    if mode != RealtimeMode::Off {
        match set_fifo(FIFO_PRIORITY) {
            Ok(()) => setup.fifo = true,
            Err(e) => setup.fifo_error = Some(e),
        }
    }
    setup
}

/// Tries SCHED_FIFO on a short-lived thread, to learn at startup whether it is permitted.
pub fn probe_fifo() -> Result<(), String> {
    std::thread::spawn(|| set_fifo(FIFO_PRIORITY))
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

#[cfg(target_os = "linux")]
fn set_fifo(priority: i32) -> Result<(), String> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setscheduler(SCHED_FIFO, {priority}): {} (needs root, CAP_SYS_NICE or RLIMIT_RTPRIO >= {priority})",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn set_fifo(_priority: i32) -> Result<(), String> {
    Err("SCHED_FIFO is only supported on Linux".into())
}

#[cfg(target_os = "linux")]
fn set_timer_slack_ns(ns: libc::c_ulong) {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_timer_slack_ns(_ns: u64) {}

/// Cores timing threads may use: `requested` if given (validated), else every core.
pub fn available_cores(requested: &[usize]) -> Result<Vec<usize>, String> {
    let present: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if requested.is_empty() {
        return Ok(present);
    }
    for core in requested {
        if !present.contains(core) {
            return Err(format!(
                "core {core} is not available to this process (available: {present:?})"
            ));
        }
    }
    Ok(requested.to_vec())
}
