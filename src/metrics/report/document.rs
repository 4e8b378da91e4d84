//! The JSON document of `GET /metrics`: the reference's schema field for field, extended
//! with percentiles, clients, windows and process figures (see docs/METRICS_GUIDE.md).
//!
//! Each session's figures are read under its lock into the structs below, then written by
//! [`json_object!`] after the lock is released; runs of sessions are written by the render
//! pool's helpers in parallel and appended in order. Must never: hold a lock while writing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

#[cfg(test)]
use serde::Serialize;

use super::{totals, unix, SESSIONS_PER_THREAD};
use crate::codec::WireFormat;
use crate::engine::feedback::DecoderStats;
use crate::engine::{ClientShared, NoiseConfig, Registry, Session, SessionState};
use crate::metrics::json::{json_object, Serde, With, WriteJson};
use crate::metrics::process::ProcessStats;
use crate::metrics::render_pool::{render_threads, RenderPool};
use crate::metrics::window::WINDOWS;
use crate::metrics::LatencySummary;

/// The JSON document of `GET /metrics`, for every session or only `only`, serialised: the
/// bytes the HTTP handler sends. Written straight into the buffer by `json_object!` (no
/// value tree, no serializer); each session's figures are read under its state lock, then
/// written without it. With many sessions they are rendered on several threads (see
/// `render_threads`); the bytes are those of a serial render.
pub fn json(registry: &Registry, only: Option<&str>) -> Vec<u8> {
    json_with(registry, only, render_threads())
}

/// [`json`] on at most `threads` threads.
fn json_with(registry: &Registry, only: Option<&str>, threads: usize) -> Vec<u8> {
    // Sorted by code, as the document always was.
    let sessions = registry.sessions();
    // Server-wide, like total_sessions and total_connections, also when narrowed by `only`.
    let active = sessions.iter().filter(|s| s.client_count() > 0).count();
    let shown: Vec<Arc<Session>> = sessions
        .iter()
        .filter(|s| only.is_none_or(|c| c == s.code()))
        .cloned()
        .collect();
    let clock = Clock {
        now: Instant::now(),
        wall: SystemTime::now(),
    };
    let clients: usize = shown.iter().map(|s| s.client_count()).sum();
    // About 1 KiB per client and 4 KiB per session: one allocation, no regrowth.
    let mut out = Vec::with_capacity(2048 + shown.len() * 4096 + clients * 1024);
    json_object!(&mut out;
        "timestamp" => unix(clock.wall),
        "service" => "PhantomLink",
        "version" => env!("CARGO_PKG_VERSION"),
        "metrics" => With(|out: &mut Vec<u8>| json_object!(out;
            "total_sessions" => sessions.len(),
            "active_sessions" => active,
            "total_connections" => registry.live_clients(),
            "connections_opened" => registry.connections_opened(),
            "uptime_seconds" => registry.uptime().as_secs_f64(),
            "dataset_bytes" => registry.table().heap_bytes(),
            "sessions" => With(|out: &mut Vec<u8>| {
                out.push(b'{');
                session_entries(out, &shown, clock, threads);
                out.push(b'}');
            }),
        )),
        "process" => Serde(&ProcessStats::read()),
    );
    out
}

/// One instant for every figure of a render.
#[derive(Clone, Copy)]
struct Clock {
    now: Instant,
    wall: SystemTime,
}

/// The `"code":{…}` entries of `sessions`, comma-separated, in order. With enough sessions
/// for `threads`, runs of [`SESSIONS_PER_RUN`] sessions are taken in turn by this thread and
/// `threads - 1` of the [`RenderPool`]'s helpers, each run written into its own buffer, and
/// the buffers appended in order — so the bytes are the serial render's. Taking runs in turn
/// rather than a fixed share each means a thread that is preempted (by the streaming threads,
/// or this machine's neighbours) leaves its next runs to the others instead of holding the
/// whole render up. Each run locks its sessions one at a time, as the serial render does.
fn session_entries(out: &mut Vec<u8>, sessions: &[Arc<Session>], clock: Clock, threads: usize) {
    let threads = threads.min(sessions.len() / SESSIONS_PER_THREAD).max(1);
    if threads == 1 {
        return write_sessions(out, sessions, clock);
    }
    let runs = Arc::new(Runs::new(sessions.to_vec()));
    let pool = RenderPool::global();
    let helpers: Vec<_> = (1..threads)
        .map(|_| {
            let runs = Arc::clone(&runs);
            pool.spawn(move || runs.write_until_done(clock))
        })
        .collect();
    runs.write_until_done(clock);
    for helper in helpers {
        helper.join();
    }
    for (i, run) in runs.written.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            run.get()
                .expect("every run is written before its taker ends"),
        );
    }
}

/// Sessions per run of a split JSON render: small enough that the threads end together,
/// large enough that taking a run costs nothing in comparison (a run of 4 sessions of 10
/// clients is about 30 KB of JSON).
const SESSIONS_PER_RUN: usize = 4;

/// The runs of a split JSON render: taken in turn by index, each written once.
struct Runs {
    sessions: Vec<Arc<Session>>,
    next: AtomicUsize,
    written: Vec<OnceLock<Vec<u8>>>,
}

impl Runs {
    fn new(sessions: Vec<Arc<Session>>) -> Self {
        let count = sessions.len().div_ceil(SESSIONS_PER_RUN);
        Runs {
            sessions,
            next: AtomicUsize::new(0),
            written: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Takes the next run not yet taken and writes it, until none is left.
    fn write_until_done(&self, clock: Clock) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            let Some(slot) = self.written.get(i) else {
                return;
            };
            let start = i * SESSIONS_PER_RUN;
            let run = &self.sessions[start..(start + SESSIONS_PER_RUN).min(self.sessions.len())];
            let clients: usize = run.iter().map(|s| s.client_count()).sum();
            let mut buf = Vec::with_capacity(run.len() * 4096 + clients * 1024);
            write_sessions(&mut buf, run, clock);
            let _ = slot.set(buf);
        }
    }
}

/// `"code":{…}` for each of `sessions`, comma-separated.
fn write_sessions(out: &mut Vec<u8>, sessions: &[Arc<Session>], clock: Clock) {
    for (i, session) in sessions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Read under the state lock, written after it is released.
        let rendered = {
            let state = session.state();
            session_json(session, &state, clock.now, clock.wall)
        };
        session.code().write_json(out);
        out.push(b':');
        rendered.write_json(out);
    }
}

impl WriteJson for WireFormat {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self {
            WireFormat::Json => b"\"json\"",
            WireFormat::MessagePack => b"\"msgpack\"",
        });
    }
}

// The structs below are the document's figures, read under a session's lock and written
// after it. In tests they also derive serde's `Serialize`, the reference that the
// hand-written form must match byte for byte (`written_json_is_serde_json`).

#[cfg_attr(test, derive(Serialize))]
struct ClientJson {
    id: u64,
    remote: SocketAddr,
    format: WireFormat,
    connected_at: f64,
    packets_sent: u64,
    dropped_packets: u64,
    bytes_sent: u64,
    bandwidth_bps: f64,
    network_latency_ms: LatencySummary,
    ring_wait_ms: LatencySummary,
    ring_high_water: usize,
    ring_capacity: usize,
    messages_received: u64,
    memory_bytes: usize,
    decoder: Option<DecoderJson>,
}

impl WriteJson for ClientJson {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "id" => self.id,
            "remote" => self.remote,
            "format" => self.format,
            "connected_at" => self.connected_at,
            "packets_sent" => self.packets_sent,
            "dropped_packets" => self.dropped_packets,
            "bytes_sent" => self.bytes_sent,
            "bandwidth_bps" => self.bandwidth_bps,
            "network_latency_ms" => self.network_latency_ms,
            "ring_wait_ms" => self.ring_wait_ms,
            "ring_high_water" => self.ring_high_water,
            "ring_capacity" => self.ring_capacity,
            "messages_received" => self.messages_received,
            "memory_bytes" => self.memory_bytes,
            "decoder" => self.decoder,
        );
    }
}

fn client_json(client: &ClientShared, now: SystemTime) -> ClientJson {
    let counters = &client.counters;
    let bytes = counters.bytes_sent.load(Relaxed);
    let connected = now
        .duration_since(client.connected_at)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-3);
    ClientJson {
        id: client.id,
        remote: client.remote,
        format: client.format,
        connected_at: unix(client.connected_at),
        packets_sent: counters.packets_sent.load(Relaxed),
        dropped_packets: counters.dropped_packets.load(Relaxed),
        bytes_sent: bytes,
        bandwidth_bps: bytes as f64 * 8.0 / connected,
        network_latency_ms: LatencySummary::of(&client.latency),
        ring_wait_ms: LatencySummary::of(&client.ring_wait),
        ring_high_water: counters.ring_high_water.load(Relaxed),
        ring_capacity: client.ring_capacity,
        messages_received: counters.messages_received.load(Relaxed),
        memory_bytes: client.heap_bytes(),
        decoder: client.decoder.get().map(|d| decoder_json(d)),
    }
}

#[cfg_attr(test, derive(Serialize))]
struct DecoderJson {
    round_trip_ms: LatencySummary,
    velocity_error: LatencySummary,
    position_error: LatencySummary,
    target_accuracy: Option<f64>,
    target_answers: u64,
    messages: u64,
    matched: u64,
    late: u64,
    unknown: u64,
    malformed: u64,
}

impl WriteJson for DecoderJson {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "round_trip_ms" => self.round_trip_ms,
            "velocity_error" => self.velocity_error,
            "position_error" => self.position_error,
            "target_accuracy" => self.target_accuracy,
            "target_answers" => self.target_answers,
            "messages" => self.messages,
            "matched" => self.matched,
            "late" => self.late,
            "unknown" => self.unknown,
            "malformed" => self.malformed,
        );
    }
}

fn decoder_json(d: &DecoderStats) -> DecoderJson {
    let total = d.target_total.load(Relaxed);
    DecoderJson {
        round_trip_ms: LatencySummary::of(&d.round_trip),
        velocity_error: LatencySummary::from_blocks(&d.velocity_error, 1e3),
        position_error: LatencySummary::from_blocks(&d.position_error, 1e3),
        target_accuracy: (total > 0).then(|| d.target_correct.load(Relaxed) as f64 / total as f64),
        target_answers: total,
        messages: d.messages.load(Relaxed),
        matched: d.matched.load(Relaxed),
        late: d.late.load(Relaxed),
        unknown: d.unknown.load(Relaxed),
        malformed: d.malformed.load(Relaxed),
    }
}

#[cfg_attr(test, derive(Serialize))]
struct SessionJson<'a> {
    packets_sent: u64,
    dropped_packets: u64,
    network_latency_ms: LatencySummary,
    timing_error_ms: LatencySummary,
    memory_usage_mb: f64,
    memory_bytes: usize,
    is_running: bool,
    is_paused: bool,
    connections: usize,
    connections_closed: u64,
    clients_stalled: u64,
    clients_protocol_error: u64,
    clients_message_too_big: u64,
    bytes_sent: u64,
    bandwidth_bps: f64,
    packets_generated: u64,
    sequence_number: u64,
    noise: NoiseConfig,
    frame_pool_misses: u64,
    schedule_resets: u64,
    timing_thread: TimingThreadJson,
    windows: WindowsJson,
    clients: Vec<ClientJson>,
    lsl: Option<LslJson<'a>>,
}

impl WriteJson for SessionJson<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "packets_sent" => self.packets_sent,
            "dropped_packets" => self.dropped_packets,
            "network_latency_ms" => self.network_latency_ms,
            "timing_error_ms" => self.timing_error_ms,
            "memory_usage_mb" => self.memory_usage_mb,
            "memory_bytes" => self.memory_bytes,
            "is_running" => self.is_running,
            "is_paused" => self.is_paused,
            "connections" => self.connections,
            "connections_closed" => self.connections_closed,
            "clients_stalled" => self.clients_stalled,
            "clients_protocol_error" => self.clients_protocol_error,
            "clients_message_too_big" => self.clients_message_too_big,
            "bytes_sent" => self.bytes_sent,
            "bandwidth_bps" => self.bandwidth_bps,
            "packets_generated" => self.packets_generated,
            "sequence_number" => self.sequence_number,
            "noise" => Serde(&self.noise),
            "frame_pool_misses" => self.frame_pool_misses,
            "schedule_resets" => self.schedule_resets,
            "timing_thread" => self.timing_thread,
            "windows" => self.windows,
            "clients" => self.clients,
            "lsl" => self.lsl,
        );
    }
}

#[cfg_attr(test, derive(Serialize))]
struct TimingThreadJson {
    core: i64,
    sched_fifo: bool,
}

impl WriteJson for TimingThreadJson {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out; "core" => self.core, "sched_fifo" => self.sched_fifo);
    }
}

/// The windows of [`WINDOWS`], by name.
struct WindowsJson([WindowJson; 3]);

#[cfg_attr(test, derive(Serialize))]
struct WindowJson {
    timing_error_ms: LatencySummary,
    network_latency_ms: LatencySummary,
}

impl WriteJson for WindowJson {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "timing_error_ms" => self.timing_error_ms,
            "network_latency_ms" => self.network_latency_ms,
        );
    }
}

impl WriteJson for WindowsJson {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, ((name, _), window)) in WINDOWS.iter().zip(&self.0).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            name.write_json(out);
            out.push(b':');
            window.write_json(out);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
impl Serialize for WindowsJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(WINDOWS.iter().map(|(name, _)| name).zip(&self.0))
    }
}

fn session_json<'a>(
    session: &'a Session,
    state: &SessionState,
    now: Instant,
    wall: SystemTime,
) -> SessionJson<'a> {
    let status = session.status();
    let totals = totals(state);
    let memory = session.heap_bytes(state);
    let age = session.age().as_secs_f64().max(1e-3);
    let lateness = state.lateness_windows.summaries(&status.lateness, now, 1e6);
    let latency = state.latency_windows.summaries(&status.latency, now, 1e6);
    let windows = WindowsJson(std::array::from_fn(|i| WindowJson {
        timing_error_ms: lateness[i],
        network_latency_ms: latency[i],
    }));
    SessionJson {
        packets_sent: totals.packets_sent,
        dropped_packets: totals.dropped,
        network_latency_ms: LatencySummary::of(&status.latency),
        timing_error_ms: LatencySummary::of(&status.lateness),
        memory_usage_mb: memory as f64 / (1024.0 * 1024.0),
        memory_bytes: memory,
        is_running: status.running.load(Relaxed) && status.started.load(Relaxed),
        is_paused: status.paused.load(Relaxed),
        connections: state.clients.len(),
        connections_closed: state.departed.clients,
        clients_stalled: status.clients_stalled.load(Relaxed),
        clients_protocol_error: status.clients_protocol_error.load(Relaxed),
        clients_message_too_big: status.clients_message_too_big.load(Relaxed),
        bytes_sent: totals.bytes,
        bandwidth_bps: totals.bytes as f64 * 8.0 / age,
        packets_generated: status.packets_generated.load(Relaxed),
        sequence_number: status.sequence.load(Relaxed),
        noise: state.noise,
        frame_pool_misses: status.frame_pool_misses.load(Relaxed),
        schedule_resets: status.schedule_resets.load(Relaxed),
        timing_thread: TimingThreadJson {
            core: status.core.load(Relaxed),
            sched_fifo: status.fifo.load(Relaxed),
        },
        windows,
        clients: state.clients.iter().map(|c| client_json(c, wall)).collect(),
        lsl: lsl_json(session),
    }
}

/// The session's LSL outlets (`null` without them): push latency (tick deadline → the
/// three pushes returned), ticks pushed, ticks dropped because the LSL thread fell behind.
#[cfg_attr(test, derive(Serialize))]
struct LslJson<'a> {
    streams: &'a [String],
    push_latency_ms: LatencySummary,
    samples: u64,
    dropped: u64,
    errors: u64,
    attached: bool,
}

impl WriteJson for LslJson<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        json_object!(out;
            "streams" => self.streams,
            "push_latency_ms" => self.push_latency_ms,
            "samples" => self.samples,
            "dropped" => self.dropped,
            "errors" => self.errors,
            "attached" => self.attached,
        );
    }
}

fn lsl_json(session: &Session) -> Option<LslJson<'_>> {
    let tap = session.tap().filter(|t| t.kind == "lsl")?;
    let status = session.status();
    Some(LslJson {
        streams: &tap.streams,
        push_latency_ms: LatencySummary::of(&tap.latency),
        samples: tap.samples.load(Relaxed),
        dropped: status.tap_dropped.load(Relaxed),
        errors: tap.errors.load(Relaxed),
        attached: status.tap_attached.load(Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report::testing::{registry, same_as_serial};
    use std::time::Duration;

    fn written<T: WriteJson>(value: &T) -> String {
        let mut out = Vec::new();
        value.write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn written_json_is_serde_json() {
        let registry = registry(12, 5);
        // Decoder figures for some clients, so that `decoder` is an object for them.
        for session in registry.sessions() {
            for (i, client) in session.state().clients.iter().enumerate() {
                if i % 2 == 0 {
                    let stats = client.decoder.get_or_init(Box::default);
                    stats.round_trip.record(1_234_567 + i as u64);
                    stats.velocity_error.record(42_000);
                    stats.target_total.store(3, Relaxed);
                    stats.target_correct.store(2, Relaxed);
                    stats.matched.store(17, Relaxed);
                }
            }
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut clients = 0;
        for session in registry.sessions() {
            let state = session.state();
            let rendered = session_json(&session, &state, now, wall);
            clients += rendered.clients.len();
            assert_eq!(
                written(&rendered),
                serde_json::to_string(&rendered).unwrap(),
                "session {}",
                session.code()
            );
        }
        assert!(clients > 10, "{clients} clients");
        let streams = ["a".to_string(), "b \"quoted\"".to_string()];
        let lsl = LslJson {
            streams: &streams,
            push_latency_ms: LatencySummary {
                mean: 0.1234567,
                std: 1e-9,
                max: 7.0,
                min: 0.000001,
                p50: 0.5,
                p90: 1.25,
                p99: 3.0,
                p999: 6.5,
                count: 99,
            },
            samples: u64::MAX,
            dropped: 0,
            errors: 1,
            attached: false,
        };
        assert_eq!(written(&lsl), serde_json::to_string(&lsl).unwrap());
        assert_eq!(
            written(&Some(&lsl)),
            serde_json::to_string(&Some(&lsl)).unwrap()
        );
        registry.shut_down(Instant::now() + Duration::from_secs(2));
    }

    fn entries(sessions: &[Arc<Session>], clock: Clock, threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        session_entries(&mut out, sessions, clock, threads);
        out
    }

    #[test]
    fn parallel_render_is_the_serial_render() {
        let registry = registry(37, 6);
        let sessions = registry.sessions();
        let clock = Clock {
            now: Instant::now(),
            wall: SystemTime::now(),
        };
        let serial = entries(&sessions, clock, 1);
        // The entries make a valid object, every session in order.
        let object: serde_json::Value =
            serde_json::from_slice(&[b"{", &serial[..], b"}"].concat()).unwrap();
        let codes: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(codes.len(), 37);
        assert!(codes.windows(2).all(|w| w[0] < w[1]));
        same_as_serial(&[2, 3, 4, 8], |threads| entries(&sessions, clock, threads));
        // The whole document, rendered serially and in parallel, is the same JSON apart
        // from the figures that move with time (timestamp, uptime, process).
        let document = |threads| -> serde_json::Value {
            let mut v: serde_json::Value =
                serde_json::from_slice(&json_with(&registry, None, threads)).unwrap();
            v["timestamp"] = 0.into();
            v["metrics"]["uptime_seconds"] = 0.into();
            v["process"] = 0.into();
            v
        };
        assert_eq!(document(1), document(4));
        let only = json_with(&registry, Some("render-03"), 4);
        let only: serde_json::Value = serde_json::from_slice(&only).unwrap();
        assert_eq!(only["metrics"]["total_sessions"], 37);
        assert_eq!(
            only["metrics"]["sessions"].as_object().unwrap().len(),
            1,
            "{only}"
        );
        registry.shut_down(Instant::now() + Duration::from_secs(2));
    }
}
