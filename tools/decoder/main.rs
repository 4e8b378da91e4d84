//! `phantomlink-decoder`: an example closed-loop client.
//!
//! Connects to a session, trains a ridge decoder (lagged spike counts → velocity) on the first
//! `--train-seconds` of the stream, using the stream's own kinematics as targets, then answers
//! every packet with `{"type": "decoded", "sequence_number": N, "vx": .., "vy": ..}`. The
//! server matches each answer to its packet and reports round-trip latency and decoding error
//! per client in `/metrics` (`clients[].decoder`). `--zero` answers zeros instead: the
//! baseline a real decoder must beat.
//!
//! ```sh
//! cargo run --release --bin phantomlink-decoder -- --url ws://127.0.0.1:8000/stream/my-session
//! ```

use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use phantomlink::decoder::{RidgeDecoder, RidgeTrainer, SpikeHistory};
use serde_json::{json, Value};
use tungstenite::{stream::MaybeTlsStream, Message, WebSocket};

/// Example closed-loop decoder for PhantomLink.
#[derive(Debug, Parser)]
#[command(name = "phantomlink-decoder", version)]
struct Args {
    /// Stream URL (JSON `/stream/{code}` or MessagePack `/stream/binary/{code}`).
    #[arg(long, default_value = "ws://127.0.0.1:8000/stream/decoder-demo")]
    url: String,
    /// Seconds of stream to train on before answering.
    #[arg(long, default_value_t = 60.0)]
    train_seconds: f64,
    /// Train on this many packets instead of `--train-seconds` (the same data however busy
    /// the machine is).
    #[arg(long)]
    train_packets: Option<usize>,
    /// Seconds to answer for after training (0: until the stream ends).
    #[arg(long, default_value_t = 0.0)]
    run_seconds: f64,
    /// Bins of spike history per prediction.
    #[arg(long, default_value_t = 3)]
    history: usize,
    /// Ridge penalty.
    #[arg(long, default_value_t = 100.0)]
    ridge: f64,
    /// Answer zeros (a baseline); still waits `--train-seconds` first, so a zero and a
    /// trained decoder started together answer the same packets.
    #[arg(long)]
    zero: bool,
}

struct Packet {
    sequence: u64,
    counts: Vec<u16>,
    velocity: [f64; 2],
}

fn parse(message: Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(&text).ok(),
        Message::Binary(bytes) => rmp_serde::from_slice(&bytes).ok(),
        _ => None,
    }
}

fn packet(value: &Value) -> Option<Packet> {
    let data = value.get("data")?;
    if value.get("type")? != "data" {
        return None;
    }
    let counts = data["spikes"]["spike_counts"]
        .as_array()?
        .iter()
        .map(|c| c.as_u64().map(|c| c.min(u64::from(u16::MAX)) as u16))
        .collect::<Option<Vec<u16>>>()?;
    Some(Packet {
        sequence: data["sequence_number"].as_u64()?,
        counts,
        velocity: [
            data["kinematics"]["vx"].as_f64()?,
            data["kinematics"]["vy"].as_f64()?,
        ],
    })
}

fn answer(
    ws: &mut WebSocket<MaybeTlsStream<TcpStream>>,
    binary: bool,
    sequence: u64,
    v: [f64; 2],
) -> Result<(), String> {
    let message = json!({"type": "decoded", "sequence_number": sequence, "vx": v[0], "vy": v[1]});
    let frame = if binary {
        Message::Binary(rmp_serde::to_vec_named(&message).map_err(|e| e.to_string())?)
    } else {
        Message::Text(message.to_string())
    };
    ws.send(frame).map_err(|e| format!("send failed: {e}"))
}

fn run(args: &Args) -> Result<(), String> {
    let binary = args.url.contains("/stream/binary/");
    let (mut ws, _) = tungstenite::connect(args.url.as_str())
        .map_err(|e| format!("cannot connect to {}: {e}", args.url))?;
    if let MaybeTlsStream::Plain(stream) = ws.get_ref() {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
    }
    let metadata = parse(ws.read().map_err(|e| e.to_string())?).ok_or("no metadata message")?;
    let units = metadata["data"]["num_channels"]
        .as_u64()
        .ok_or("metadata without num_channels")? as usize;
    eprintln!(
        "connected: {units} channels; training for {} s",
        if args.zero { 0.0 } else { args.train_seconds }
    );

    let mut trainer = Some(RidgeTrainer::new(units, args.history, args.ridge));
    let mut history = SpikeHistory::new(units, args.history);
    let mut decoder: Option<RidgeDecoder> = None;
    let started = Instant::now();
    let mut answering_since: Option<Instant> = None;
    let mut seen = 0usize;
    let (mut answered, mut sse, mut sst, mut sum, mut n) = (0u64, 0.0, 0.0, [0.0; 2], 0.0);
    let mut truth_seen = Vec::new();
    loop {
        if let Some(since) = answering_since {
            if args.run_seconds > 0.0 && since.elapsed().as_secs_f64() >= args.run_seconds {
                break;
            }
        }
        let message = match ws.read() {
            Ok(message) => message,
            Err(e) => {
                eprintln!("stream ended: {e}");
                break;
            }
        };
        let Some(p) = parse(message).as_ref().and_then(packet) else {
            continue;
        };
        history.push(&p.counts);
        if !history.is_full() {
            continue;
        }
        if let Some(t) = trainer.as_mut() {
            if !args.zero {
                t.add(&history, p.velocity);
            }
            seen += 1;
            let training = match args.train_packets {
                Some(packets) => seen < packets,
                None => started.elapsed().as_secs_f64() < args.train_seconds,
            };
            if training {
                continue;
            }
            let t = trainer.take().ok_or("trainer gone")?;
            let samples = t.samples();
            if !args.zero {
                decoder = Some(t.finish()?);
                eprintln!("trained on {samples} packets; answering");
            }
            answering_since.get_or_insert_with(Instant::now);
        }
        let decoded = match decoder.as_mut() {
            Some(d) => d.predict(&history),
            None => [0.0, 0.0],
        };
        answer(&mut ws, binary, p.sequence, decoded)?;
        answered += 1;
        for d in 0..2 {
            sse += (decoded[d] - p.velocity[d]).powi(2);
            sum[d] += p.velocity[d];
        }
        n += 1.0;
        truth_seen.push(p.velocity);
    }
    for v in &truth_seen {
        for d in 0..2 {
            sst += (v[d] - sum[d] / n).powi(2);
        }
    }
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN };
    println!("answered {answered} packets; velocity R² {r2:.3} (own measurement)");
    let _ = ws.close(None);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
