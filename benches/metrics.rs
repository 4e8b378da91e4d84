//! `/metrics` rendering with 100 sessions × 10 clients: JSON (built and serialised, as the
//! HTTP handler does) and Prometheus text. Clients are attached to real sessions of a real
//! `Registry` through the public `Session::attach`, without sockets; their histograms hold
//! realistic values, and every session's windows hold several 15 s intervals.
//!
//! Two measurements: criterion's (mean and median of batches; besides the two renders, the
//! client and window summaries of a render on one thread, where most of its time goes), then
//! `render_p99`, a plain loop of [`RENDERS`] renders, each timed on its own, printing
//! p50/p99/max — the target is a p99, which criterion does not report.
//!
//! A third group times handing work to another thread: a scoped thread per render against
//! the render pool's parked helpers.
//!
//! `cargo bench --bench metrics`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use phantomlink::codec::WireFormat;
use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::{ClientShared, EngineConfig, Registry};
use phantomlink::metrics::render_pool::RenderPool;
use phantomlink::metrics::window::ROTATE_EVERY;
use phantomlink::metrics::{report, LatencySummary};

const SESSIONS: usize = 100;
const CLIENTS: usize = 10;
/// Values recorded into each client histogram (and per client into the session's).
const VALUES: usize = 2_000;
/// Window rotations per session, with values recorded between them.
const ROTATIONS: u32 = 5;
/// Renders timed one by one for the percentiles.
const RENDERS: usize = 500;

/// A registry with `SESSIONS` sessions of `CLIENTS` clients each, histograms filled.
fn registry() -> Registry {
    let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
    let registry = Registry::new(
        table,
        EngineConfig {
            max_sessions: SESSIONS,
            ..EngineConfig::default()
        },
    );
    let mut seed = 12345u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    // Rotations in the recent past, ROTATE_EVERY apart, the last one 10 s ago: the windows
    // then hold intervals of different ages, as on a server that has run for a while.
    let first_rotation = Instant::now() - ROTATE_EVERY * ROTATIONS - Duration::from_secs(10);
    for s in 0..SESSIONS {
        let session = registry.create(Some(&format!("bench-{s}"))).unwrap();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let id = (s * CLIENTS + c) as u64;
            let remote = format!("127.0.0.1:{}", 20_000 + id).parse().unwrap();
            let format = WireFormat::ALL[c % 2];
            let shared = Arc::new(ClientShared::new(id, remote, format, 64));
            session
                .attach(
                    Arc::clone(&shared),
                    None,
                    registry.table().playlist_all(),
                    CLIENTS,
                )
                .unwrap();
            clients.push(shared);
        }
        // The values spread over the rotations: each interval gets its share.
        for r in 0..=ROTATIONS {
            for shared in &clients {
                for _ in 0..VALUES / (ROTATIONS as usize + 1) {
                    let latency = 50_000 + next() % 2_000_000;
                    shared.latency.record(latency);
                    shared.ring_wait.record(latency / 4);
                    session.status().latency.record(latency);
                }
            }
            for _ in 0..VALUES / (ROTATIONS as usize + 1) {
                session.status().lateness.record(200 + next() % 50_000);
            }
            if r < ROTATIONS {
                let at = first_rotation + ROTATE_EVERY * r;
                let mut state = session.state();
                let state = &mut *state;
                state
                    .lateness_windows
                    .rotate(&session.status().lateness, at);
                state.latency_windows.rotate(&session.status().latency, at);
            }
        }
    }
    registry
}

fn render_json(registry: &Registry) -> usize {
    black_box(report::json(black_box(registry), None).len())
}

fn render_prometheus(registry: &Registry) -> usize {
    black_box(report::prometheus(black_box(registry), None, false).len())
}

/// The 2 000 client summaries of a render (latency and ring wait), on this thread.
fn client_summaries(registry: &Registry) -> u64 {
    let mut count = 0;
    for session in registry.sessions() {
        for client in &session.state().clients {
            count += LatencySummary::of(&client.latency).count;
            count += LatencySummary::of(&client.ring_wait).count;
        }
    }
    black_box(count)
}

/// The 600 window summaries of a render (3 windows of 2 histograms per session).
fn window_summaries(registry: &Registry) -> u64 {
    let now = Instant::now();
    let mut count = 0;
    for session in registry.sessions() {
        let state = session.state();
        let status = session.status();
        for summary in state
            .lateness_windows
            .summaries(&status.lateness, now, 1e6)
            .iter()
            .chain(&state.latency_windows.summaries(&status.latency, now, 1e6))
        {
            count += summary.count;
        }
    }
    black_box(count)
}

fn render(c: &mut Criterion) {
    let registry = registry();
    let mut group = c.benchmark_group("metrics_100x10");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group.bench_function("json", |b| b.iter(|| render_json(&registry)));
    group.bench_function("prometheus", |b| b.iter(|| render_prometheus(&registry)));
    // Parts of the JSON render, each on one thread: where its time goes.
    group.bench_function("client_summaries", |b| {
        b.iter(|| client_summaries(&registry))
    });
    group.bench_function("window_summaries", |b| {
        b.iter(|| window_summaries(&registry))
    });
    group.finish();
    // Handing a part of a render to another thread: a thread started and joined per render
    // (what the render did before) against a task given to a parked render-pool helper.
    let mut group = c.benchmark_group("render_handoff");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.bench_function("scoped_thread", |b| {
        b.iter(|| std::thread::scope(|s| s.spawn(|| black_box(1u64)).join().unwrap()))
    });
    group.bench_function("render_pool", |b| {
        let pool = RenderPool::global();
        b.iter(|| pool.spawn(|| black_box(1u64)).join())
    });
    group.finish();
    render_p99(&registry);
    registry.shut_down(Instant::now() + Duration::from_secs(2));
}

/// Times [`RENDERS`] renders of each format one by one and prints their p50, p99 and max.
fn render_p99(registry: &Registry) {
    for (name, f) in [
        ("json", render_json as fn(&Registry) -> usize),
        ("prometheus", render_prometheus),
    ] {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
            .expect("valid bounds");
        let mut bytes = 0;
        for _ in 0..RENDERS {
            let start = Instant::now();
            bytes = f(registry);
            hist.record(start.elapsed().as_nanos() as u64)
                .expect("within bounds");
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "metrics_100x10/{name}: {RENDERS} renders of {bytes} bytes: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(hist.value_at_quantile(0.50)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max()),
        );
    }
}

criterion_group!(benches, render);
criterion_main!(benches);
