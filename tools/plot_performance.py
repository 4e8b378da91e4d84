#!/usr/bin/env python3
"""Latency and tick-lateness plots for docs/PERFORMANCE.md, from load-generator runs.

    python3 tools/plot_performance.py sweep  [--out docs/perf/sweep.json] [--seconds 10] [--fifo 45]
    python3 tools/plot_performance.py plot   [--data docs/perf/sweep.json] [--out-dir docs/perf]

`sweep` runs `tools/loadgen/with-server.sh` (a fresh release server on 127.0.0.1 for every
load, stopped afterwards) over a fixed list of sessions x clients loads and stores each run's
`--json` report with the machine it ran on. The load generator's readers run SCHED_FIFO 45
(above the server's writers) unless `--fifo 0`: below them, on a machine the server keeps busy,
they read late and merge frames, and the merged frames' latency is the load generator's own. `plot` draws two PNGs from such a file:

- latency_vs_clients.png: tick->receive percentiles measured by the load generator (kernel
  receive stamps) and the server's own tick->socket p99, against the number of clients;
- tick_lateness.png: the server's tick lateness percentiles (median over sessions) against
  the number of streaming sessions.

Needs matplotlib (`pip install matplotlib`) for `plot` only. Every run is bounded in time by
the load generator itself; nothing here touches anything but 127.0.0.1.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITH_SERVER = os.path.join(ROOT, "tools", "loadgen", "with-server.sh")

# (sessions, clients per session): one client up to the capacity load.
LOADS = [(1, 1), (1, 10), (1, 100), (10, 10), (32, 1), (50, 10), (100, 10), (150, 10), (200, 10)]


def machine():
    """What the figures were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def sweep(args):
    runs = []
    for n, (sessions, clients) in enumerate(LOADS):
        port = args.port + n
        cmd = [
            WITH_SERVER, str(port), "--max-sessions 256",
            "--sessions", str(sessions), "--clients", str(clients),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--json", "-q",
        ]
        if args.fifo:
            # Readers above the server's writers: see docs/PERFORMANCE.md, capacity.
            cmd += ["--fifo", str(args.fifo), "--coalesce-us", "2000"]
        print(f"sweep: {sessions} x {clients} ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 10 + 120)
        if done.returncode != 0:
            print(f"sweep: {sessions} x {clients} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        report = json.loads(done.stdout)
        report.pop("per_client", None)  # thousands of rows; the plots use the aggregates
        runs.append({"sessions": sessions, "clients": clients, "report": report})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "loadgen_fifo": args.fifo, "runs": runs}, f, indent=1)
    print(f"sweep: {len(runs)} runs written to {args.out}", file=sys.stderr)


def finish(fig, ax, xlabel, ylabel, title, path):
    """Log-log axes, labels, grid and legend, then the PNG."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.data) as f:
        data = json.load(f)
    runs = data["runs"]
    fifo = data.get("loadgen_fifo")
    readers = f"load generator readers SCHED_FIFO {fifo}" if fifo else "load generator at normal priority"
    where = (f"{data['machine']['cores']} cores, {data['machine']['cpu']}, "
             f"{data['machine']['date']}; {readers}")

    # Latency against clients: one point per load, labelled sessions x clients.
    by_clients = sorted(runs, key=lambda r: (r["sessions"] * r["clients"], r["sessions"]))
    x = [r["sessions"] * r["clients"] for r in by_clients]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, style in [("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p999", "v--")]:
        ax.plot(x, [r["report"]["latency_us"][key] / 1000 for r in by_clients], style,
                label=f"tick→receive {key} (load generator)")
    ax.plot(x, [r["report"]["metrics"]["network_latency_ms"]["p99"]["median"] for r in by_clients],
            "k:", marker="x", label="tick→socket p99 (server, median session)")
    for xi, r in zip(x, by_clients):
        ax.annotate(f"{r['sessions']}×{r['clients']}", (xi, r["report"]["latency_us"]["p50"] / 1000),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    ax.axhline(2.0, color="red", lw=0.8, ls="--", label="2 ms target (p99)")
    finish(fig, ax, "clients (sessions × clients per session)", "latency, ms",
           f"PhantomLink latency vs clients\n{where}",
           os.path.join(args.out_dir, "latency_vs_clients.png"))

    # Tick lateness against sessions: the largest client count per session count.
    per_sessions = {}
    for r in runs:
        per_sessions[r["sessions"]] = r  # later (bigger) loads of the same session count win
    rows = [per_sessions[s] for s in sorted(per_sessions)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, style in [("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p999", "v--")]:
        ax.plot([r["sessions"] for r in rows],
                [r["report"]["metrics"]["timing_error_ms"][key]["median"] * 1000 for r in rows],
                style, label=f"lateness {key} (median session)")
    ax.plot([r["sessions"] for r in rows],
            [r["report"]["metrics"]["timing_error_ms"]["p99"]["max"] * 1000 for r in rows],
            "k:", marker="x", label="lateness p99 (worst session)")
    finish(fig, ax, "streaming sessions", "tick lateness (wake − deadline), µs",
           f"PhantomLink tick lateness vs sessions (SCHED_FIFO)\n{where}",
           os.path.join(args.out_dir, "tick_lateness.png"))
    print(f"plot: latency_vs_clients.png and tick_lateness.png written to {args.out_dir}",
          file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="run the loads and store the reports")
    s.add_argument("--out", default=os.path.join(ROOT, "docs", "perf", "sweep.json"))
    s.add_argument("--seconds", type=float, default=10.0, help="measured window per load")
    s.add_argument("--warmup", type=float, default=3.0)
    s.add_argument("--port", type=int, default=18600, help="first port; one per load")
    s.add_argument("--fifo", type=int, default=45,
                   help="SCHED_FIFO priority of the load generator's readers (0: normal priority)")
    s.set_defaults(run=sweep)
    p = sub.add_parser("plot", help="draw the PNGs from a sweep")
    p.add_argument("--data", default=os.path.join(ROOT, "docs", "perf", "sweep.json"))
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs", "perf"))
    p.set_defaults(run=plot)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
