//! The tick path does not allocate in steady state.
//!
//! A counting global allocator counts allocations made by this test's thread while it is
//! inside the timing loop's per-tick work (`TimingLoop::on_wake`: lateness record, command
//! drain, row lookup, noise, JSON and MessagePack encoding into pooled frames, fan-out, the
//! tap's copy of the counts into a recycled buffer). Anything that allocates there fails this
//! test. The tap (what feeds the LSL outlets) is always compiled, so it is covered here
//! without the `lsl` feature.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phantomlink::codec::{Frame, WireFormat};
use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::{
    tap, ClientShared, Command, NoiseConfig, NoiseState, SessionStatus, SpinControl, Subscriber,
    TapReceiver, TimingConfig, TimingLoop, WriterWaker, PERIOD,
};
use rtrb::{Consumer, RingBuffer};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let value = f();
    COUNTING.with(|c| c.set(false));
    (value, ALLOCATIONS.with(Cell::get))
}

fn drain(rings: &mut [Consumer<Arc<Frame>>]) -> usize {
    let mut frames = 0;
    for ring in rings {
        while ring.pop().is_ok() {
            frames += 1;
        }
    }
    frames
}

/// Takes every tap sample, checks its counts against the JSON frame of the same sequence
/// number, and hands the buffers back (outside the counted region, as the LSL thread would).
fn drain_checked(rings: &mut [Consumer<Arc<Frame>>], tap: &mut TapReceiver) -> (usize, usize) {
    let mut json_counts = std::collections::HashMap::new();
    let mut frames = 0;
    for ring in rings.iter_mut() {
        while let Ok(frame) = ring.pop() {
            frames += 1;
            if frame.payload().first() == Some(&b'{') {
                let value: serde_json::Value = serde_json::from_slice(frame.payload()).unwrap();
                let counts: Vec<u16> =
                    serde_json::from_value(value["data"]["spikes"]["spike_counts"].clone())
                        .unwrap();
                json_counts.insert(frame.sequence_number, (frame.bin, counts));
            }
        }
    }
    let mut samples = 0;
    while let Some(sample) = tap.pop() {
        samples += 1;
        let (bin, counts) = json_counts
            .get(&sample.sequence)
            .unwrap_or_else(|| panic!("no JSON frame for tap sample {}", sample.sequence));
        assert_eq!(sample.bin, *bin, "sequence {}", sample.sequence);
        assert_eq!(&*sample.counts, &counts[..], "sequence {}", sample.sequence);
        tap.recycle(sample.counts);
    }
    (frames, samples)
}

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = counted(|| Vec::<u8>::with_capacity(64));
    drop(v);
    assert_eq!(n, 1, "the counting allocator must see a plain allocation");
}

/// A timing loop driven by hand, with what a test needs to feed and watch it.
struct Rig {
    table: Arc<PacketTable>,
    commands: crossbeam_channel::Sender<Command>,
    status: Arc<SessionStatus>,
    timing: TimingLoop,
}

impl Rig {
    /// A loop on the synthetic table: no spin, rings of `ring_capacity`, room for
    /// `max_clients` subscribers.
    fn new(ring_capacity: usize, max_clients: usize) -> Self {
        let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
        let (commands, commands_rx) = crossbeam_channel::bounded(64);
        let status = Arc::new(SessionStatus::new());
        let timing = TimingLoop::new(
            Arc::clone(&table),
            commands_rx,
            Arc::clone(&status),
            TimingConfig {
                phase: Duration::ZERO,
                epoch: Instant::now(),
                stall_timeout: Duration::from_secs(10),
                ring_capacity,
                max_clients,
                spin: SpinControl::fixed(Duration::ZERO),
            },
        );
        Self {
            table,
            commands,
            status,
            timing,
        }
    }
}

#[test]
fn steady_state_tick_does_not_allocate() {
    let ring_capacity = 16;
    let Rig {
        table,
        commands,
        status,
        mut timing,
    } = Rig::new(ring_capacity, 8);

    // Two clients per format, as the server would subscribe them (control events may allocate).
    let mut rings = Vec::new();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(8);
    let mut flags = Vec::new();
    for (id, format) in [
        WireFormat::Json,
        WireFormat::MessagePack,
        WireFormat::Json,
        WireFormat::MessagePack,
    ]
    .into_iter()
    .enumerate()
    {
        let (producer, consumer) = RingBuffer::new(ring_capacity);
        let client = Arc::new(ClientShared::new(
            id as u64,
            "127.0.0.1:9".parse().unwrap(),
            format,
            ring_capacity,
        ));
        // Woken as the writer pool wakes them: marked on a ready queue, which the "pool"
        // below drains after each tick.
        let queued = Arc::new(AtomicBool::new(false));
        let waker = WriterWaker::pooled(
            std::thread::current(),
            ready_tx.clone(),
            id as u64,
            Arc::clone(&queued),
        );
        commands
            .send(Command::Subscribe(Subscriber::new(producer, client, waker)))
            .unwrap();
        rings.push(consumer);
        flags.push(queued);
    }

    // Noise is applied on the tick too: it must not allocate either.
    let noise = NoiseState::new(
        NoiseConfig::preset("moderate").unwrap(),
        table.num_units(),
        1,
    );
    commands
        .send(Command::SetNoise(Some(Box::new(noise))))
        .unwrap();

    // A tap (the LSL outlets' feed), its buffers allocated here, off the tick.
    let (session_tap, mut tap_rx) = tap(table.num_units(), 8);
    commands
        .send(Command::SetTap(Some(Box::new(session_tap))))
        .unwrap();

    // Warm-up: pools fill and frame buffers grow to their packet size.
    let mut deadline = Instant::now();
    for _ in 0..100 {
        timing.on_wake(deadline, Instant::now());
        deadline += PERIOD;
        drain_checked(&mut rings, &mut tap_rx);
    }

    let mut allocations = 0;
    let mut frames = 0;
    let mut samples = 0;
    let mut woken = 0;
    for n in 0..3000u32 {
        // Control from the network side, sent outside the counted region as a sender would.
        match n % 500 {
            100 => commands.send(Command::Seek(5000)).unwrap(),
            200 => commands.send(Command::Pause).unwrap(),
            201 => commands.send(Command::Resume).unwrap(),
            _ => {}
        }
        let (_, allocated) = counted(|| timing.on_wake(deadline, Instant::now()));
        allocations += allocated;
        deadline = timing.next_deadline().unwrap_or(deadline + PERIOD);
        let (f, s) = drain_checked(&mut rings, &mut tap_rx);
        frames += f;
        samples += s;
        // Every client marked ready once per tick that had a packet, never twice.
        let mut ready: Vec<u64> = ready_rx.try_iter().collect();
        ready.sort_unstable();
        assert!(
            ready.is_empty() || ready == [0, 1, 2, 3],
            "tick {n}: ready queue {ready:?}"
        );
        woken += usize::from(!ready.is_empty());
        for flag in &flags {
            flag.store(false, std::sync::atomic::Ordering::Release);
        }
    }
    assert!(woken > 2900, "writers were woken on every tick ({woken})");
    assert!(frames > 4 * 2900, "every client got its frames ({frames})");
    assert!(samples > 2900, "the tap got every tick ({samples})");
    assert_eq!(
        status
            .tap_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        allocations, 0,
        "the tick path allocated {allocations} times in 3000 ticks"
    );
    assert_eq!(
        status
            .frame_pool_misses
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_stalled_tap_drops_counted_without_allocating_or_holding_up_clients() {
    let ring_capacity = 16;
    let Rig {
        table,
        commands,
        status,
        mut timing,
    } = Rig::new(ring_capacity, 2);
    let (producer, consumer) = RingBuffer::new(ring_capacity);
    let client = Arc::new(ClientShared::new(
        1,
        "127.0.0.1:9".parse().unwrap(),
        WireFormat::MessagePack,
        ring_capacity,
    ));
    commands
        .send(Command::Subscribe(Subscriber::new(
            producer,
            client,
            WriterWaker::thread(std::thread::current()),
        )))
        .unwrap();
    // A consumer that never takes anything: its 8 buffers fill, then every tick is dropped.
    let (session_tap, tap_rx) = tap(table.num_units(), 8);
    commands
        .send(Command::SetTap(Some(Box::new(session_tap))))
        .unwrap();
    let mut rings = vec![consumer];
    let mut deadline = Instant::now();
    let mut allocations = 0;
    let mut frames = 0;
    for n in 0..200 {
        let (_, allocated) = counted(|| timing.on_wake(deadline, Instant::now()));
        // The first ticks fill the frame pool's buffers; count from there.
        if n >= 20 {
            allocations += allocated;
        }
        deadline = timing.next_deadline().unwrap_or(deadline + PERIOD);
        frames += drain(&mut rings);
    }
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    assert_eq!(frames, 200, "the client is not held up by the tap");
    assert_eq!(status.tap_samples.load(relaxed), 8);
    assert_eq!(status.tap_dropped.load(relaxed), 192);
    assert_eq!(allocations, 0, "dropping for the tap allocated");
    assert_eq!(tap_rx.pending(), 8);

    // The consumer goes away: the tap is removed at the next tick.
    drop(tap_rx);
    timing.on_wake(deadline, Instant::now());
    assert!(!status.tap_attached.load(relaxed));
}
