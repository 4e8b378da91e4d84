//! The tick path does not allocate in steady state.
//!
//! A counting global allocator counts allocations made by this test's thread while it is
//! inside the timing loop's per-tick work (`TimingLoop::on_wake`: lateness record, command
//! drain, row lookup, noise, JSON and MessagePack encoding into pooled frames, fan-out). Anything that allocates there fails this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phantomlink::codec::{Frame, WireFormat};
use phantomlink::dataset::synthetic::{generate, SyntheticConfig};
use phantomlink::dataset::PacketTable;
use phantomlink::engine::{
    ClientShared, Command, NoiseConfig, NoiseState, SessionStatus, Subscriber, TimingConfig,
    TimingLoop, PERIOD,
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

#[test]
fn the_counter_sees_allocations() {
    let (v, n) = counted(|| Vec::<u8>::with_capacity(64));
    drop(v);
    assert_eq!(n, 1, "the counting allocator must see a plain allocation");
}

#[test]
fn steady_state_tick_does_not_allocate() {
    let table = Arc::new(PacketTable::new(generate(&SyntheticConfig::default())).unwrap());
    let (commands, commands_rx) = crossbeam_channel::bounded(64);
    let status = Arc::new(SessionStatus::new());
    let ring_capacity = 16;
    let mut timing = TimingLoop::new(
        Arc::clone(&table),
        commands_rx,
        Arc::clone(&status),
        TimingConfig {
            phase: Duration::ZERO,
            epoch: Instant::now(),
            stall_timeout: Duration::from_secs(10),
            ring_capacity,
            max_clients: 8,
            spin: Duration::ZERO,
        },
    );

    // Two clients per format, as the server would subscribe them (control events may allocate).
    let mut rings = Vec::new();
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
        commands
            .send(Command::Subscribe(Subscriber::new(
                producer,
                client,
                std::thread::current(),
            )))
            .unwrap();
        rings.push(consumer);
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

    // Warm-up: pools fill and frame buffers grow to their packet size.
    let mut deadline = Instant::now();
    for _ in 0..100 {
        timing.on_wake(deadline, Instant::now());
        deadline += PERIOD;
        drain(&mut rings);
    }

    let mut allocations = 0;
    let mut frames = 0;
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
        frames += drain(&mut rings);
    }
    assert!(frames > 4 * 2900, "every client got its frames ({frames})");
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
