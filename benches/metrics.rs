//! `/metrics` rendering with 100 sessions × 10 clients: JSON (built and serialised, as the
//! HTTP handler does) and Prometheus text. Clients are attached to real sessions of a real
//! `Registry` through the public `Session::attach`, without sockets; their histograms hold
//! realistic values.
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
use phantomlink::metrics::report;

const SESSIONS: usize = 100;
const CLIENTS: usize = 10;

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
    for s in 0..SESSIONS {
        let session = registry.create(Some(&format!("bench-{s}"))).unwrap();
        for c in 0..CLIENTS {
            let id = (s * CLIENTS + c) as u64;
            let remote = format!("127.0.0.1:{}", 20_000 + id).parse().unwrap();
            let format = WireFormat::ALL[c % 2];
            let shared = Arc::new(ClientShared::new(id, remote, format, 64));
            for _ in 0..2_000 {
                let latency = 50_000 + next() % 2_000_000;
                shared.latency.record(latency);
                shared.ring_wait.record(latency / 4);
                session.status().latency.record(latency);
            }
            session
                .attach(shared, None, registry.table().playlist_all(), CLIENTS)
                .unwrap();
        }
        for _ in 0..2_000 {
            session.status().lateness.record(200 + next() % 50_000);
        }
    }
    registry
}

fn render(c: &mut Criterion) {
    let registry = registry();
    let mut group = c.benchmark_group("metrics_100x10");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    group.bench_function("json", |b| {
        b.iter(|| {
            let doc = report::json(black_box(&registry), None);
            black_box(serde_json::to_vec(&doc).unwrap().len())
        })
    });
    group.bench_function("prometheus", |b| {
        b.iter(|| black_box(report::prometheus(black_box(&registry), None, false).len()))
    });
    group.finish();
    registry.shut_down(Instant::now() + Duration::from_secs(2));
}

criterion_group!(benches, render);
criterion_main!(benches);
