//! The timing loop of one session: sleep to an absolute deadline, apply control, play a row,
//! fan it out. See the module documentation of [`crate::engine`] for the rules of this room.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, TryRecvError};
use spin_sleep::SpinSleeper;

use super::fanout::{Delivery, FramePool};
use super::{Command, NoiseState, Playback, SessionStatus, Subscriber, Tap, TapDelivery};
use crate::codec::{encode_data, DataPacket, WireFormat};
use crate::dataset::{PacketTable, Row, BIN_MS};

/// Packet period: 25 ms.
pub const PERIOD: Duration = Duration::from_micros((BIN_MS * 1000.0) as u64);

/// A tick later than this re-anchors the schedule instead of bursting to catch up
/// (a suspended machine, a debugger); the lateness is still recorded.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1);

/// Starting size of a frame buffer; a 142-unit JSON packet is about 1.3 kB, and a buffer
/// that proves too small grows once and keeps its size.
const FRAME_CAPACITY: usize = 2048;

/// What [`TimingLoop::apply`] asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    /// Keep going.
    Continue,
    /// End the thread.
    Shutdown,
}

/// How a timing loop is set up.
#[derive(Debug, Clone)]
pub struct TimingConfig {
    /// Offset of this session's ticks within the period, so sessions do not all wake at once.
    pub phase: Duration,
    /// Shared origin of every session's schedule.
    pub epoch: Instant,
    /// A client whose ring stays full this long is closed.
    pub stall_timeout: Duration,
    /// Ring slots per client; frame pools hold a few more.
    pub ring_capacity: usize,
    /// Most subscribers; the list is allocated once at this size.
    pub max_clients: usize,
    /// How long before a deadline the thread stops sleeping and spins (read every tick).
    pub spin: SpinControl,
}

/// How long timing threads spin before each deadline, shared by every session so the server
/// can lower it as more sessions stream (see [`auto_spin`]).
#[derive(Debug, Clone, Default)]
pub struct SpinControl(Arc<AtomicU64>);

impl SpinControl {
    /// A spin of `spin`, until [`Self::set`] changes it.
    pub fn fixed(spin: Duration) -> Self {
        let control = Self::default();
        control.set(spin);
        control
    }

    /// Changes the spin of every timing thread sharing this control, from their next tick.
    pub fn set(&self, spin: Duration) {
        self.0
            .store(spin.as_nanos().min(u128::from(u32::MAX)) as u64, Relaxed);
    }

    /// The current spin.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Relaxed))
    }
}

/// Longest automatic spin before a deadline: with SCHED_FIFO a wake is rarely later than
/// this, so the last stretch is exact.
pub const MAX_SPIN: Duration = Duration::from_micros(100);
/// CPU all timing threads together may spend spinning in automatic mode, per tick period:
/// 1.6 ms of every 25 ms, 6.4 % of one core (16 sessions at the full 100 µs).
pub const SPIN_BUDGET: Duration = Duration::from_micros(1600);

/// The automatic spin for `streaming` sessions: [`MAX_SPIN`] while the budget allows, then
/// the budget shared out, so many sessions do not burn a core spinning (200 sessions: 8 µs).
pub fn auto_spin(streaming: usize) -> Duration {
    (SPIN_BUDGET / streaming.max(1) as u32).min(MAX_SPIN)
}

/// One session's timing loop. Owned and run by the session's timing thread; the pieces are
/// public so tests and benchmarks can drive single ticks.
pub struct TimingLoop {
    table: Arc<PacketTable>,
    commands: Receiver<Command>,
    status: Arc<SessionStatus>,
    config: TimingConfig,
    playback: Playback,
    subscribers: Vec<Subscriber>,
    per_format: [usize; 2],
    pools: [Option<FramePool>; 2],
    noise: Option<Box<NoiseState>>,
    tap: Option<Box<Tap>>,
    sequence: u64,
    paused: bool,
    started: bool,
    /// Start of the current schedule and ticks since: deadline n is `t0 + n·PERIOD`.
    schedule: Option<(Instant, u32)>,
    coarse: SpinSleeper,
}

impl TimingLoop {
    /// A loop over the whole recording, waiting for its first subscriber.
    pub fn new(
        table: Arc<PacketTable>,
        commands: Receiver<Command>,
        status: Arc<SessionStatus>,
        config: TimingConfig,
    ) -> Self {
        let playback = Playback::new(table.playlist_all());
        status.position.store(playback.position(), Relaxed);
        Self {
            table,
            commands,
            status,
            subscribers: Vec::with_capacity(config.max_clients),
            playback,
            per_format: [0; 2],
            pools: [None, None],
            noise: None,
            tap: None,
            sequence: 0,
            paused: false,
            started: false,
            schedule: None,
            // With nobody listening, punctuality does not matter: sleep without spinning.
            coarse: SpinSleeper::new(0),
            config,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every command sender is gone.
    pub fn run(mut self) {
        self.status.running.store(true, Relaxed);
        loop {
            let Some(deadline) = self.next_deadline() else {
                // Not playing: nothing to be punctual about, so block for the next command.
                match self.commands.recv() {
                    Ok(command) => {
                        if self.apply(command) == TickOutcome::Shutdown {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                }
            };
            if self.listened() {
                let spin = self.config.spin.get().as_nanos() as u32;
                SpinSleeper::new(spin).sleep_until(deadline);
            } else {
                self.coarse.sleep_until(deadline);
            }
            if self.on_wake(deadline, Instant::now()) == TickOutcome::Shutdown {
                break;
            }
        }
        self.status.running.store(false, Relaxed);
    }

    /// Everything a tick does after its sleep: record lateness, apply commands, play a row,
    /// advance the schedule. This is the steady-state
    /// path that must not allocate or lock; `tests/no_alloc_tick.rs` drives it directly.
    pub fn on_wake(&mut self, deadline: Instant, woke: Instant) -> TickOutcome {
        let late = woke.saturating_duration_since(deadline);
        // With nobody listening the sleep was coarse on purpose; its lateness says nothing.
        if self.listened() {
            self.status.lateness.record(late.as_nanos() as u64);
        }
        if self.drain_commands() == TickOutcome::Shutdown {
            return TickOutcome::Shutdown;
        }
        let Some((t0, n)) = self.schedule else {
            return TickOutcome::Continue; // paused or stopped by a command
        };
        self.tick(deadline, woke);
        self.schedule = if late > CATCH_UP_LIMIT {
            self.status.schedule_resets.fetch_add(1, Relaxed);
            Some((self.aligned_start(woke), 0))
        } else {
            Some((t0, n + 1))
        };
        TickOutcome::Continue
    }

    /// The deadline of the next tick, if playing.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.schedule.map(|(t0, n)| t0 + PERIOD * n)
    }

    /// Applies every queued command. Lock-free: `try_recv` on a bounded channel whose senders
    /// never block.
    pub fn drain_commands(&mut self) -> TickOutcome {
        loop {
            match self.commands.try_recv() {
                Ok(command) => {
                    if self.apply(command) == TickOutcome::Shutdown {
                        return TickOutcome::Shutdown;
                    }
                }
                Err(TryRecvError::Empty) => return TickOutcome::Continue,
                Err(TryRecvError::Disconnected) => return TickOutcome::Shutdown,
            }
        }
    }

    /// Applies one command.
    pub fn apply(&mut self, command: Command) -> TickOutcome {
        match command {
            Command::Subscribe(subscriber) => {
                let format = subscriber.client.format.index();
                self.per_format[format] += 1;
                if self.pools[format].is_none() {
                    // The first client of a format: its pool, counted once.
                    let pool = FramePool::new(self.config.ring_capacity + 8, FRAME_CAPACITY);
                    self.status
                        .frame_pool_bytes
                        .fetch_add(pool.heap_bytes(), Relaxed);
                    self.pools[format] = Some(pool);
                }
                self.subscribers.push(subscriber);
                self.status
                    .subscribers
                    .store(self.subscribers.len(), Relaxed);
                self.start_clock();
            }
            Command::Pause => self.pause(),
            Command::Resume => {
                if self.paused {
                    self.paused = false;
                    self.status.paused.store(false, Relaxed);
                    self.start_schedule();
                }
            }
            Command::Seek(bin) => {
                // The sender checked the bin against the playlist; a filter change racing
                // with the seek can still make it invalid, and then the seek is ignored.
                let _ = self.playback.seek(bin);
                self.status
                    .position
                    .store(self.playback.position(), Relaxed);
            }
            Command::Stop => {
                self.pause();
                self.playback.rewind();
                self.status
                    .position
                    .store(self.playback.position(), Relaxed);
            }
            Command::SetPlaylist(playlist) => {
                self.playback.replace(playlist);
                self.status
                    .position
                    .store(self.playback.position(), Relaxed);
            }
            Command::SetNoise(noise) => self.noise = noise,
            Command::SetTap(tap) => {
                self.status
                    .tap_bytes
                    .store(tap.as_ref().map_or(0, |t| t.heap_bytes()), Relaxed);
                self.status.tap_attached.store(tap.is_some(), Relaxed);
                let attached = tap.is_some();
                self.tap = tap;
                if attached {
                    self.start_clock();
                }
            }
            Command::Shutdown => return TickOutcome::Shutdown,
        }
        TickOutcome::Continue
    }

    /// Whether anyone takes the ticks: a client or a tap.
    fn listened(&self) -> bool {
        !self.subscribers.is_empty() || self.tap.is_some()
    }

    /// Starts the session's clock at its first listener.
    fn start_clock(&mut self) {
        if !self.started {
            self.started = true;
            self.status.started.store(true, Relaxed);
            self.start_schedule();
        }
    }

    /// Plays one row: encode once per format in use, offer to every subscriber and the tap.
    /// `deadline` is the tick's scheduled instant, `woke` when the thread actually woke.
    pub fn tick(&mut self, deadline: Instant, woke: Instant) {
        let bin = self.playback.advance();
        self.sequence += 1;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let row = self.table.row(bin);
        let spike_counts = match self.noise.as_mut() {
            Some(noise) => noise.apply(row.spike_counts, self.sequence),
            None => row.spike_counts,
        };
        let packet = DataPacket {
            timestamp,
            sequence_number: self.sequence,
            row: Row {
                spike_counts,
                ..row
            },
            channel_ids: self.table.channel_ids(),
        };
        let mut slots = [None; 2];
        for format in WireFormat::ALL {
            let index = format.index();
            if self.per_format[index] == 0 {
                continue;
            }
            let Some(pool) = self.pools[index].as_mut() else {
                continue;
            };
            let (slot, frame) = pool.acquire();
            if frame
                .build(format.opcode(), |buf| encode_data(format, &packet, buf))
                .is_err()
            {
                self.status.encode_errors.fetch_add(1, Relaxed);
                continue;
            }
            frame.sequence_number = self.sequence;
            frame.bin = bin;
            frame.tick = woke;
            slots[index] = Some(slot);
        }
        if let Some(tap) = self.tap.as_mut() {
            match tap.offer(self.sequence, bin, deadline, packet.row.spike_counts) {
                TapDelivery::Queued => {
                    self.status.tap_samples.fetch_add(1, Relaxed);
                }
                TapDelivery::Dropped => {
                    self.status.tap_dropped.fetch_add(1, Relaxed);
                }
                TapDelivery::Gone => {
                    // The consumer ended; the tap's rings are freed here (a control event).
                    self.tap = None;
                    self.status.tap_attached.store(false, Relaxed);
                    self.status.tap_bytes.store(0, Relaxed);
                }
            }
        }
        self.fan_out(&slots, woke);
        self.status
            .position
            .store(self.playback.position(), Relaxed);
        self.status.sequence.store(self.sequence, Relaxed);
        self.status.packets_generated.fetch_add(1, Relaxed);
    }

    fn fan_out(&mut self, slots: &[Option<usize>; 2], now: Instant) {
        let pools = &self.pools;
        let mut i = 0;
        while i < self.subscribers.len() {
            let format = self.subscribers[i].client.format.index();
            let frame = match (slots[format], &pools[format]) {
                (Some(slot), Some(pool)) => pool.shared(slot),
                _ => {
                    i += 1;
                    continue;
                }
            };
            match self.subscribers[i].offer(frame, now, self.config.stall_timeout) {
                Delivery::Queued | Delivery::Dropped => i += 1,
                Delivery::Stalled | Delivery::Gone => {
                    self.subscribers.swap_remove(i);
                    self.per_format[format] -= 1;
                    self.status
                        .subscribers
                        .store(self.subscribers.len(), Relaxed);
                }
            }
        }
        // Unparked after the fan-out: the first unpark of a pool thread wakes it, the others
        // find it awake, so a pool thread wakes once per tick, not once per client.
        for subscriber in &self.subscribers {
            subscriber.writer.unpark();
        }
        let misses = pools.iter().flatten().map(FramePool::misses).sum();
        self.status.frame_pool_misses.store(misses, Relaxed);
    }

    fn pause(&mut self) {
        self.paused = true;
        self.schedule = None;
        self.status.paused.store(true, Relaxed);
    }

    fn start_schedule(&mut self) {
        if self.started && !self.paused {
            self.schedule = Some((self.aligned_start(Instant::now()), 0));
        }
    }

    /// The first instant at or after `now` that falls on this session's phase.
    fn aligned_start(&self, now: Instant) -> Instant {
        let period = PERIOD.as_nanos();
        let phase = self.config.phase.as_nanos() % period;
        let since = now.saturating_duration_since(self.config.epoch).as_nanos();
        let offset = if since <= phase {
            phase
        } else {
            phase + (since - phase).div_ceil(period) * period
        };
        self.config.epoch + Duration::from_nanos(offset as u64)
    }

    /// Sequence number of the last packet generated.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Frame, WireFormat};
    use crate::dataset::synthetic::{generate, SyntheticConfig};
    use crate::engine::{ClientShared, WriterWaker};

    #[test]
    fn frame_pools_are_counted_once_per_format() {
        let table = Arc::new(
            PacketTable::new(generate(&SyntheticConfig {
                num_bins: 200,
                num_trials: 2,
                ..SyntheticConfig::default()
            }))
            .unwrap(),
        );
        let (tx, rx) = crossbeam_channel::bounded(16);
        let status = Arc::new(SessionStatus::new());
        let config = TimingConfig {
            phase: Duration::ZERO,
            epoch: Instant::now(),
            stall_timeout: Duration::from_secs(1),
            ring_capacity: 8,
            max_clients: 8,
            spin: SpinControl::fixed(Duration::ZERO),
        };
        let mut timing = TimingLoop::new(table, rx, Arc::clone(&status), config);
        let mut rings = Vec::new();
        for (id, format) in [WireFormat::Json, WireFormat::Json, WireFormat::MessagePack]
            .into_iter()
            .enumerate()
        {
            let (producer, consumer) = rtrb::RingBuffer::<Arc<Frame>>::new(8);
            let client = Arc::new(ClientShared::new(
                id as u64,
                "127.0.0.1:1".parse().unwrap(),
                format,
                8,
            ));
            tx.send(Command::Subscribe(Subscriber::new(
                producer,
                client,
                WriterWaker::thread(std::thread::current()),
            )))
            .unwrap();
            rings.push(consumer);
        }
        timing.drain_commands();
        let one_pool = FramePool::new(16, FRAME_CAPACITY).heap_bytes();
        assert_eq!(status.frame_pool_bytes.load(Relaxed), 2 * one_pool);
    }
}
