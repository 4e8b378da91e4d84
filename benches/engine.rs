//! Engine benchmarks: the steady-state tick (`TimingLoop::on_wake`) with 1, 10 and 100 clients
//! attached, the ring push/pop of a shared frame, and the histogram operations on the tick and
//! housekeeping paths.
//!
//! `tick/*` drives the timing loop as `tests/no_alloc_tick.rs` does, without sockets: rings are
//! drained between iterations, outside the timed region. In `tick/*` the "writer" is the bench
//! thread itself, so `unpark` costs an atomic swap; `tick_parked_writers/*` gives every client a
//! real parked writer thread, so each push also pays a futex wake (the thread-per-client design
//! the server had first); `tick_pool_writers/*` wakes two pool threads through ready queues, as
//! the server's writer pool is woken.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_channel::Sender;
use rtrb::{Consumer, RingBuffer};

use phantomlink::codec::{Frame, WireFormat};
use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::{
    ClientShared, Command, SessionStatus, SpinControl, Subscriber, TimingConfig, TimingLoop,
    WriterWaker, PERIOD,
};
use phantomlink::metrics::histogram::{AtomicHistogram, LATENCY, LATENESS};

const RING: usize = 64;

/// A client's ring of shared frames, reading end.
type Ring = Consumer<Arc<Frame>>;
/// Where a writer thread picks up its ring once the subscriber exists.
type RingSlot = Arc<std::sync::Mutex<Option<Ring>>>;

/// A timing loop with subscribers, driven by hand.
struct Rig {
    timing: TimingLoop,
    deadline: Instant,
    _commands: Sender<Command>,
}

impl Rig {
    /// A loop with one subscriber per entry of `clients`, each writer being `writer(i)`.
    fn new(
        table: &Arc<PacketTable>,
        formats: &[WireFormat],
        writer: impl Fn(usize) -> WriterWaker,
    ) -> (Self, Vec<Option<Ring>>) {
        let (commands, commands_rx) = crossbeam_channel::bounded(formats.len() + 8);
        let timing = TimingLoop::new(
            Arc::clone(table),
            commands_rx,
            Arc::new(SessionStatus::new()),
            TimingConfig {
                phase: Duration::ZERO,
                epoch: Instant::now(),
                stall_timeout: Duration::from_secs(3600),
                ring_capacity: RING,
                max_clients: formats.len().max(1),
                spin: SpinControl::fixed(Duration::ZERO),
            },
        );
        let mut rings = Vec::new();
        for (i, &format) in formats.iter().enumerate() {
            let (producer, consumer) = RingBuffer::new(RING);
            let client = Arc::new(ClientShared::new(
                i as u64,
                "127.0.0.1:9".parse().unwrap(),
                format,
                RING,
            ));
            commands
                .send(Command::Subscribe(Subscriber::new(
                    producer,
                    client,
                    writer(i),
                )))
                .unwrap();
            rings.push(Some(consumer));
        }
        let rig = Self {
            timing,
            deadline: Instant::now(),
            _commands: commands,
        };
        (rig, rings)
    }

    /// One timed tick.
    fn tick(&mut self) -> Duration {
        let start = Instant::now();
        self.timing.on_wake(self.deadline, start);
        let took = start.elapsed();
        self.deadline = self
            .timing
            .next_deadline()
            .unwrap_or(self.deadline + PERIOD);
        took
    }
}

fn drain(rings: &mut [Option<Ring>]) {
    for ring in rings.iter_mut().flatten() {
        while ring.pop().is_ok() {}
    }
}

fn table() -> Arc<PacketTable> {
    Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).expect("synthetic table"))
}

fn tick(c: &mut Criterion) {
    let table = table();
    let mut group = c.benchmark_group("tick");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let cases: [(&str, usize, bool); 4] = [
        ("json", 1, false),
        ("json", 10, false),
        ("json", 100, false),
        ("mixed", 10, true),
    ];
    for (name, clients, mixed) in cases {
        let formats: Vec<WireFormat> = (0..clients)
            .map(|i| WireFormat::ALL[if mixed { i % 2 } else { 0 }])
            .collect();
        let (mut rig, mut rings) = Rig::new(&table, &formats, |_| {
            WriterWaker::thread(std::thread::current())
        });
        for _ in 0..200 {
            rig.tick();
            drain(&mut rings);
        }
        group.bench_function(BenchmarkId::new(name, clients), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += rig.tick();
                    drain(&mut rings);
                }
                total
            })
        });
    }
    group.finish();
}

/// Writer threads that park until unparked and then drain their ring, as the server's do.
struct Writers {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    popped: Arc<AtomicU64>,
}

impl Writers {
    /// Waits (bounded) until `expected` frames have been popped, then lets the writers park.
    fn settle(&self, expected: u64) {
        let until = Instant::now() + Duration::from_secs(1);
        while self.popped.load(Relaxed) < expected && Instant::now() < until {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(50));
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        for handle in &self.handles {
            handle.thread().unpark();
        }
        for handle in self.handles {
            let _ = handle.join();
        }
    }
}

/// Hands each of `rig`'s rings to its writer through its slot, then times ticks of `rig`
/// whose `clients` frames are drained by `writers`, letting them finish (outside the timed
/// region) after each, then stops them.
fn measure_with_writers(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mut rig: Rig,
    (rings, slots): (Vec<Option<Ring>>, &[RingSlot]),
    writers: Writers,
    clients: usize,
) {
    for (slot, ring) in slots.iter().zip(rings) {
        *slot.lock().unwrap() = ring;
    }
    let mut expected = 0u64;
    for _ in 0..50 {
        rig.tick();
        expected += clients as u64;
        writers.settle(expected);
    }
    group.bench_function(BenchmarkId::from_parameter(clients), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rig.tick();
                expected += clients as u64;
                writers.settle(expected);
            }
            total
        })
    });
    writers.stop();
}

fn tick_parked_writers(c: &mut Criterion) {
    let table = table();
    let mut group = c.benchmark_group("tick_parked_writers");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for clients in [1usize, 10, 100] {
        // Writer threads must exist before the subscribers that name them: start them on
        // placeholder rings, then hand the real rings over through a slot each.
        let formats = vec![WireFormat::Json; clients];
        let slots: Vec<RingSlot> = (0..clients)
            .map(|_| Arc::new(std::sync::Mutex::new(None)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let popped = Arc::new(AtomicU64::new(0));
        let handles: Vec<JoinHandle<()>> = slots
            .iter()
            .map(|slot| {
                let (slot, stop, popped) =
                    (Arc::clone(slot), Arc::clone(&stop), Arc::clone(&popped));
                std::thread::spawn(move || {
                    let mut ring = loop {
                        if let Some(ring) = slot.lock().unwrap().take() {
                            break ring;
                        }
                        if stop.load(Relaxed) {
                            return;
                        }
                        std::thread::park_timeout(Duration::from_millis(1));
                    };
                    while !stop.load(Relaxed) {
                        std::thread::park();
                        while let Ok(frame) = ring.pop() {
                            black_box(frame.bytes().len());
                            popped.fetch_add(1, Relaxed);
                        }
                    }
                })
            })
            .collect();
        let (rig, rings) = Rig::new(&table, &formats, |i| {
            WriterWaker::thread(handles[i].thread().clone())
        });
        let writers = Writers {
            handles,
            stop,
            popped,
        };
        measure_with_writers(&mut group, rig, (rings, &slots), writers, clients);
    }
    group.finish();
}

/// The server's writer pool: two threads that park until unparked, then drain the rings of
/// the clients on their ready queue. A tick marks every client and wakes each pool thread
/// once, so its cost no longer grows by a futex wake per client.
fn tick_pool_writers(c: &mut Criterion) {
    const POOL: usize = 2;
    let table = table();
    let mut group = c.benchmark_group("tick_pool_writers");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for clients in [1usize, 10, 100] {
        let formats = vec![WireFormat::Json; clients];
        let slots: Vec<RingSlot> = (0..clients)
            .map(|_| Arc::new(std::sync::Mutex::new(None)))
            .collect();
        let flags: Vec<Arc<AtomicBool>> = (0..clients).map(|_| Arc::default()).collect();
        let queues: Vec<_> = (0..POOL)
            .map(|_| crossbeam_channel::bounded::<u64>(clients))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let popped = Arc::new(AtomicU64::new(0));
        let handles: Vec<JoinHandle<()>> = (0..POOL)
            .map(|t| {
                let mine: Vec<(usize, RingSlot)> = (t..clients)
                    .step_by(POOL)
                    .map(|i| (i, Arc::clone(&slots[i])))
                    .collect();
                let flags = flags.clone();
                let ready = queues[t].1.clone();
                let (stop, popped) = (Arc::clone(&stop), Arc::clone(&popped));
                std::thread::spawn(move || {
                    let mut rings: Vec<Option<Ring>> = (0..flags.len()).map(|_| None).collect();
                    let mut missing = mine.len();
                    while missing > 0 && !stop.load(Relaxed) {
                        for (i, slot) in &mine {
                            if rings[*i].is_none() {
                                if let Some(ring) = slot.lock().unwrap().take() {
                                    rings[*i] = Some(ring);
                                    missing -= 1;
                                }
                            }
                        }
                        std::thread::park_timeout(Duration::from_millis(1));
                    }
                    while !stop.load(Relaxed) {
                        std::thread::park();
                        while let Ok(id) = ready.try_recv() {
                            let id = id as usize;
                            flags[id].swap(false, std::sync::atomic::Ordering::AcqRel);
                            if let Some(ring) = rings[id].as_mut() {
                                while let Ok(frame) = ring.pop() {
                                    black_box(frame.bytes().len());
                                    popped.fetch_add(1, Relaxed);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let (rig, rings) = Rig::new(&table, &formats, |i| {
            WriterWaker::pooled(
                handles[i % POOL].thread().clone(),
                queues[i % POOL].0.clone(),
                i as u64,
                Arc::clone(&flags[i]),
            )
        });
        let writers = Writers {
            handles,
            stop,
            popped,
        };
        measure_with_writers(&mut group, rig, (rings, &slots), writers, clients);
    }
    group.finish();
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let (mut producer, mut consumer) = RingBuffer::<Arc<Frame>>::new(RING);
    let frame = Arc::new(Frame::with_capacity(2048));
    group.bench_function("push_pop_arc_frame", |b| {
        b.iter(|| {
            producer.push(Arc::clone(&frame)).unwrap();
            black_box(consumer.pop().unwrap())
        })
    });
    group.finish();
}

fn histogram(c: &mut Criterion) {
    let mut group = c.benchmark_group("histogram");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let lateness = AtomicHistogram::new(LATENESS);
    let mut value = 1_000u64;
    group.bench_function("record", |b| {
        b.iter(|| {
            value = (value * 7 + 13) % 5_000_000 + 200;
            lateness.record(black_box(value));
        })
    });
    // What /metrics does per client: a snapshot of its latency histogram into an
    // hdrhistogram, and the percentiles of the summary.
    let latency = AtomicHistogram::new(LATENCY);
    for v in 0..2_000u64 {
        latency.record(50_000 + (v * 7_919) % 2_000_000);
    }
    group.bench_function("snapshot_and_summary_latency", |b| {
        b.iter(|| {
            let snapshot = latency.snapshot();
            black_box(phantomlink::metrics::LatencySummary::from_nanos(&snapshot))
        })
    });
    // What /metrics does now: the summary straight from the block counts.
    group.bench_function("summary_latency", |b| {
        b.iter(|| {
            black_box(phantomlink::metrics::LatencySummary::of(black_box(
                &latency,
            )))
        })
    });
    group.finish();
}

/// Noise on the tick path: one packet's 142 counts through the `moderate` preset (Gaussian
/// noise and drift) and through dropout alone.
fn noise(c: &mut Criterion) {
    use phantomlink::engine::{NoiseConfig, NoiseState};
    let mut group = c.benchmark_group("noise");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    let counts: Vec<u16> = (0..142).map(|i| (i % 4) as u16).collect();
    let moderate = NoiseConfig::preset("moderate").expect("preset exists");
    let dropout = NoiseConfig {
        dropout: 0.25,
        ..NoiseConfig::OFF
    };
    for (name, config) in [("moderate_142", moderate), ("dropout_142", dropout)] {
        let mut state = NoiseState::new(config, counts.len(), 7);
        let mut sequence = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                sequence += 1;
                black_box(state.apply(black_box(&counts), sequence).len())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    tick,
    tick_parked_writers,
    tick_pool_writers,
    ring,
    histogram,
    noise
);
criterion_main!(benches);
