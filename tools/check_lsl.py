#!/usr/bin/env python3
"""Checks a PhantomLink server's LSL outlets with pylsl (an independent liblsl build).

Against a server started with ``--lsl`` (built with ``--features lsl``), it creates a session
and, with no WebSocket client on that session, resolves its three outlets on this machine
only, pulls samples for ``--seconds`` and checks that

- each stream has the advertised type, format, channel count, 40 Hz nominal rate and channel
  labels and units;
- samples arrive at 40 Hz with timestamps exactly 25 ms apart (within 0.1 ms);
- their values are packet-table rows: neural counts, kinematics and intention equal the
  WebSocket packets of the same bins, read from a second session seeked to those bins.

LSL discovery must not leave this machine: ``LSLAPICFG`` must name a configuration with
``[multicast] ResolveScope = machine`` and ``[ports] IPv6 = disable`` (the repository's
``lsl_api.cfg``); the script refuses to run otherwise.

    pip install pylsl websockets
    LSLAPICFG=$PWD/lsl_api.cfg python3 tools/check_lsl.py --url http://127.0.0.1:8000

Exits 0 when every check passes, 1 otherwise, 2 on bad usage.
"""

import argparse
import configparser
import json
import math
import os
import struct
import sys
import time
import urllib.request

STREAMS = ("Neural", "Kinematics", "Intention")
KINEMATICS = [("vx", "mm/s"), ("vy", "mm/s"), ("x", "mm"), ("y", "mm")]
INTENTION = [("target_id", "id"), ("target_x", "mm"), ("target_y", "mm"), ("trial_id", "id")]


def fail(message):
    print(f"lsl check: FAIL: {message}")
    sys.exit(1)


def machine_only_config():
    """Refuses to touch LSL unless LSLAPICFG keeps discovery on this machine."""
    path = os.environ.get("LSLAPICFG")
    if not path or not os.path.isfile(path):
        print("lsl check: set LSLAPICFG to a machine-scope lsl_api.cfg (the repository's)")
        sys.exit(2)
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read(path)
    scope = parser.get("multicast", "ResolveScope", fallback="site").strip().lower()
    ipv6 = parser.get("ports", "IPv6", fallback="allow").strip().lower()
    if scope != "machine" or ipv6 not in ("disable", "disabled"):
        print(f"lsl check: {path} must set ResolveScope = machine and IPv6 = disable")
        sys.exit(2)
    return path


def http(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def f32(x):
    """`x` rounded to float32, as the outlets send it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def channels(info):
    out = []
    channel = info.desc().child("channels").child("channel")
    while not channel.empty():
        out.append((channel.child_value("label"), channel.child_value("unit")))
        channel = channel.next_sibling()
    return out


def open_inlet(pylsl, name):
    found = pylsl.resolve_byprop("name", name, 1, 5.0)
    if len(found) != 1:
        fail(f"{name}: resolved {len(found)} streams on this machine, wanted 1")
    inlet = pylsl.StreamInlet(found[0], max_buflen=360, recover=False)
    inlet.open_stream(timeout=5.0)
    return inlet, inlet.info(timeout=5.0)


def reference_rows(base, ws_base, code, first_bin, last_bin):
    """Packets of bins first_bin..last_bin from a second session, over WebSocket."""
    from websockets.sync.client import connect

    rows = {}
    with connect(f"{ws_base}/stream/{code}", open_timeout=10) as ws:
        meta = json.loads(ws.recv(timeout=10))
        if meta.get("type") != "metadata":
            fail(f"reference session: first message is {meta.get('type')}")
        http(base, "POST", f"/api/control/{code}/seek", {"packet_id": first_bin})
        deadline = time.monotonic() + (last_bin - first_bin) * 0.025 + 15
        while time.monotonic() < deadline:
            data = json.loads(ws.recv(timeout=5))["data"]
            b = data["bin_index"]
            if first_bin <= b <= last_bin:
                rows[b] = data
            if len(rows) == last_bin - first_bin + 1:
                break
    if len(rows) != last_bin - first_bin + 1:
        fail(f"reference session sent {len(rows)} of bins {first_bin}..{last_bin}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server HTTP base URL")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to pull samples")
    parser.add_argument("--prefix", default="PhantomLink", help="stream name prefix")
    parser.add_argument("--source-id", default="phantomlink", help="source id prefix")
    args = parser.parse_args()
    config = machine_only_config()

    import pylsl  # after the configuration check: liblsl reads LSLAPICFG on first use

    base = args.url.rstrip("/")
    ws_base = "ws" + base[len("http"):]
    code = f"lslcheck-{os.getpid()}"
    reference = f"lslcheck-ref-{os.getpid()}"
    print(f"lsl check: liblsl {pylsl.library_version()} (pylsl), config {config}")
    stats = http(base, "GET", "/api/stats")["lsl_streaming"]
    if not stats.get("enabled"):
        fail(f"the server does not publish LSL (start it with --lsl): {stats}")
    http(base, "POST", f"/api/sessions/create?custom_code={code}")
    try:
        check(pylsl, args, base, ws_base, code, reference)
    finally:
        for session in (code, reference):
            try:
                http(base, "DELETE", f"/api/sessions/{session}")
            except Exception:  # the reference may not exist, or still be closing
                pass


def check(pylsl, args, base, ws_base, code, reference):
    inlets = {}
    for kind in STREAMS:
        name = f"{args.prefix}-{kind}-{code}"
        inlet, info = open_inlet(pylsl, name)
        inlets[kind] = inlet
        want_type = "EEG" if kind == "Neural" else kind
        want_format = pylsl.cf_int32 if kind == "Neural" else pylsl.cf_float32
        source_id = f"{args.source_id}-{code}-{kind.lower()}"
        problems = []
        if info.type() != want_type:
            problems.append(f"type {info.type()!r}")
        if info.channel_format() != want_format:
            problems.append(f"format {info.channel_format()}")
        if info.nominal_srate() != 40.0:
            problems.append(f"rate {info.nominal_srate()}")
        if info.source_id() != source_id:
            problems.append(f"source id {info.source_id()!r}")
        labels = channels(info)
        if len(labels) != info.channel_count():
            problems.append(f"{len(labels)} channel descriptions for {info.channel_count()}")
        if kind == "Kinematics" and labels != KINEMATICS:
            problems.append(f"channels {labels}")
        if kind == "Intention" and labels != INTENTION:
            problems.append(f"channels {labels}")
        if kind == "Neural" and labels and labels[0][1] != "count":
            problems.append(f"unit {labels[0][1]!r}")
        if problems:
            fail(f"{name}: " + ", ".join(problems))
        print(f"lsl: {name}: type {info.type()}, {info.channel_count()} channels, "
              f"{info.nominal_srate():g} Hz, source id {info.source_id()}, "
              f"channels {labels[0][0]}..{labels[-1][0]}")

    samples = {kind: [] for kind in STREAMS}
    stamps = {kind: [] for kind in STREAMS}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for kind, inlet in inlets.items():
            chunk, ts = inlet.pull_chunk(timeout=0.0, max_samples=1024)
            samples[kind].extend(chunk)
            stamps[kind].extend(ts)
        time.sleep(0.05)
    time.sleep(0.1)
    for kind, inlet in inlets.items():
        chunk, ts = inlet.pull_chunk(timeout=0.0, max_samples=1024)
        samples[kind].extend(chunk)
        stamps[kind].extend(ts)
    position = http(base, "GET", f"/api/control/{code}/position")
    session = http(base, "GET", f"/api/sessions/{code}")
    if session["active_connections"] != 0:
        fail(f"session {code} has {session['active_connections']} WebSocket clients")

    wanted = int(args.seconds * 40 * 0.9)
    for kind in STREAMS:
        ts = stamps[kind]
        if len(ts) < wanted:
            fail(f"{kind}: {len(ts)} samples in {args.seconds:g} s, wanted at least {wanted}")
        gaps = [(b - a) * 1e3 for a, b in zip(ts, ts[1:])]
        rate = (len(ts) - 1) / (ts[-1] - ts[0])
        if any(abs(g - 25.0) > 0.1 for g in gaps):
            fail(f"{kind}: timestamp spacing {min(gaps):.4f}..{max(gaps):.4f} ms, wanted 25 ± 0.1")
        print(f"lsl: {kind}: {len(ts)} samples in {args.seconds:g} s without a WebSocket client, "
              f"{rate:.3f} Hz, spacing {min(gaps):.4f}..{max(gaps):.4f} ms")

    # Which bins were pulled: the neural samples, counted back from the session's position.
    # Read them from a second session seeked there and match the rows one by one.
    n = len(samples["Neural"])
    newest = position["current_index"] - 1
    first, last = max(0, newest - n - 80), newest + 5
    rows = reference_rows(base, ws_base, reference, first, last)
    by_counts = {}
    for b, data in rows.items():
        by_counts.setdefault(tuple(data["spikes"]["spike_counts"]), []).append(b)
    anchor = by_counts.get(tuple(samples["Neural"][0]), [])
    if len(anchor) != 1:
        fail(f"first neural sample matches {len(anchor)} rows of {first}..{last}")
    t0, b0 = stamps["Neural"][0], anchor[0]

    def row_at(t):
        b = b0 + round((t - t0) / 0.025)
        if b not in rows:
            fail(f"no reference row for bin {b}")
        return b, rows[b]

    checked = 0
    for kind in STREAMS:
        for sample, t in zip(samples[kind], stamps[kind]):
            b, data = row_at(t)
            if kind == "Neural":
                expected = data["spikes"]["spike_counts"]
                same = list(sample) == expected
            elif kind == "Kinematics":
                k = data["kinematics"]
                expected = [f32(k[f]) for f in ("vx", "vy", "x", "y")]
                same = [f32(v) for v in sample] == expected
            else:
                i = data["intention"]
                expected = [
                    -1.0 if i["target_id"] is None else float(i["target_id"]),
                    math.nan if i["target_x"] is None else f32(i["target_x"]),
                    math.nan if i["target_y"] is None else f32(i["target_y"]),
                    -1.0 if data["trial_id"] is None else float(data["trial_id"]),
                ]
                same = all(
                    (math.isnan(e) and math.isnan(v)) or f32(v) == e
                    for v, e in zip(sample, expected)
                )
            if not same:
                fail(f"{kind} at bin {b}: {list(sample)[:6]} != {expected[:6]}")
            checked += 1
    print(f"lsl: {checked} samples of 3 streams equal packet-table rows {b0}.."
          f"{b0 + round((stamps['Neural'][-1] - t0) / 0.025)} "
          f"(WebSocket packets of the same bins, session {reference})")
    lsl = http(base, "GET", f"/metrics?session={code}")["metrics"]["sessions"][code]["lsl"]
    latency = lsl["push_latency_ms"]
    print(f"lsl: server push latency p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms, "
          f"max {latency['max']:.3f} ms over {latency['count']} ticks; dropped {lsl['dropped']}")
    print("lsl check: OK")


if __name__ == "__main__":
    main()
