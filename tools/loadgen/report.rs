//! The report: figures over all clients, per client, the server's resource use, its own
//! `/metrics` cross-checked against what the clients received and, with `--metrics-every`,
//! how fast `/metrics` answered under the load; as a table or as JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::client::{hist, Client, Hist, Overall, State, END_OF_RUN};
use crate::poll::{FormatTimes, PollResult};
use crate::procfs::{thread_delta, GroupCpu, ProcSample, ThreadTimes};
use crate::Args;

/// Server samples taken along the run.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerSamples {
    /// Before anything.
    pub before: Option<ProcSample>,
    /// After pre-creating sessions.
    pub after_sessions: Option<ProcSample>,
    /// After every client connected.
    pub after_connect: Option<ProcSample>,
    /// At the end, clients still connected.
    pub end: Option<ProcSample>,
    /// Largest RSS seen.
    pub rss_max: u64,
    /// Most threads seen.
    pub threads_max: u64,
}

/// Everything the run collected.
pub struct Inputs<'a> {
    pub args: &'a Args,
    pub started_unix: f64,
    pub server_ready_ms: f64,
    pub codes: &'a [String],
    pub clients: &'a [Client],
    pub overall: Vec<Overall>,
    pub connect_seconds: f64,
    pub window_seconds: f64,
    pub own_cpu: Duration,
    pub server_start: Option<ProcSample>,
    pub server_end: Option<ProcSample>,
    pub threads: Option<(ThreadTimes, ThreadTimes)>,
    pub samples: ServerSamples,
    pub metrics: Result<Value, String>,
    pub metrics_poll: Option<PollResult>,
    pub pause_failures: usize,
    pub deleted: usize,
    pub elapsed: Duration,
}

/// Percentiles of a distribution, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Micros {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Micros {
    fn of(hist: &Hist) -> Self {
        if hist.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            count: hist.len(),
            mean: hist.mean() / 1e3,
            p50: us(hist.value_at_quantile(0.50)),
            p90: us(hist.value_at_quantile(0.90)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        }
    }
}

/// Min, median and max of a set of values.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        Self {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientTotals {
    pub requested: u64,
    pub connected: usize,
    pub failed: usize,
    /// Closed before the end of the run (by the server or an error).
    pub closed_early: usize,
    pub first_failure: Option<String>,
    pub handshake_ms: Spread,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Packets {
    /// Data packets received inside the window, all clients.
    pub window: u64,
    /// Per second, all clients.
    pub rate_total_hz: f64,
    /// Per second per client (connected clients).
    pub rate_per_client_hz: Spread,
    /// Packets missing in sequence inside the window, all clients.
    pub gaps_window: u64,
    /// Packets missing in sequence since connect, all clients.
    pub gaps_total: u64,
    /// Clients with at least one gap.
    pub clients_with_gaps: usize,
    pub out_of_order: u64,
    /// Packets fully decoded as a check, and failed checks.
    pub verified: u64,
    pub verify_failures: u64,
    pub first_verify_error: Option<String>,
    pub fast_path_fallbacks: u64,
    pub negative_latency: u64,
    /// Reads that returned more than one data frame of a client (they share one stamp).
    pub multi_frame_reads: u64,
    /// Data packets received since connect (what /metrics is checked against).
    pub since_connect: u64,
    pub bytes_window: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerReport {
    pub pid: u32,
    /// CPU over the window, % of one core.
    pub cpu_percent: f64,
    pub cpu_seconds: f64,
    /// CPU per data packet delivered in the window, µs.
    pub cpu_us_per_packet: f64,
    pub rss_before: u64,
    pub rss_after_sessions: Option<u64>,
    pub rss_after_connect: u64,
    pub rss_end: u64,
    pub rss_max: u64,
    /// (after_sessions − before) / sessions, when pre-created.
    pub rss_per_idle_session: Option<f64>,
    /// (after_connect − after_sessions or before) / clients.
    pub rss_per_client: Option<f64>,
    pub threads_max: u64,
    /// CPU per thread group in the window.
    pub thread_groups: BTreeMap<&'static str, GroupReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupReport {
    pub threads: usize,
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    pub us_per_packet: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadgenReport {
    pub threads: u64,
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    pub us_per_packet: f64,
}

/// The server's own view, from `/metrics`, of the run's sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsCheck {
    pub error: Option<String>,
    pub sessions_found: usize,
    pub sessions_sched_fifo: usize,
    pub pause_failures: usize,
    /// Σ packets_sent of the run's sessions.
    pub server_packets_sent: u64,
    /// Σ data packets the clients received since connect.
    pub clients_received: u64,
    /// Σ dropped_packets of the run's sessions.
    pub server_dropped: u64,
    /// Σ sequence gaps the clients saw since connect.
    pub clients_gaps: u64,
    /// Clients whose server-side packets_sent differs from what they received.
    pub clients_mismatched: usize,
    /// Clients the server does not list.
    pub clients_missing: usize,
    /// Tick lateness (server's histogram since session start), ms: spread over sessions.
    pub timing_error_ms: BTreeMap<&'static str, Spread>,
    /// Tick → socket write (server's histogram), ms: spread over sessions.
    pub network_latency_ms: BTreeMap<&'static str, Spread>,
    /// Memory the server accounts per session, bytes.
    pub memory_bytes_per_session: Spread,
    pub frame_pool_misses: u64,
    pub schedule_resets: u64,
}

/// Closed loop (`--closed-loop`): the answers the clients wrote and what the server made of
/// them, from the `decoder` section of each client in `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClosedLoopReport {
    /// Answers written, all clients, since connect.
    pub answers_sent: u64,
    /// Answers skipped because the socket would block, all clients.
    pub answers_skipped: u64,
    /// Clients of the run with a `decoder` section in `/metrics`.
    pub clients_reporting: usize,
    /// Packet written → its answer read by the server (server's histogram), ms: p50 of each
    /// client, spread over clients.
    pub round_trip_ms_p50: Spread,
    /// The same for p99.
    pub round_trip_ms_p99: Spread,
    /// The same for the largest round trip.
    pub round_trip_ms_max: Spread,
    /// Answers the server matched to a packet it still remembered, all clients.
    pub matched: u64,
    /// Answers to packets too old for the server to remember.
    pub late: u64,
    /// Answers to sequence numbers the server never sent to that client.
    pub unknown: u64,
    /// Messages the server could not read as a decoder answer.
    pub malformed: u64,
    /// answers_sent − (matched + late), when positive: answers the server did not count.
    pub unaccounted: u64,
    /// Answers that may still be in flight when /metrics is read (2 per client); more
    /// unaccounted answers than this is flagged.
    pub tolerance: u64,
    /// Unaccounted answers beyond the tolerance.
    pub flagged: bool,
}

/// `/metrics` timed while the load ran (`--metrics-every`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsPollReport {
    /// Time between requests, ms.
    pub interval_ms: u64,
    /// `GET /metrics`, `Accept: application/json`.
    pub json: PollFormatReport,
    /// `GET /metrics?format=prometheus`.
    pub prometheus: PollFormatReport,
    /// Non-200 answers and I/O errors, both formats.
    pub errors: u64,
    pub first_error: Option<String>,
    /// The poller stopped at its request cap before the window ended.
    pub capped: bool,
}

/// One format's requests while loaded; times are of the 200 answers only.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollFormatReport {
    pub requests: u64,
    pub ok: u64,
    pub non_200: u64,
    pub io_errors: u64,
    /// Just before connecting → body read to its end (what a scraper waits), µs.
    pub response_us: Micros,
    /// Request written → first byte of the answer, µs.
    pub first_byte_us: Micros,
    /// Body bytes of the 200 answers.
    pub body_bytes_mean: f64,
    pub body_bytes_max: u64,
}

impl PollFormatReport {
    fn of(t: &FormatTimes) -> Self {
        Self {
            requests: t.requests,
            ok: t.ok,
            non_200: t.non_200,
            io_errors: t.io_errors,
            response_us: Micros::of(&t.total),
            first_byte_us: Micros::of(&t.first_byte),
            body_bytes_mean: t.bytes_sum as f64 / t.ok.max(1) as f64,
            body_bytes_max: t.bytes_max,
        }
    }
}

impl MetricsPollReport {
    fn of(p: &PollResult) -> Self {
        let errors = |t: &FormatTimes| t.non_200 + t.io_errors;
        Self {
            interval_ms: p.interval.as_millis() as u64,
            json: PollFormatReport::of(&p.json),
            prometheus: PollFormatReport::of(&p.prometheus),
            errors: errors(&p.json) + errors(&p.prometheus),
            first_error: p.first_error.clone(),
            capped: p.capped,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    pub id: usize,
    pub session: String,
    pub format: crate::decode::Format,
    pub local: Option<String>,
    pub state: String,
    pub packets: u64,
    pub window_packets: u64,
    pub rate_hz: f64,
    pub gaps: u64,
    pub window_gaps: u64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    pub jitter_us_mean: f64,
    pub jitter_us_max: f64,
    pub server_packets_sent: Option<u64>,
    pub server_dropped: Option<u64>,
    pub handshake_ms: f64,
    pub answers_sent: u64,
    pub answers_skipped: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Args,
    pub started_unix: f64,
    pub elapsed_seconds: f64,
    /// Loadgen start → server answering /health.
    pub server_ready_ms: f64,
    /// Unix time of the first data packet any client received.
    pub first_packet_unix: Option<f64>,
    /// Loadgen start → first data packet.
    pub first_packet_ms: Option<f64>,
    pub connect_seconds: f64,
    pub window_seconds: f64,
    pub clients: ClientTotals,
    pub packets: Packets,
    /// Tick → receive: kernel receive stamp (wall clock) − packet timestamp, µs.
    pub latency_us: Micros,
    /// Tick → the load generator's read returning, µs (includes its own wakeup and --coalesce-us).
    pub latency_read_us: Micros,
    /// |inter-arrival − 25 ms| between consecutive packets of a client, µs.
    pub jitter_us: Micros,
    pub server: Option<ServerReport>,
    pub loadgen: LoadgenReport,
    pub metrics: MetricsCheck,
    /// Only with `--metrics-every`.
    pub metrics_poll: Option<MetricsPollReport>,
    /// Only with `--closed-loop`.
    pub closed_loop: Option<ClosedLoopReport>,
    pub sessions_deleted: usize,
    pub per_client: Vec<ClientRow>,
}

/// Assembles the report.
pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        args,
        clients,
        window_seconds,
        ..
    } = inputs;
    let mut latency = hist();
    let mut latency_user = hist();
    let mut jitter = hist();
    for o in &inputs.overall {
        let _ = latency.add(&o.latency);
        let _ = latency_user.add(&o.latency_user);
        let _ = jitter.add(&o.jitter);
    }

    let connected: Vec<&Client> = clients
        .iter()
        .filter(|c| !matches!(c.state, State::Failed(_)))
        .collect();
    let totals = ClientTotals {
        requested: args.sessions * args.clients,
        connected: connected.len(),
        failed: clients.len() - connected.len(),
        closed_early: connected
            .iter()
            .filter(|c| matches!(&c.state, State::Closed(why) if why != END_OF_RUN))
            .count(),
        first_failure: clients.iter().find_map(|c| match &c.state {
            State::Failed(e) => Some(e.clone()),
            State::Closed(e) if e != END_OF_RUN => Some(e.clone()),
            _ => None,
        }),
        handshake_ms: Spread::of(
            connected
                .iter()
                .map(|c| c.connect_time.as_secs_f64() * 1e3)
                .collect(),
        ),
    };

    let sum = |f: fn(&Client) -> u64| connected.iter().map(|c| f(c)).sum::<u64>();
    let window = sum(|c| c.stats.window_packets);
    let packets = Packets {
        window,
        rate_total_hz: window as f64 / window_seconds.max(1e-9),
        rate_per_client_hz: Spread::of(
            connected
                .iter()
                .map(|c| c.stats.window_packets as f64 / window_seconds.max(1e-9))
                .collect(),
        ),
        gaps_window: sum(|c| c.stats.window_gaps),
        gaps_total: sum(|c| c.stats.gaps),
        clients_with_gaps: connected.iter().filter(|c| c.stats.gaps > 0).count(),
        out_of_order: sum(|c| c.stats.out_of_order),
        verified: sum(|c| c.stats.verified),
        verify_failures: sum(|c| c.stats.verify_failures),
        first_verify_error: connected.iter().find_map(|c| c.stats.verify_error.clone()),
        fast_path_fallbacks: sum(|c| c.stats.fallbacks),
        negative_latency: sum(|c| c.stats.negative_latency),
        multi_frame_reads: sum(|c| c.stats.multi_frame_reads),
        since_connect: sum(|c| c.stats.packets),
        bytes_window: sum(|c| c.stats.window_bytes),
    };

    let first_packet_unix = connected
        .iter()
        .filter_map(|c| c.stats.first_packet_unix)
        .min_by(f64::total_cmp);

    let (metrics, per_client_server) = check_metrics(&inputs, &connected);

    let closed_loop = args
        .closed_loop
        .then(|| closed_loop_report(&inputs, &connected));

    let per_packet = |seconds: f64| seconds * 1e6 / (window.max(1) as f64);
    let server = args.server_pid.map(|pid| {
        let (cpu_seconds, rss_before) = match (inputs.server_start, inputs.server_end) {
            (Some(a), Some(b)) => (b.cpu_seconds - a.cpu_seconds, 0),
            _ => (0.0, 0),
        };
        let s = &inputs.samples;
        let rss = |p: Option<ProcSample>| p.map_or(0, |p| p.rss_bytes);
        let before = rss(s.before).max(rss_before);
        let base_for_clients = s.after_sessions.map_or(before, |p| p.rss_bytes);
        let thread_groups = inputs
            .threads
            .as_ref()
            .map(|(a, b)| thread_delta(a, b))
            .unwrap_or_default()
            .into_iter()
            .map(
                |(
                    name,
                    GroupCpu {
                        threads,
                        cpu_seconds,
                    },
                )| {
                    (
                        name,
                        GroupReport {
                            threads,
                            cpu_seconds,
                            cpu_percent: cpu_seconds / window_seconds.max(1e-9) * 100.0,
                            us_per_packet: per_packet(cpu_seconds),
                        },
                    )
                },
            )
            .collect();
        ServerReport {
            pid,
            cpu_percent: cpu_seconds / window_seconds.max(1e-9) * 100.0,
            cpu_seconds,
            cpu_us_per_packet: per_packet(cpu_seconds),
            rss_before: before,
            rss_after_sessions: s.after_sessions.map(|p| p.rss_bytes),
            rss_after_connect: rss(s.after_connect),
            rss_end: rss(s.end),
            rss_max: s.rss_max,
            rss_per_idle_session: s
                .after_sessions
                .map(|p| (p.rss_bytes as f64 - before as f64) / args.sessions as f64),
            rss_per_client: s
                .after_connect
                .filter(|_| !connected.is_empty())
                .map(|p| (p.rss_bytes as f64 - base_for_clients as f64) / connected.len() as f64),
            threads_max: s.threads_max,
            thread_groups,
        }
    });

    let own = inputs.own_cpu.as_secs_f64();
    let loadgen = LoadgenReport {
        threads: args.threads,
        cpu_seconds: own,
        cpu_percent: own / window_seconds.max(1e-9) * 100.0,
        us_per_packet: per_packet(own),
    };

    let per_client = clients
        .iter()
        .map(|c| {
            let s = &c.stats;
            let us = |q: f64| {
                if s.latency.is_empty() {
                    0.0
                } else {
                    s.latency.value_at_quantile(q) as f64 / 1e3
                }
            };
            let server = c
                .local
                .and_then(|addr| per_client_server.get(&addr.to_string()).copied());
            ClientRow {
                id: c.id,
                session: inputs.codes[c.session].clone(),
                format: c.format,
                local: c.local.map(|a| a.to_string()),
                state: match &c.state {
                    State::Open => "open".into(),
                    State::Closed(why) | State::Failed(why) => why.clone(),
                },
                packets: s.packets,
                window_packets: s.window_packets,
                rate_hz: s.window_packets as f64 / window_seconds.max(1e-9),
                gaps: s.gaps,
                window_gaps: s.window_gaps,
                latency_us_p50: us(0.5),
                latency_us_p99: us(0.99),
                latency_us_max: if s.latency.is_empty() {
                    0.0
                } else {
                    s.latency.max() as f64 / 1e3
                },
                jitter_us_mean: s.jitter_sum_ns as f64 / s.jitter_count.max(1) as f64 / 1e3,
                jitter_us_max: s.jitter_max_ns as f64 / 1e3,
                server_packets_sent: server.map(|(sent, _)| sent),
                server_dropped: server.map(|(_, dropped)| dropped),
                handshake_ms: c.connect_time.as_secs_f64() * 1e3,
                answers_sent: s.answers_sent,
                answers_skipped: s.answers_skipped,
            }
        })
        .collect();

    Report {
        config: args.clone(),
        started_unix: inputs.started_unix,
        elapsed_seconds: inputs.elapsed.as_secs_f64(),
        server_ready_ms: inputs.server_ready_ms,
        first_packet_unix,
        first_packet_ms: first_packet_unix.map(|t| (t - inputs.started_unix) * 1e3),
        connect_seconds: inputs.connect_seconds,
        window_seconds,
        clients: totals,
        packets,
        latency_us: Micros::of(&latency),
        latency_read_us: Micros::of(&latency_user),
        jitter_us: Micros::of(&jitter),
        server,
        loadgen,
        metrics,
        metrics_poll: inputs.metrics_poll.as_ref().map(MetricsPollReport::of),
        closed_loop,
        sessions_deleted: inputs.deleted,
        per_client,
    }
}

/// Compares the server's `/metrics` with the clients; also returns per-client server counts
/// keyed by the client's address.
fn check_metrics(
    inputs: &Inputs<'_>,
    connected: &[&Client],
) -> (MetricsCheck, HashMap<String, (u64, u64)>) {
    let mut check = MetricsCheck {
        pause_failures: inputs.pause_failures,
        clients_received: connected.iter().map(|c| c.stats.packets).sum(),
        clients_gaps: connected.iter().map(|c| c.stats.gaps).sum(),
        ..MetricsCheck::default()
    };
    let mut per_client = HashMap::new();
    let doc = match &inputs.metrics {
        Ok(doc) => doc,
        Err(e) => {
            check.error = Some(e.clone());
            return (check, per_client);
        }
    };
    let sessions = &doc["metrics"]["sessions"];
    let mut timing: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut network: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut memory = Vec::new();
    for code in inputs.codes {
        let s = &sessions[code.as_str()];
        if s.is_null() {
            continue;
        }
        check.sessions_found += 1;
        check.sessions_sched_fifo += usize::from(s["timing_thread"]["sched_fifo"] == true);
        check.server_packets_sent += s["packets_sent"].as_u64().unwrap_or(0);
        check.server_dropped += s["dropped_packets"].as_u64().unwrap_or(0);
        check.frame_pool_misses += s["frame_pool_misses"].as_u64().unwrap_or(0);
        check.schedule_resets += s["schedule_resets"].as_u64().unwrap_or(0);
        memory.push(s["memory_bytes"].as_f64().unwrap_or(0.0));
        for key in ["p50", "p90", "p99", "p999", "max"] {
            if let Some(v) = s["timing_error_ms"][key].as_f64() {
                timing.entry(key).or_default().push(v);
            }
            if let Some(v) = s["network_latency_ms"][key].as_f64() {
                network.entry(key).or_default().push(v);
            }
        }
        for c in s["clients"].as_array().into_iter().flatten() {
            if let Some(remote) = c["remote"].as_str() {
                per_client.insert(
                    remote.to_string(),
                    (
                        c["packets_sent"].as_u64().unwrap_or(0),
                        c["dropped_packets"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
    }
    for client in connected {
        match client.local.and_then(|a| per_client.get(&a.to_string())) {
            Some((sent, _)) if *sent != client.stats.packets => check.clients_mismatched += 1,
            Some(_) => {}
            None => check.clients_missing += 1,
        }
    }
    check.timing_error_ms = timing
        .into_iter()
        .map(|(k, v)| (k, Spread::of(v)))
        .collect();
    check.network_latency_ms = network
        .into_iter()
        .map(|(k, v)| (k, Spread::of(v)))
        .collect();
    check.memory_bytes_per_session = Spread::of(memory);
    (check, per_client)
}

/// Sums the clients' answers and reads the server's `decoder` section of each of the run's
/// clients (matched by address) from `/metrics`.
fn closed_loop_report(inputs: &Inputs<'_>, connected: &[&Client]) -> ClosedLoopReport {
    let mut report = ClosedLoopReport {
        answers_sent: connected.iter().map(|c| c.stats.answers_sent).sum(),
        answers_skipped: connected.iter().map(|c| c.stats.answers_skipped).sum(),
        tolerance: 2 * connected.len() as u64,
        ..ClosedLoopReport::default()
    };
    let ours: std::collections::HashSet<String> = connected
        .iter()
        .filter_map(|c| c.local.map(|a| a.to_string()))
        .collect();
    let (mut p50, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(doc) = &inputs.metrics {
        let sessions = &doc["metrics"]["sessions"];
        for code in inputs.codes {
            for c in sessions[code.as_str()]["clients"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let d = &c["decoder"];
                if !d.is_object() || !c["remote"].as_str().is_some_and(|r| ours.contains(r)) {
                    continue;
                }
                report.clients_reporting += 1;
                let count = |key: &str| d[key].as_u64().unwrap_or(0);
                report.matched += count("matched");
                report.late += count("late");
                report.unknown += count("unknown");
                report.malformed += count("malformed");
                let rt = &d["round_trip_ms"];
                // A client without a matched answer has an empty histogram: leave it out.
                if rt["count"].as_u64().unwrap_or(0) > 0 {
                    p50.push(rt["p50"].as_f64().unwrap_or(0.0));
                    p99.push(rt["p99"].as_f64().unwrap_or(0.0));
                    max.push(rt["max"].as_f64().unwrap_or(0.0));
                }
            }
        }
    }
    report.round_trip_ms_p50 = Spread::of(p50);
    report.round_trip_ms_p99 = Spread::of(p99);
    report.round_trip_ms_max = Spread::of(max);
    report.unaccounted = report
        .answers_sent
        .saturating_sub(report.matched + report.late);
    report.flagged = report.unaccounted > report.tolerance;
    report
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

impl Report {
    /// The human table.
    pub fn render(&self, per_client: bool) -> String {
        let mut o = String::new();
        let c = &self.config;
        let _ = writeln!(
            o,
            "PhantomLink load: {} sessions x {} clients ({:?}) against {}",
            c.sessions, c.clients, c.format, c.url
        );
        let _ = writeln!(
            o,
            "  connected {}/{} in {:.2} s (handshake median {:.1} ms, max {:.1} ms), failed {}, closed early {}",
            self.clients.connected,
            self.clients.requested,
            self.connect_seconds,
            self.clients.handshake_ms.median,
            self.clients.handshake_ms.max,
            self.clients.failed,
            self.clients.closed_early
        );
        if let Some(why) = &self.clients.first_failure {
            let _ = writeln!(o, "  first failure: {why}");
        }
        if let Some(ms) = self.first_packet_ms {
            let _ = writeln!(
                o,
                "  first data packet {ms:.1} ms after loadgen start (server answered /health after {:.1} ms)",
                self.server_ready_ms
            );
        }
        let p = &self.packets;
        let _ = writeln!(o, "\nwindow {:.2} s", self.window_seconds);
        let _ = writeln!(
            o,
            "  {:<28} {} ({:.1}/s total; per client min {:.2} median {:.2} max {:.2} Hz)",
            "packets received",
            p.window,
            p.rate_total_hz,
            p.rate_per_client_hz.min,
            p.rate_per_client_hz.median,
            p.rate_per_client_hz.max
        );
        let _ = writeln!(
            o,
            "  {:<28} {} in window, {} since connect ({} clients), out of order {}",
            "sequence gaps", p.gaps_window, p.gaps_total, p.clients_with_gaps, p.out_of_order
        );
        let _ = writeln!(
            o,
            "  {:<28} {} checked, {} failed{}; fast-path fallbacks {}; multi-frame reads {}",
            "full decode checks",
            p.verified,
            p.verify_failures,
            p.first_verify_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            p.fast_path_fallbacks,
            p.multi_frame_reads
        );
        let _ = writeln!(
            o,
            "\n  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "µs", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, m) in [
            ("tick→receive latency", &self.latency_us),
            ("tick→loadgen read", &self.latency_read_us),
            ("|inter-arrival − 25 ms|", &self.jitter_us),
        ] {
            let _ = writeln!(
                o,
                "  {:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                name, m.p50, m.p90, m.p99, m.p999, m.max, m.mean
            );
        }
        let m = &self.metrics;
        let _ = writeln!(
            o,
            "\nserver /metrics ({} sessions found, {} SCHED_FIFO)",
            m.sessions_found, m.sessions_sched_fifo
        );
        if let Some(e) = &m.error {
            let _ = writeln!(o, "  error: {e}");
        }
        let _ = writeln!(
            o,
            "  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9}   (median / max over sessions)",
            "ms", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, map) in [
            ("tick lateness", &m.timing_error_ms),
            ("tick→socket (server)", &m.network_latency_ms),
        ] {
            let cell = |k: &str| {
                map.get(k)
                    .map(|s| format!("{:.4}/{:.4}", s.median, s.max))
                    .unwrap_or_default()
            };
            let _ = writeln!(
                o,
                "  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                cell("p50"),
                cell("p90"),
                cell("p99"),
                cell("p999"),
                cell("max")
            );
        }
        let _ = writeln!(
            o,
            "  {:<28} server sent {} / clients received {} ({} clients mismatched, {} missing)",
            "cross-check packets",
            m.server_packets_sent,
            m.clients_received,
            m.clients_mismatched,
            m.clients_missing
        );
        let _ = writeln!(
            o,
            "  {:<28} server dropped {} / clients' gaps {}; frame pool misses {}, schedule resets {}, pause failures {}",
            "cross-check drops", m.server_dropped, m.clients_gaps, m.frame_pool_misses, m.schedule_resets, m.pause_failures
        );
        let _ = writeln!(
            o,
            "  {:<28} median {} max {}",
            "memory per session (server)",
            kib(m.memory_bytes_per_session.median),
            kib(m.memory_bytes_per_session.max)
        );
        if let Some(mp) = &self.metrics_poll {
            let _ = writeln!(
                o,
                "\n/metrics while loaded (GET every {} ms, fresh connection each, JSON and Prometheus in turn; {} errors{})",
                mp.interval_ms,
                mp.errors,
                if mp.capped { "; stopped at the request cap" } else { "" }
            );
            let _ = writeln!(
                o,
                "  {:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
                "ms", "requests", "p50", "p90", "p99", "max", "mean", "body (mean)"
            );
            for (name, f) in [("json", &mp.json), ("prometheus", &mp.prometheus)] {
                for (what, m, body) in [
                    (
                        "",
                        &f.response_us,
                        format!(" {:>11}", kib(f.body_bytes_mean)),
                    ),
                    (", first byte", &f.first_byte_us, String::new()),
                ] {
                    let ms = |us: f64| us / 1e3;
                    let _ = writeln!(
                        o,
                        "  {:<28} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}{body}",
                        format!("{name}{what}"),
                        f.requests,
                        ms(m.p50),
                        ms(m.p90),
                        ms(m.p99),
                        ms(m.max),
                        ms(m.mean),
                    );
                }
            }
            if mp.errors > 0 || mp.first_error.is_some() {
                let _ = writeln!(
                    o,
                    "  {:<28} json non-200 {} I/O {}; prometheus non-200 {} I/O {}{}",
                    "errors",
                    mp.json.non_200,
                    mp.json.io_errors,
                    mp.prometheus.non_200,
                    mp.prometheus.io_errors,
                    mp.first_error
                        .as_ref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(cl) = &self.closed_loop {
            let _ = writeln!(
                o,
                "\nclosed loop ({} clients reported by the server)",
                cl.clients_reporting
            );
            let _ = writeln!(
                o,
                "  {:<28} sent {} / skipped {} (socket full)",
                "answers", cl.answers_sent, cl.answers_skipped
            );
            let _ = writeln!(
                o,
                "  {:<28} p50 {:.3}/{:.3}  p99 {:.3}/{:.3}  max {:.3}/{:.3}   (median / max over clients)",
                "round trip ms (server)",
                cl.round_trip_ms_p50.median,
                cl.round_trip_ms_p50.max,
                cl.round_trip_ms_p99.median,
                cl.round_trip_ms_p99.max,
                cl.round_trip_ms_max.median,
                cl.round_trip_ms_max.max
            );
            let _ = writeln!(
                o,
                "  {:<28} matched {}, late {}, unknown {}, malformed {}",
                "server counted", cl.matched, cl.late, cl.unknown, cl.malformed
            );
            let _ = writeln!(
                o,
                "  {:<28} {} answers sent but neither matched nor late (tolerance {}){}",
                "cross-check answers",
                cl.unaccounted,
                cl.tolerance,
                if cl.flagged { "  MISMATCH" } else { "" }
            );
        }
        if let Some(s) = &self.server {
            let _ = writeln!(o, "\nserver process {} (from /proc)", s.pid);
            let _ = writeln!(
                o,
                "  {:<28} {:.1} % of a core ({:.2} s), {:.2} µs per delivered packet",
                "CPU in window", s.cpu_percent, s.cpu_seconds, s.cpu_us_per_packet
            );
            let _ = writeln!(
                o,
                "  {:<28} before {} | after sessions {} | after connect {} | end {} | max {}; threads max {}",
                "RSS",
                mib(s.rss_before as f64),
                s.rss_after_sessions.map(|b| mib(b as f64)).unwrap_or_else(|| "-".into()),
                mib(s.rss_after_connect as f64),
                mib(s.rss_end as f64),
                mib(s.rss_max as f64),
                s.threads_max
            );
            if let Some(per) = s.rss_per_idle_session {
                let _ = writeln!(o, "  {:<28} {}", "RSS per idle session", kib(per));
            }
            if let Some(per) = s.rss_per_client {
                let _ = writeln!(o, "  {:<28} {}", "RSS per client", kib(per));
            }
            if !s.thread_groups.is_empty() {
                let _ = writeln!(
                    o,
                    "  {:<28} {:>8} {:>10} {:>8} {:>12}",
                    "threads (CPU in window)", "count", "CPU s", "%", "µs/packet"
                );
                for (name, g) in &s.thread_groups {
                    let _ = writeln!(
                        o,
                        "  {:<28} {:>8} {:>10.3} {:>8.1} {:>12.2}",
                        name, g.threads, g.cpu_seconds, g.cpu_percent, g.us_per_packet
                    );
                }
            }
        }
        let l = &self.loadgen;
        let _ = writeln!(
            o,
            "\nloadgen: {} worker threads, {:.1} % of a core ({:.2} s), {:.2} µs per packet",
            l.threads, l.cpu_percent, l.cpu_seconds, l.us_per_packet
        );
        if per_client {
            let _ = writeln!(
                o,
                "\n{:>5} {:<16} {:<7} {:>8} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8}  state",
                "id",
                "session",
                "format",
                "packets",
                "Hz",
                "gaps",
                "p50 µs",
                "p99 µs",
                "max µs",
                "jit µs",
                "srv sent"
            );
            for r in &self.per_client {
                let _ = writeln!(
                    o,
                    "{:>5} {:<16} {:<7} {:>8} {:>7.2} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}  {}",
                    r.id,
                    r.session,
                    format!("{:?}", r.format).to_lowercase(),
                    r.packets,
                    r.rate_hz,
                    r.gaps,
                    r.latency_us_p50,
                    r.latency_us_p99,
                    r.latency_us_max,
                    r.jitter_us_max,
                    r.server_packets_sent.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                    r.state
                );
            }
        }
        o
    }
}
