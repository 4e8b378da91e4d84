//! `/metrics` as JSON (`document`: the reference schema, extended) and as Prometheus text
//! (`exposition`).
//!
//! Readers only: figures are read from atomic counters and histograms, and from each
//! session's state under its lock (which no timing thread or streaming writer ever takes),
//! then written straight into the response's bytes; with a thousand clients either format
//! is a megabyte or more, so large renders are split among the render pool's helpers.
//! Must never: write text while holding a session's lock, or make a recording thread wait.

mod document;
mod exposition;

pub use document::json;
pub use exposition::prometheus;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::{ClientShared, SessionState};

/// Fewest sessions per part of a split render: under this, handing work over is not repaid.
const SESSIONS_PER_THREAD: usize = 8;

fn unix(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Session totals: departed clients plus the live ones.
struct Totals {
    packets_sent: u64,
    dropped: u64,
    bytes: u64,
}

fn totals(state: &SessionState) -> Totals {
    let live = |f: fn(&ClientShared) -> u64| -> u64 { state.clients.iter().map(|c| f(c)).sum() };
    Totals {
        packets_sent: state.departed.packets_sent + live(|c| c.counters.packets_sent.load(Relaxed)),
        dropped: state.departed.dropped_packets
            + live(|c| c.counters.dropped_packets.load(Relaxed)),
        bytes: state.departed.bytes_sent + live(|c| c.counters.bytes_sent.load(Relaxed)),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::codec::WireFormat;
    use crate::dataset::synthetic::{generate, SyntheticConfig};
    use crate::dataset::PacketTable;
    use crate::engine::{ClientShared, EngineConfig, Registry};

    /// Sessions with clients attached without sockets, their histograms filled.
    pub(crate) fn registry(sessions: usize, clients: usize) -> Registry {
        let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
        let registry = Registry::new(
            table,
            EngineConfig {
                max_sessions: sessions,
                ..EngineConfig::default()
            },
        );
        for s in 0..sessions {
            let session = registry.create(Some(&format!("render-{s:02}"))).unwrap();
            // Sessions of unequal sizes, some empty, so that runs differ in length.
            for c in 0..(s * 7) % (clients + 1) {
                let id = (s * clients + c) as u64;
                let remote = format!("127.0.0.1:{}", 20_000 + id).parse().unwrap();
                let shared = Arc::new(ClientShared::new(id, remote, WireFormat::ALL[c % 2], 64));
                for v in 0..500u64 {
                    shared.latency.record(40_000 + v * v * 37 + id);
                    shared.ring_wait.record(1_000 + v * 113);
                    session.status().latency.record(40_000 + v * 991);
                }
                session
                    .attach(shared, None, registry.table().playlist_all(), clients)
                    .unwrap();
            }
            for v in 0..300u64 {
                session.status().lateness.record(150 + v * 61);
            }
        }
        registry
    }

    /// Asserts that `render(n)` gives the output of `render(1)` for each of `threads`. The
    /// timing threads of a fresh registry publish their core and scheduling as they start: a
    /// comparison counts when the serial renders before and after it agree.
    pub(crate) fn same_as_serial<T: PartialEq>(
        threads: &[usize],
        mut render: impl FnMut(usize) -> T,
    ) {
        let mut serial = render(1);
        for &n in threads {
            let mut attempts = 0;
            loop {
                let parallel = render(n);
                let after = render(1);
                if after == serial {
                    assert!(parallel == serial, "{n} threads render other output");
                    break;
                }
                attempts += 1;
                assert!(attempts < 50, "the figures never hold still");
                std::thread::sleep(Duration::from_millis(20));
                serial = after;
            }
        }
    }
}
