#!/usr/bin/env python3
"""Write an NWB file with the MC_Maze layout, and reference values computed independently.

The file is written by pynwb (the real NWB writer), shaped like the DANDI 000128-000140
MC_Maze files: /units (ragged spike_times, obs_intervals, electrodes, heldout bool enum),
/processing/behavior (cursor_pos, eye_pos, hand_pos SpatialSeries, hand_vel TimeSeries) and
/intervals/trials (success, num_targets, ragged target_pos, active_target, go cue, move onset,
..., ragged barrier_pos, split strings).

Next to FILE.nwb it writes FILE.json with what PhantomLink's loader must produce, computed by a
path that shares nothing with the Rust reader:
  * spike counts from the generator's own integer 30 kHz ticks (no float on bin edges), after
    checking with h5py that the file holds exactly those spike times;
  * kinematics sampled from the generator's integer sample ticks with numpy searchsorted;
  * the trial table read back with h5py.

Binning rule (the loader's, see src/dataset/nwb/mod.rs): every time is put on the 30 kHz clock,
tick = round(t * 30000); t0 = tick of the first sample of the position series; bin k holds the
ticks [t0 + 750k, t0 + 750(k+1)); the bins cover t0 .. max(last position sample, last trial
stop), i.e. n_bins = (end - t0) // 750 + 1. Kinematics are the sample at or before the bin start
(the first sample if none is). Trial times are shifted by t0 (seconds), as are the other
trial columns whose name ends in "_time".

Usage (pip install pynwb h5py numpy):
  python3 tools/make_nwb_fixture.py OUT.nwb [flags]          # writes OUT.nwb and OUT.json
  python3 tools/make_nwb_fixture.py /tmp/mc_maze_full.nwb --full   # full size, for speed runs
The committed fixtures and the exact commands that made them: tests/fixtures/README.md.
"""

import argparse
import datetime
import json
import os
import sys

import numpy as np

TICK_HZ = 30_000
BIN_TICKS = 750  # 25 ms at 30 kHz
# Weight multiplier of the counts checksum (see checksum()); the Rust test uses the same.
CHECKSUM_MUL = 0x9E3779B97F4A7C15


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="path of the .nwb file to write; the reference goes to the same path with .json")
    p.add_argument("--units", type=int, default=24)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of behaviour")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--rate-hz", type=float, default=1000.0, help="behaviour sampling rate; 30000/rate must be an integer")
    p.add_argument("--spike-rate", type=float, default=12.0, help="mean firing rate per unit, Hz")
    p.add_argument("--start", type=float, default=0.0, help="time of the first behaviour sample, seconds")
    p.add_argument("--layout", choices=["gzip", "contiguous"], default="gzip")
    p.add_argument("--chunk-rows", type=int, default=0,
                   help="rows per gzip chunk (0: let h5py choose); small values exercise many chunks")
    p.add_argument("--timing", choices=["timestamps", "rate"], default="timestamps",
                   help="explicit timestamps, or starting_time + rate")
    p.add_argument("--no-link", action="store_true",
                   help="give each series its own timestamps dataset instead of linking them to cursor_pos's")
    p.add_argument("--no-hand-vel", action="store_true", help="omit hand_vel (loader falls back to d/dt hand_pos)")
    p.add_argument("--no-eye-pos", action="store_true")
    p.add_argument("--no-units", action="store_true", help="omit /units (an unusable file)")
    p.add_argument("--no-position", action="store_true", help="omit cursor_pos and hand_pos (an unusable file)")
    p.add_argument("--no-optional-trial-columns", action="store_true",
                   help="omit go_cue_time, move_onset_time, target_on_time, rt")
    p.add_argument("--no-spec", action="store_true", help="do not cache the NWB schema in the file (smaller)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--full", action="store_true",
                   help="full MC_Maze size: 182 units, 7200 s, ~3.4 M spikes, 2295 trials, gzip")
    p.add_argument("--rows", type=int, default=40, help="reference rows to record (besides the full matrix when small)")
    a = p.parse_args(argv)
    if a.full:
        # The generator adds 1/8 extra spikes on bin edges and spans 1 s more than the behaviour.
        a.units, a.duration, a.trials, a.spike_rate = 182, 7200.0, 2295, 3.4e6 / 182 / 7201 / 1.125
    if TICK_HZ % a.rate_hz != 0:
        p.error("--rate-hz must divide 30000 so samples lie on the 30 kHz clock")
    return a


# ----------------------------------------------------------------------------------------
# Generation: every time is an integer tick of the 30 kHz clock first, seconds second.
# ----------------------------------------------------------------------------------------

def generate(a, rng):
    g = {}
    step = int(TICK_HZ // a.rate_hz)
    start_tick = int(round(a.start * TICK_HZ))
    n = int(round(a.duration * a.rate_hz))
    g["sample_ticks"] = start_tick + step * np.arange(n, dtype=np.int64)
    t = g["sample_ticks"] / TICK_HZ

    # Smooth reaches: a sum of a few sines per axis, rounded to 0.01 mm like a cursor readout.
    def smooth(scale, k):
        out = np.zeros(n)
        for _ in range(k):
            f = rng.uniform(0.05, 0.8)
            out += scale * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
        return np.round(out, 2)

    g["cursor_pos"] = np.stack([smooth(60, 3), smooth(60, 3)], axis=1)
    g["hand_pos"] = np.round(g["cursor_pos"] + np.stack([smooth(3, 2), smooth(3, 2)], axis=1), 2)
    g["eye_pos"] = np.stack([smooth(40, 4), smooth(40, 4)], axis=1)
    vel = np.gradient(g["hand_pos"], t, axis=0)
    g["hand_vel"] = np.round(vel, 3)

    # Spikes: Poisson counts, uniform ticks; some start before the first sample and some after
    # the last, and many sit exactly on a bin edge or one tick either side of it.
    lo = start_tick - int(0.5 * TICK_HZ) if start_tick >= int(0.5 * TICK_HZ) else start_tick
    hi = int(g["sample_ticks"][-1]) + int(0.5 * TICK_HZ)
    g["spike_ticks"] = []
    for u in range(a.units):
        rate = a.spike_rate * rng.uniform(0.2, 1.8)
        k = rng.poisson(rate * (hi - lo) / TICK_HZ)
        ticks = rng.integers(lo, hi, size=k, dtype=np.int64)
        edges = start_tick + BIN_TICKS * rng.integers(0, max(1, (hi - start_tick) // BIN_TICKS), size=max(1, k // 8))
        edges = edges + rng.choice([0, 0, 0, -1, 1], size=edges.size)
        ticks = np.sort(np.concatenate([ticks, edges[edges >= 0]]))
        g["spike_ticks"].append(ticks)

    # Trials: back to back with gaps, inside the behaviour span; times on the 1 kHz clock.
    span = n * step
    per = span // max(1, a.trials)
    trials = []
    for i in range(a.trials):
        s = start_tick + i * per + int(rng.integers(0, per // 10 + 1))
        e = s + int(per * rng.uniform(0.6, 0.85))
        s, e = s - s % 30, e - e % 30
        num_targets = int(rng.integers(1, 5))
        target_pos = rng.integers(-140, 141, size=(num_targets, 2)).astype(np.int16)
        # Some trials have no barrier (an empty ragged row); the first always has one so the
        # column is never empty (hdmf refuses an index over no data).
        num_barriers = int(rng.integers(0 if i else 1, 4))
        barrier_pos = rng.integers(-100, 101, size=(num_barriers, 4)).astype(np.int16)
        target_on = s + int(rng.integers(3000, 9000))
        go = target_on + int(rng.integers(6000, 15000))
        onset = go + int(rng.integers(3000, 9000))
        trials.append(dict(
            start=s, stop=e, success=bool(rng.random() < 0.85), num_targets=num_targets,
            target_pos=target_pos, active_target=int(rng.integers(0, num_targets)),
            target_on_time=target_on / TICK_HZ, go_cue_time=go / TICK_HZ,
            move_onset_time=(onset / TICK_HZ) if rng.random() < 0.9 else float("nan"),
            rt=(onset - go) / TICK_HZ, delay=(go - target_on) / TICK_HZ,
            maze_id=int(rng.integers(1, 110)), trial_type=int(rng.integers(1, 30)),
            trial_version=int(rng.integers(0, 3)), num_barriers=num_barriers,
            barrier_pos=barrier_pos, split=["train", "val", "test"][int(rng.integers(0, 3))],
        ))
    g["trials"] = trials
    return g


# ----------------------------------------------------------------------------------------
# Writing with pynwb.
# ----------------------------------------------------------------------------------------

def write_nwb(a, g, path):
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import SpatialSeries

    gz = a.layout == "gzip"

    def chunks(data):
        if not a.chunk_rows:
            return True
        return (min(a.chunk_rows, len(data)),) + tuple(np.shape(data)[1:])

    def io(data):
        if not gz:
            return data
        return H5DataIO(data, compression="gzip", compression_opts=4, shuffle=True, chunks=chunks(data))

    nwb = NWBFile(
        session_description="MC_Maze-layout fixture for PhantomLink",
        identifier=f"phantomlink-fixture-{a.seed}",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    )

    if not a.no_position or not a.no_eye_pos:
        beh = nwb.create_processing_module("behavior", "behavioural data")
        stamps = g["sample_ticks"] / TICK_HZ
        first = None

        def add(name, cls, data, unit, extra):
            nonlocal first
            kw = dict(name=name, data=io(data), unit=unit, **extra)
            if a.timing == "rate":
                kw.update(starting_time=float(stamps[0]), rate=float(a.rate_hz))
            elif first is not None and not a.no_link:
                kw.update(timestamps=first)  # pynwb writes an HDF5 soft link to first's timestamps
            else:
                kw.update(timestamps=io(stamps.copy()))
            ts = cls(**kw)
            beh.add(ts)
            if first is None:
                first = ts

        sp = dict(reference_frame="screen centre")
        if not a.no_position:
            add("cursor_pos", SpatialSeries, g["cursor_pos"], "mm", sp)
        if not a.no_eye_pos:
            add("eye_pos", SpatialSeries, g["eye_pos"], "mm", sp)
        if not a.no_position:
            add("hand_pos", SpatialSeries, g["hand_pos"], "mm", sp)
            if not a.no_hand_vel:
                add("hand_vel", TimeSeries, g["hand_vel"], "mm/s", {})

    if not a.no_units:
        device = nwb.create_device("electrode array")
        group = nwb.create_electrode_group("M1", "motor cortex array", "M1", device)
        for _ in range(a.units):
            nwb.add_electrode(group=group, location="M1")
        nwb.add_unit_column("heldout", "held out for evaluation")
        for u, ticks in enumerate(g["spike_ticks"]):
            nwb.add_unit(spike_times=ticks / TICK_HZ, electrodes=[u], heldout=bool(u % 5 == 4),
                         obs_intervals=[[g["sample_ticks"][0] / TICK_HZ, g["sample_ticks"][-1] / TICK_HZ]])
        if gz:
            all_spikes = np.concatenate(g["spike_ticks"])
            nwb.units.spike_times.set_data_io(H5DataIO, dict(compression="gzip", compression_opts=4,
                                                             shuffle=True, chunks=chunks(all_spikes)))

    tr = g["trials"]
    if tr:
        for t in tr:
            nwb.add_trial(start_time=t["start"] / TICK_HZ, stop_time=t["stop"] / TICK_HZ)
        table = nwb.trials

        def col(name, desc, values, index=None):
            kw = {} if index is None else dict(index=index)
            table.add_column(name, desc, data=values, **kw)

        col("success", "reach completed", np.array([t["success"] for t in tr], dtype=bool))
        col("num_targets", "targets shown", np.array([t["num_targets"] for t in tr], dtype=np.uint8))
        ends = np.cumsum([t["num_targets"] for t in tr])
        col("target_pos", "target positions (mm)", np.concatenate([t["target_pos"] for t in tr]),
            index=list(map(int, ends)))
        col("active_target", "index of the target reached for",
            np.array([t["active_target"] for t in tr], dtype=np.uint8))
        if not a.no_optional_trial_columns:
            for name in ("target_on_time", "go_cue_time", "move_onset_time", "rt"):
                col(name, name, np.array([t[name] for t in tr], dtype=np.float64))
        col("delay", "delay period (s)", np.array([t["delay"] for t in tr], dtype=np.float64))
        for name in ("maze_id", "trial_type", "trial_version", "num_barriers"):
            col(name, name, np.array([t[name] for t in tr], dtype=np.uint8))
        bends = np.cumsum([t["num_barriers"] for t in tr])
        col("barrier_pos", "barriers (mm)", np.concatenate([t["barrier_pos"] for t in tr]).reshape(-1, 4),
            index=list(map(int, bends)))
        col("split", "data split", [t["split"] for t in tr])

    if os.path.exists(path):
        os.remove(path)
    with NWBHDF5IO(path, "w") as w:
        w.write(nwb, cache_spec=not a.no_spec)


# ----------------------------------------------------------------------------------------
# Reference values, by h5py + numpy and the generator's integer ticks.
# ----------------------------------------------------------------------------------------

def checksum(counts):
    """sum_i counts[i] * (i * CHECKSUM_MUL mod 2^64), mod 2^64, over the row-major matrix."""
    flat = counts.reshape(-1).astype(np.uint64)
    w = np.arange(flat.size, dtype=np.uint64) * np.uint64(CHECKSUM_MUL)  # wraps mod 2^64
    return int((flat * w).sum(dtype=np.uint64))


def bits(x):
    return [int(v) for v in np.asarray(x, dtype="<f8").view("<u8")]


def reference(a, g, path):
    import h5py

    ref = {"generator": {k: v for k, v in vars(a).items() if k != "output"}}
    with h5py.File(path, "r") as f:
        # The file must hold exactly the generated spike times (so the counts below, made from
        # integer ticks, are the counts of the file).
        if not a.no_units:
            st = f["units/spike_times"][:]
            idx = f["units/spike_times_index"][:]
            ref["spike_times_index_dtype"] = str(f["units/spike_times_index"].dtype)
            assert np.array_equal(np.rint(st * TICK_HZ).astype(np.int64), np.concatenate(g["spike_ticks"]))
            assert np.array_equal(idx, np.cumsum([len(t) for t in g["spike_ticks"]]))
        trials = f["intervals/trials"] if "intervals/trials" in f else None
        trial_cols = {}
        if trials is not None:
            for name in trials:
                if name == "id" or name.endswith("_index"):
                    continue
                d = trials[name]
                data = d[:]
                if h5py.check_string_dtype(d.dtype) is not None:
                    data = [s.decode() if isinstance(s, bytes) else s for s in data]
                if name + "_index" in trials:
                    ends = trials[name + "_index"][:]
                    starts = np.concatenate([[0], ends[:-1]])
                    data = [data[s:e] for s, e in zip(starts, ends)]
                trial_cols[name] = data

    if a.no_units or a.no_position:
        ref["error"] = "/units/spike_times" if a.no_units else "/processing/behavior/cursor_pos"
        return ref

    ticks = g["sample_ticks"]
    t0 = int(ticks[0])
    end = int(ticks[-1])
    if g["trials"]:
        end = max(end, max(t["stop"] for t in g["trials"]))
    n_bins = (end - t0) // BIN_TICKS + 1
    counts = np.zeros((n_bins, a.units), dtype=np.int64)
    dropped = 0
    for u, st in enumerate(g["spike_ticks"]):
        k = (st - t0) // BIN_TICKS  # floor division: exact half-open bins on integer ticks
        keep = (st >= t0) & (k < n_bins)
        dropped += int((~keep).sum())
        np.add.at(counts[:, u], k[keep], 1)
    starts = t0 + BIN_TICKS * np.arange(n_bins, dtype=np.int64)
    sample = np.maximum(np.searchsorted(ticks, starts, side="right") - 1, 0)
    x, y = g["cursor_pos"][sample, 0], g["cursor_pos"][sample, 1]
    if a.no_hand_vel:
        # Central differences (one-sided at the ends) of hand_pos over its timestamps.
        t = ticks / TICK_HZ
        if a.timing == "rate":
            t = ticks[0] / TICK_HZ + np.arange(ticks.size) / a.rate_hz
        hp = g["hand_pos"]
        v = np.empty_like(hp)
        v[1:-1] = (hp[2:] - hp[:-2]) / (t[2:] - t[:-2])[:, None]
        v[0] = (hp[1] - hp[0]) / (t[1] - t[0])
        v[-1] = (hp[-1] - hp[-2]) / (t[-1] - t[-2])
    else:
        v = g["hand_vel"]
    vx, vy = v[sample, 0], v[sample, 1]

    ref.update(
        num_units=a.units, n_bins=int(n_bins), t0_ticks=t0, total_spikes=int(counts.sum()),
        dropped_spikes=dropped, max_count=int(counts.max()), checksum=str(checksum(counts)),
        unit_totals=[int(c) for c in counts.sum(axis=0)],
    )
    rng = np.random.default_rng(a.seed + 1)
    rows = sorted(set([0, 1, n_bins - 1] + list(map(int, rng.integers(0, n_bins, size=a.rows)))))
    ref["rows"] = [dict(bin=b, spike_counts=[int(c) for c in counts[b]], x=float(x[b]), y=float(y[b]),
                        vx=float(vx[b]), vy=float(vy[b]), x_bits=bits(x[b:b + 1])[0], y_bits=bits(y[b:b + 1])[0],
                        vx_bits=bits(vx[b:b + 1])[0], vy_bits=bits(vy[b:b + 1])[0]) for b in rows]
    if n_bins * a.units <= 200_000:
        ref["counts"] = [[int(c) for c in row] for row in counts]
        ref["kinematics_bits"] = dict(x=bits(x), y=bits(y), vx=bits(vx), vy=bits(vy))

    t0s = t0 / TICK_HZ
    out = []
    n_trials = len(trial_cols.get("start_time", []))
    for i in range(n_trials):
        row = {"id": i}
        for name, data in trial_cols.items():
            v = data[i]
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, (np.bool_,)):
                v = bool(v)
            elif isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, np.floating):
                v = float(v)
                if name.endswith("_time"):
                    v = v - t0s
                if v != v:
                    v = None
            row[name] = v
        tp, at = row.get("target_pos"), row.get("active_target")
        row["target_id"] = at
        ok = tp is not None and at is not None and at < len(tp)
        row["target_x"] = float(tp[at][0]) if ok else None
        row["target_y"] = float(tp[at][1]) if ok else None
        out.append(row)
    ref["trials"] = out if n_trials <= 200 else out[:50] + out[-10:]
    ref["num_trials"] = n_trials
    return ref


def main(argv):
    a = parse_args(argv)
    rng = np.random.default_rng(a.seed)
    g = generate(a, rng)
    write_nwb(a, g, a.output)
    ref = reference(a, g, a.output)
    with open(os.path.splitext(a.output)[0] + ".json", "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    size = os.path.getsize(a.output)
    print(f"{a.output}: {size / 1e6:.2f} MB, {sum(len(t) for t in g['spike_ticks'])} spikes, "
          f"{ref.get('n_bins', '-')} bins, {len(g['trials'])} trials")


if __name__ == "__main__":
    main(sys.argv[1:])
