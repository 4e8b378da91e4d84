#!/usr/bin/env python3
"""Independent stream checker, written only from the wire format in DESIGN.md.

Connects S sessions x C clients (JSON or MessagePack) to a running PhantomLink server on
127.0.0.1, streams for a fixed time, and checks every message against the schema, the packet
rate (40 Hz) and sequence continuity. Exits non-zero on any violation.

    pip install websockets msgpack
    python3 tools/check_stream.py --url ws://127.0.0.1:8000 --sessions 20 --clients 1 --seconds 30
"""
import argparse
import asyncio
import json
import sys
import time

import msgpack
import websockets

NUMBER = (int, float)
META_DATA = {"dataset": str, "total_packets": int, "frequency_hz": int, "num_channels": int,
             "duration_seconds": NUMBER, "num_trials": int}
DATA_FIELDS = {"timestamp": NUMBER, "sequence_number": int, "spikes": dict, "kinematics": dict,
               "intention": dict, "trial_id": (int, type(None)), "trial_time_ms": NUMBER,
               "bin_index": int, "trial_elapsed_ms": (int, float, type(None))}
KINEMATICS = ("vx", "vy", "x", "y")
INTENTION = ("target_id", "target_x", "target_y", "distance_to_target")


def check_metadata(msg, code, errors):
    if msg.get("type") != "metadata":
        errors.append(f"first message is not metadata: {msg.get('type')!r}")
        return None
    data = msg.get("data", {})
    for key, kind in META_DATA.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            errors.append(f"metadata.data.{key} has wrong type: {data.get(key)!r}")
    if data.get("frequency_hz") != 40:
        errors.append(f"frequency_hz is {data.get('frequency_hz')}, expected 40")
    session = msg.get("session", {})
    if session.get("code") != code or not str(session.get("url", "")).startswith(("ws://", "wss://")):
        errors.append(f"metadata.session wrong: {session!r}")
    return data


def check_data(msg, meta, errors):
    if msg.get("type") != "data":
        errors.append(f"message type {msg.get('type')!r}, expected data")
        return None
    data = msg.get("data", {})
    if set(data) < set(DATA_FIELDS):
        errors.append(f"data fields missing: {sorted(set(DATA_FIELDS) - set(data))}")
        return None
    for key, kind in DATA_FIELDS.items():
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            errors.append(f"data.{key} has wrong type: {data[key]!r}")
    spikes = data["spikes"]
    ids, counts = spikes.get("channel_ids"), spikes.get("spike_counts")
    n = meta["num_channels"]
    if ids != list(range(n)) or not isinstance(counts, list) or len(counts) != n:
        errors.append("spikes.channel_ids / spike_counts malformed")
    elif any(not isinstance(c, int) or c < 0 for c in counts):
        errors.append("negative or non-integer spike count")
    if spikes.get("bin_size_ms") != 25.0:
        errors.append(f"bin_size_ms is {spikes.get('bin_size_ms')}")
    for key in KINEMATICS:
        if not isinstance(data["kinematics"].get(key), NUMBER):
            errors.append(f"kinematics.{key} is {data['kinematics'].get(key)!r}")
    intention = data["intention"]
    for key in INTENTION:
        if key not in intention:
            errors.append(f"intention.{key} missing")
    inside = data["trial_id"] is not None
    if inside and intention.get("target_id") is None:
        errors.append("inside a trial but target_id is null")
    if not inside and (data["trial_elapsed_ms"] is not None or intention.get("target_id") is not None):
        errors.append("outside a trial but trial fields are not null")
    if not 0 <= data["bin_index"] < meta["total_packets"]:
        errors.append(f"bin_index {data['bin_index']} out of range")
    if abs(data["trial_time_ms"] - data["bin_index"] * 25.0) > 1e-6:
        errors.append("trial_time_ms != bin_index * 25")
    if abs(data["timestamp"] - time.time()) > 5:
        errors.append("timestamp is not current Unix time")
    return data


async def client(url, code, binary, seconds, report):
    path = f"{url}/stream/binary/{code}" if binary else f"{url}/stream/{code}"
    errors, seqs, bins, arrivals = [], [], {}, []
    async with websockets.connect(path, max_size=2**20) as ws:
        decode = (lambda raw: msgpack.unpackb(raw, raw=False)) if binary else json.loads
        meta = check_metadata(decode(await ws.recv()), code, errors)
        if meta is None:
            report.append((code, errors, seqs, bins, arrivals))
            return
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            raw = await asyncio.wait_for(ws.recv(), timeout=5)
            if isinstance(raw, (bytes, bytearray)) != binary:
                errors.append("frame type does not match the endpoint")
            data = check_data(decode(raw), meta, errors)
            if data is not None:
                seqs.append(data["sequence_number"])
                bins[data["sequence_number"]] = data["bin_index"]
                arrivals.append(time.monotonic())
            if len(errors) > 20:
                break
        report.append((code, errors, seqs, bins, arrivals))


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1, help="clients per session")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--format", choices=["json", "msgpack"], default="json")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed |rate - 40| in Hz (default 0.1 for runs >= 30 s, else 0.5)")
    args = parser.parse_args()
    if not args.url.startswith(("ws://127.", "ws://localhost")):
        sys.exit("only loopback servers are checked")
    report = []
    prefix = f"check-{int(time.time())}"
    tasks = [client(args.url, f"{prefix}-{s}", args.format == "msgpack", args.seconds, report)
             for s in range(args.sessions) for _ in range(args.clients)]
    await asyncio.gather(*tasks)
    violations, gaps, rates = 0, 0, []
    by_session = {}
    for code, errors, seqs, bins, arrivals in report:
        violations += len(errors)
        for e in errors[:3]:
            print(f"  {code}: {e}")
        gaps += sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
        if len(arrivals) > 1:
            rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
        by_session.setdefault(code, []).append(bins)
    # Clients of one session share one timeline: a sequence number means the same bin for all.
    shared = all(a[seq] == b[seq] for clients in by_session.values() for a in clients
                 for b in clients for seq in a.keys() & b.keys())
    lo, hi = (min(rates), max(rates)) if rates else (0, 0)
    # Arrival jitter at both ends of the window bounds how exactly a rate can be measured.
    tolerance = args.tolerance if args.tolerance else 0.1 if args.seconds >= 30 else 0.5
    print(f"{len(report)} clients, {args.format}, {args.seconds:.0f} s: "
          f"{violations} schema violations, {gaps} sequence gaps, rate {lo:.3f}-{hi:.3f} Hz, "
          f"shared timelines: {shared}")
    ok = violations == 0 and gaps == 0 and rates and shared and all(abs(r - 40) <= tolerance for r in rates)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
