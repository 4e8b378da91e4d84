//! One load-generating WebSocket client: its socket, receive buffer and measurements.
//!
//! Reading is non-blocking and driven by the worker's epoll loop. Every complete frame is
//! handled in place; a data packet costs a frame-header parse, a scan of the message head,
//! two histogram records and a clock read per socket read — no allocation.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::decode::{self, Format, Head, Message};
use crate::stamp::{enable_rx_timestamps, recv_stamped};
use crate::ws::{self, FrameAt, Kind, MAX_FRAME};

/// Expected time between packets.
pub const PERIOD: Duration = Duration::from_millis(25);
/// Smallest free space offered to one `read`.
const READ_CHUNK: usize = 8 * 1024;

/// Histogram of nanoseconds, as accumulated over all clients of a worker (0.1 % precision).
pub type Hist = Histogram<u64>;
/// Per-client histogram of nanoseconds: 1 µs resolution, 2 significant digits, ~10 KiB.
pub type SmallHist = Histogram<u32>;

/// A histogram for overall figures: 1 ns to 60 s, 3 significant digits.
pub fn hist() -> Hist {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn small_hist() -> SmallHist {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 2).expect("valid bounds")
}

/// What every client of a worker adds to.
pub struct Overall {
    /// Tick → receive latency (kernel receive stamp − packet timestamp), ns.
    pub latency: Hist,
    /// Tick → the load generator reading the packet (user space), ns.
    pub latency_user: Hist,
    /// |inter-arrival − 25 ms|, ns.
    pub jitter: Hist,
}

impl Overall {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            latency: hist(),
            latency_user: hist(),
            jitter: hist(),
        }
    }
}

/// When bytes were received: by the kernel (its `SO_TIMESTAMPNS` stamp, or the read time when
/// it gave none) and by the load generator's read, Unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Arrival in the socket's receive queue.
    pub kernel: f64,
    /// The read that returned it.
    pub user: f64,
}

/// How a worker asks a client to handle what it reads.
pub struct Ctx<'a> {
    /// Inside the measurement window.
    pub measuring: bool,
    /// Full decode of every Nth packet (0: never).
    pub verify_every: u64,
    /// Packets each client should receive in the window, if the run is bounded by packets.
    pub target_packets: Option<u64>,
    /// Answer every data packet with a decoder message (`--closed-loop`).
    pub closed_loop: bool,
    /// Figures over all clients.
    pub overall: &'a mut Overall,
}

/// Measurements of one client.
pub struct Stats {
    /// The metadata message arrived.
    pub metadata: bool,
    /// Its `num_channels`.
    pub num_channels: Option<u64>,
    /// Data packets since connect.
    pub packets: u64,
    /// Bytes of data frames since connect.
    pub bytes: u64,
    /// First and last sequence numbers seen.
    pub first_seq: Option<u64>,
    /// Last (highest) sequence number seen.
    pub last_seq: Option<u64>,
    /// Packets missing between consecutive sequence numbers, since connect.
    pub gaps: u64,
    /// Packets whose sequence number was not above the last one.
    pub out_of_order: u64,
    /// Data packets inside the measurement window.
    pub window_packets: u64,
    /// Bytes inside the window.
    pub window_bytes: u64,
    /// Gaps inside the window.
    pub window_gaps: u64,
    /// Tick → receive latency inside the window, ns.
    pub latency: SmallHist,
    /// Packets whose timestamp was after their receive time (clock trouble).
    pub negative_latency: u64,
    /// Largest |inter-arrival − 25 ms| in the window, ns.
    pub jitter_max_ns: u64,
    /// Sum of |inter-arrival − 25 ms|, ns, and how many.
    pub jitter_sum_ns: u64,
    /// Number of inter-arrival samples.
    pub jitter_count: u64,
    /// Packets fully decoded to check the fast path and the structure.
    pub verified: u64,
    /// Checks that failed, and the first failure.
    pub verify_failures: u64,
    /// The first failure's description.
    pub verify_error: Option<String>,
    /// Packets the fast path could not read (decoded fully instead).
    pub fallbacks: u64,
    /// Close code the server sent, if it closed.
    pub close_code: Option<u16>,
    /// Unix time of the first data packet.
    pub first_packet_unix: Option<f64>,
    /// Reached the packet target of the run.
    pub reached_target: bool,
    /// Reads that carried more than one data frame (their frames share one kernel stamp).
    pub multi_frame_reads: u64,
    /// Closed loop: answers written (whole, or begun with the rest kept for the next write).
    pub answers_sent: u64,
    /// Closed loop: answers not written because the socket would block or an earlier
    /// answer's tail was still unsent.
    pub answers_skipped: u64,
    last_arrival: Option<(u64, f64)>,
}

impl Stats {
    fn new() -> Self {
        Self {
            metadata: false,
            num_channels: None,
            packets: 0,
            bytes: 0,
            first_seq: None,
            last_seq: None,
            gaps: 0,
            out_of_order: 0,
            window_packets: 0,
            window_bytes: 0,
            window_gaps: 0,
            latency: small_hist(),
            negative_latency: 0,
            jitter_max_ns: 0,
            jitter_sum_ns: 0,
            jitter_count: 0,
            verified: 0,
            verify_failures: 0,
            verify_error: None,
            fallbacks: 0,
            close_code: None,
            first_packet_unix: None,
            reached_target: false,
            multi_frame_reads: 0,
            answers_sent: 0,
            answers_skipped: 0,
            last_arrival: None,
        }
    }

    fn fail_check(&mut self, what: String) {
        self.verify_failures += 1;
        self.verify_error.get_or_insert(what);
    }
}

impl Stats {
    /// Handles one message; returns whether the client reached the packet target, and the
    /// sequence number when the message was a data packet (to answer in closed loop).
    fn on_message(
        &mut self,
        format: Format,
        payload: &[u8],
        frame_len: usize,
        ctx: &mut Ctx<'_>,
        times: Times,
    ) -> (bool, Option<u64>) {
        if !self.metadata {
            match decode::full(format, payload) {
                Ok(Message::Metadata { num_channels }) => {
                    self.metadata = true;
                    self.num_channels = Some(num_channels);
                }
                Ok(Message::Data(..)) => {
                    self.fail_check("data before metadata".into());
                }
                Err(e) => self.fail_check(format!("first message: {e}")),
            }
            return (false, None);
        }
        let head = match decode::fast(format, payload) {
            Some(head) => {
                let check = ctx.verify_every > 0 && self.packets % ctx.verify_every == 0;
                if check {
                    self.verify(format, payload, head);
                }
                head
            }
            None => {
                self.fallbacks += 1;
                match decode::full(format, payload) {
                    Ok(Message::Data(head, _)) => head,
                    Ok(Message::Metadata { .. }) => {
                        self.fail_check("second metadata message".into());
                        return (false, None);
                    }
                    Err(e) => {
                        self.fail_check(e);
                        return (false, None);
                    }
                }
            }
        };
        (
            self.on_data(head, frame_len, ctx, times),
            Some(head.sequence),
        )
    }

    fn verify(&mut self, format: Format, payload: &[u8], fast: Head) {
        self.verified += 1;
        match decode::full(format, payload) {
            Ok(Message::Data(head, channels)) => {
                // serde_json's default float parsing may be one ulp off the exact value
                // that `str::parse` gives, so timestamps are compared to within 1 µs.
                let same = head.sequence == fast.sequence
                    && (head.timestamp - fast.timestamp).abs() < 1e-6;
                if !same {
                    self.fail_check(format!("fast path read {fast:?}, full decode {head:?}"));
                } else if Some(channels as u64) != self.num_channels {
                    self.fail_check(format!(
                        "{channels} spike counts, metadata says {:?}",
                        self.num_channels
                    ));
                }
            }
            Ok(other) => self.fail_check(format!("expected data, got {other:?}")),
            Err(e) => self.fail_check(e),
        }
    }

    fn on_data(&mut self, head: Head, frame_len: usize, ctx: &mut Ctx<'_>, times: Times) -> bool {
        let s = self;
        s.packets += 1;
        s.bytes += frame_len as u64;
        s.first_packet_unix.get_or_insert(times.kernel);
        s.first_seq.get_or_insert(head.sequence);
        let mut consecutive = false;
        match s.last_seq {
            Some(last) if head.sequence == last + 1 => consecutive = true,
            Some(last) if head.sequence > last + 1 => {
                let missing = head.sequence - last - 1;
                s.gaps += missing;
                if ctx.measuring {
                    s.window_gaps += missing;
                }
            }
            Some(_) => s.out_of_order += 1,
            None => {}
        }
        s.last_seq = Some(s.last_seq.map_or(head.sequence, |l| l.max(head.sequence)));
        if ctx.measuring {
            s.window_packets += 1;
            s.window_bytes += frame_len as u64;
            let latency = times.kernel - head.timestamp;
            if latency < 0.0 {
                s.negative_latency += 1;
            }
            let to_ns = |seconds: f64| ((seconds.max(0.0) * 1e9) as u64).max(1);
            let latency_ns = to_ns(latency);
            s.latency.saturating_record(latency_ns);
            ctx.overall.latency.saturating_record(latency_ns);
            ctx.overall
                .latency_user
                .saturating_record(to_ns(times.user - head.timestamp));
            if let Some((seq, at)) = s.last_arrival {
                if consecutive && seq + 1 == head.sequence {
                    let jitter = to_ns((times.kernel - at - PERIOD.as_secs_f64()).abs());
                    ctx.overall.jitter.saturating_record(jitter);
                    s.jitter_max_ns = s.jitter_max_ns.max(jitter);
                    s.jitter_sum_ns += jitter;
                    s.jitter_count += 1;
                }
            }
        }
        s.last_arrival = Some((head.sequence, times.kernel));
        if let Some(target) = ctx.target_packets {
            if ctx.measuring && !s.reached_target && s.window_packets >= target {
                s.reached_target = true;
                return true;
            }
        }
        false
    }
}

/// Why a client closed when the run ended it.
pub const END_OF_RUN: &str = "closed at the end of the run";

/// Where a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Streaming.
    Open,
    /// Ended: by the server, an error, or the end of the run.
    Closed(String),
    /// Never connected.
    Failed(String),
}

/// Receive buffer: bytes `start..end` of `data` are unparsed.
struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    fn new(leftover: &[u8]) -> Self {
        let mut data = vec![0u8; (leftover.len() + READ_CHUNK).next_power_of_two()];
        data[..leftover.len()].copy_from_slice(leftover);
        Self {
            data,
            start: 0,
            end: leftover.len(),
        }
    }

    /// Free space for a read of at least [`READ_CHUNK`] bytes.
    fn spare(&mut self) -> Result<&mut [u8], String> {
        if self.data.len() - self.end < READ_CHUNK {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < READ_CHUNK {
                if self.data.len() > MAX_FRAME + READ_CHUNK {
                    return Err("receive buffer over its limit".into());
                }
                self.data.resize(self.data.len() * 2, 0);
            }
        }
        Ok(&mut self.data[self.end..])
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// One client.
pub struct Client {
    /// Index over the whole run.
    pub id: usize,
    /// Session index.
    pub session: usize,
    /// Wire format.
    pub format: Format,
    /// Local address: the `remote` the server reports for this client.
    pub local: Option<SocketAddr>,
    /// Where it is.
    pub state: State,
    /// Measurements.
    pub stats: Stats,
    /// Time the WebSocket handshake took.
    pub connect_time: Duration,
    stream: Option<TcpStream>,
    buf: RecvBuf,
    close_sent: bool,
    /// The unwritten tail of a frame the socket took only part of; it is written before any
    /// other frame, because starting a new frame mid-frame would corrupt the stream.
    out: Vec<u8>,
}

impl Client {
    /// A connected client (socket switched to non-blocking) with the bytes read past the
    /// handshake.
    pub fn connected(
        id: usize,
        session: usize,
        format: Format,
        upgraded: ws::Upgraded,
        connect_time: Duration,
    ) -> io::Result<Self> {
        let stream = upgraded.stream;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        enable_rx_timestamps(&stream)?;
        Ok(Self {
            id,
            session,
            format,
            local: stream.local_addr().ok(),
            state: State::Open,
            stats: Stats::new(),
            connect_time,
            stream: Some(stream),
            buf: RecvBuf::new(&upgraded.leftover),
            close_sent: false,
            out: Vec::new(),
        })
    }

    /// A client that could not connect.
    pub fn failed(id: usize, session: usize, format: Format, error: String) -> Self {
        Self {
            id,
            session,
            format,
            local: None,
            state: State::Failed(error),
            stats: Stats::new(),
            connect_time: Duration::ZERO,
            stream: None,
            buf: RecvBuf::new(&[]),
            close_sent: false,
            out: Vec::new(),
        }
    }

    /// The socket's descriptor, while open.
    pub fn fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(|s| s.as_raw_fd())
    }

    /// Whether it is streaming.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Reads what the socket has and handles every complete frame. Returns true when this
    /// read made the client reach the run's packet target.
    pub fn on_readable(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut reached = false;
        while self.is_open() {
            let Some(fd) = self.fd() else {
                return reached;
            };
            let spare = match self.buf.spare() {
                Ok(spare) => spare,
                Err(e) => {
                    self.close(e);
                    return reached;
                }
            };
            let room = spare.len();
            match recv_stamped(fd, spare) {
                Ok((0, _)) => {
                    let why = match self.stats.close_code {
                        Some(code) => format!("closed by server ({code})"),
                        None => "connection closed by server".into(),
                    };
                    self.close(why);
                }
                Ok((n, stamp)) => {
                    self.buf.end += n;
                    reached |= self.process(ctx, stamp);
                    // Level-triggered epoll reports anything left; only a full read may hide more.
                    if n < room {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.close(format!("read: {e}")),
            }
        }
        reached
    }

    /// Handles the complete frames in the buffer (also the bytes read with the handshake).
    /// `stamp` is the kernel's receive time of the bytes just read, if known.
    pub fn process(&mut self, ctx: &mut Ctx<'_>, stamp: Option<f64>) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let times = Times {
            user: now,
            kernel: stamp.unwrap_or(now),
        };
        let mut reached = false;
        let mut data_frames = 0;
        while self.is_open() {
            let frame = match ws::parse_frame(self.buf.pending()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.close(format!("protocol error: {e}"));
                    break;
                }
            };
            data_frames += usize::from(matches!(frame.kind, Kind::Text | Kind::Binary));
            reached |= self.on_frame(frame, ctx, times);
            self.buf.consume(frame.len);
        }
        if data_frames > 1 {
            self.stats.multi_frame_reads += 1;
        }
        reached
    }

    fn on_frame(&mut self, frame: FrameAt, ctx: &mut Ctx<'_>, times: Times) -> bool {
        let expected = match self.format {
            Format::Json => Kind::Text,
            Format::Msgpack => Kind::Binary,
        };
        let (start, end) = frame.payload;
        match frame.kind {
            Kind::Close(code) => {
                self.stats.close_code = code;
                if !self.close_sent {
                    let reply = ws::close_frame();
                    self.send(&reply);
                }
                self.close(format!("closed by server ({})", code.unwrap_or(1005)));
                false
            }
            Kind::Ping => {
                let payload = self.buf.pending()[start..end].to_vec();
                let pong = ws::client_frame(OpCode::Control(Control::Pong), payload);
                self.send(&pong);
                false
            }
            Kind::Pong => false,
            kind if kind != expected => {
                self.close(format!("{kind:?} frame on a {:?} stream", self.format));
                false
            }
            _ => {
                let payload = &self.buf.pending()[start..end];
                let (reached, sequence) =
                    self.stats
                        .on_message(self.format, payload, frame.len, ctx, times);
                if let (true, Some(sequence)) = (ctx.closed_loop, sequence) {
                    self.answer(sequence);
                }
                reached
            }
        }
    }

    /// Closed loop: answers packet `sequence` as a decoder would, on the worker's thread right
    /// after the read that delivered it, never waiting for the socket.
    fn answer(&mut self, sequence: u64) {
        let mut frame = [0u8; ws::ANSWER_MAX];
        // Varies per packet and client; RFC 6455 requires a mask, not a secret one here.
        let mask = (sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.id as u64) as u32;
        let len = ws::answer_frame(&mut frame, sequence, mask.to_le_bytes());
        if self.write_frame(&frame[..len]) {
            self.stats.answers_sent += 1;
        } else {
            self.stats.answers_skipped += 1;
        }
    }

    /// Writes the tail of an earlier partial frame; true when none is left.
    fn flush(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        if !self.out.is_empty() {
            if let Ok(n) = stream.write(&self.out) {
                self.out.drain(..n);
            }
        }
        self.out.is_empty()
    }

    /// Non-blocking write of one whole frame after any earlier tail: false (nothing written)
    /// if the tail is still pending or the socket takes nothing; if it takes part, the rest is
    /// kept for the next write. Write errors are left to the reads to notice (the server
    /// closing), so that a failed close frame at the end of the run is not a failure.
    fn write_frame(&mut self, frame: &[u8]) -> bool {
        if !self.flush() {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        match stream.write(frame) {
            Ok(n) => {
                self.out.extend_from_slice(&frame[n..]);
                true
            }
            Err(_) => false,
        }
    }

    /// Best-effort write of a small control frame (non-blocking; dropped if it does not fit).
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.write_frame(bytes);
    }

    /// Starts the close handshake at the end of the run.
    pub fn send_close(&mut self) {
        if self.is_open() && !self.close_sent {
            let frame = ws::close_frame();
            self.send(&frame);
            self.close_sent = true;
        }
    }

    /// Marks the client closed and releases its socket. After the run's own close frame,
    /// however the connection ends counts as the end of the run.
    pub fn close(&mut self, why: String) {
        if self.is_open() {
            self.state = State::Closed(if self.close_sent {
                END_OF_RUN.to_string()
            } else {
                why
            });
        }
        self.stream = None;
    }
}
