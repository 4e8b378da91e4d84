#!/usr/bin/env bash
# Soak test: a release server on 127.0.0.1, N WebSocket clients for T minutes, RSS, threads and
# open descriptors sampled from /proc every few seconds. Reports whether RSS and threads stay
# flat (within 5 % after warm-up), every packet drop (server /metrics and client-side sequence
# gaps) and whether SIGTERM still ends the server cleanly. Exit status 0 only if all hold.
#
#   tools/soak.sh                                   # 500 clients, 10 sessions, 10 minutes
#   tools/soak.sh --clients 100 --minutes 2         # a quick one
#   tools/soak.sh --minutes 1440 --sample 60        # the 24 h variant (see docs/OPERATIONS.md)
#
# Options: --clients N (500) --sessions S (10) --minutes M (10) --sample SECONDS (5)
#          --warmup SECONDS (20 % of the run, 5 to 300, after all clients are connected) --procs P (client processes, 2)
#          --port P (a free one) --out DIR (target/soak-<time>) --no-build
#          -- ARGS...   extra server options (e.g. -- --cores 1 --spin-us 50)
# Needs: python3 (standard library only), curl. Traffic goes to 127.0.0.1 only; every loop is
# bounded by the run's duration.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=500 sessions=10 minutes=10 sample=5 warmup="" procs=2 port="" out="" build=1
server_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --sample) sample=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --procs) procs=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --) shift; server_args=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)"; exit 2 ;;
  esac
done
seconds=$(python3 -c "print(int(float($minutes) * 60))")
# Warm-up, counted from the moment every client is connected: 20 % of the run, 5 s to 300 s.
# (RSS steps up once per HTTP worker the first time it builds a large /metrics document:
# each worker thread has its own malloc arena, kept at its peak.)
[ -n "$warmup" ] || warmup=$(( seconds / 5 < 5 ? 5 : (seconds / 5 > 300 ? 300 : seconds / 5) ))
[ -n "$port" ] || port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
[ -n "$out" ] || out="target/soak-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
bin=target/release/phantomlink
if [ "$build" = 1 ]; then cargo build --release --quiet; fi
[ -x "$bin" ] || { echo "no $bin: build it or drop --no-build"; exit 2; }

# Each client costs the server four descriptors and the client process one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
per_session=$(( (clients + sessions - 1) / sessions ))
"$bin" --port "$port" --log-level warn --max-clients-per-session $(( per_session > 256 ? per_session : 256 )) \
  --max-clients $(( clients + 64 > 4096 ? clients + 64 : 4096 )) "${server_args[@]}" 2>"$out/server.log" &
server=$!
client_pids=()
cleanup() {
  for p in "${client_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$server" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "server did not start"; cat "$out/server.log"; exit 1; }

echo "soak: $clients clients in $sessions sessions for $minutes min on 127.0.0.1:$port (pid $server), sampling every ${sample}s, warm-up ${warmup}s; output in $out"
per_proc=$(( (clients + procs - 1) / procs ))
offset=0
for p in $(seq "$procs"); do
  n=$(( clients - offset < per_proc ? clients - offset : per_proc ))
  [ "$n" -gt 0 ] || break
  python3 tools/soak_client.py --port "$port" --clients "$n" --offset "$offset" --sessions "$sessions" \
    --seconds "$seconds" --ramp 10 >"$out/clients-$p.json" 2>"$out/clients-$p.err" &
  client_pids+=($!)
  offset=$(( offset + n ))
done

echo "t_seconds,rss_kb,threads,fds,clients,dropped_total,cpu_ticks,session_bytes" >"$out/samples.csv"
start=$(date +%s)
clients_running() {
  for p in "${client_pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}
while :; do
  now=$(date +%s); t=$(( now - start ))
  [ -d "/proc/$server" ] || { echo "server exited during the soak"; break; }
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$server/status")
  fds=$(ls "/proc/$server/fd" | wc -l)
  cpu=$(awk '{print $14 + $15}' "/proc/$server/stat")
  read -r live dropped session_bytes < <(curl -s --max-time 5 "http://127.0.0.1:$port/metrics" | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)["metrics"]
    s = m["sessions"].values()
    print(m["total_connections"], sum(x["dropped_packets"] for x in s), sum(x["memory_bytes"] for x in s))
except Exception:
    print("-1 -1 -1")') || true
  echo "$t,$rss,$threads,$fds,$live,$dropped,$cpu,$session_bytes" >>"$out/samples.csv"
  # One more sample once the clients have gone (or a minute past the end at most).
  if [ -n "${final_sample:-}" ] || [ "$t" -ge $(( seconds + 60 )) ]; then break; fi
  if ! clients_running; then final_sample=1; sleep 2; continue; fi
  sleep "$sample"
done
for p in "${client_pids[@]}"; do wait "$p" || true; done
client_pids=()
curl -s "http://127.0.0.1:$port/metrics" >"$out/metrics-final.json" || true

# SIGTERM must still end it cleanly after the soak.
kill -TERM "$server"
t0=$(date +%s%N)
exit_code=0
wait "$server" || exit_code=$?
trap - EXIT
shutdown_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

python3 - "$out" "$warmup" "$clients" "$minutes" "$exit_code" "$shutdown_ms" "$seconds" <<'EOF'
import csv, glob, json, sys
out, warmup, clients, minutes, exit_code, shutdown_ms, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
rows = [r for r in csv.DictReader(open(f"{out}/samples.csv"))]
# Steady state: from warm-up after every client is connected, while all of them still are.
full = [int(r["t_seconds"]) for r in rows if int(r["clients"]) == clients]
t_all = full[0] if full else 0
steady = [r for r in rows if int(r["clients"]) == clients and int(r["t_seconds"]) >= t_all + warmup] or rows
def spread(key):
    vals = [int(r[key]) for r in steady]
    lo, hi = min(vals), max(vals)
    return lo, hi, (hi - lo) / lo * 100 if lo else 0.0
totals = {"connected": 0, "failed": 0, "packets": 0, "gaps": 0, "gap_events": 0, "backwards": 0, "closed_by_server": {}, "errors": {}}
for path in sorted(glob.glob(f"{out}/clients-*.json")):
    for line in open(path):
        if not line.strip():
            continue
        c = json.loads(line)
        for k in ("connected", "failed", "packets", "gaps", "gap_events", "backwards"):
            totals[k] += c[k]
        for k in ("closed_by_server", "errors"):
            for reason, n in c[k].items():
                totals[k][reason] = totals[k].get(reason, 0) + n
try:
    final = json.load(open(f"{out}/metrics-final.json"))["metrics"]
    server_dropped = sum(s["dropped_packets"] for s in final["sessions"].values())
    stalled = sum(s.get("clients_stalled", 0) for s in final["sessions"].values())
    p99 = max(s["network_latency_ms"].get("p99", 0) for s in final["sessions"].values())
    lat_p99 = max(s["timing_error_ms"].get("p99", 0) for s in final["sessions"].values())
except Exception as e:
    server_dropped = stalled = p99 = lat_p99 = f"unavailable ({e})"
rss, thr, fds = spread("rss_kb"), spread("threads"), spread("fds")
first, last, after = steady[0], steady[-1], rows[-1]
# Sessions keep 15 minutes of sliding-window histogram intervals, so what they account for
# grows during the first 15 minutes by design; RSS growth beyond that growth is unexplained.
rss_growth_kb = int(last["rss_kb"]) - int(first["rss_kb"])
accounted_growth_kb = (int(last["session_bytes"]) - int(first["session_bytes"])) // 1024
unexplained_pct = max(rss_growth_kb - max(accounted_growth_kb, 0), 0) / int(first["rss_kb"]) * 100
flat = (rss[2] <= 5.0 or unexplained_pct <= 5.0) and thr[2] <= 5.0
no_drops = totals["gaps"] == 0 and server_dropped == 0 and totals["backwards"] == 0
all_connected = totals["connected"] == clients and totals["failed"] == 0 and not totals["errors"] and not totals["closed_by_server"]
lines = [
    f"soak summary: {clients} clients, {minutes} min, {len(rows)} samples; all connected at t={t_all} s, steady from t={first['t_seconds']} s ({len(steady)} samples)",
    f"  RSS      steady start {int(first['rss_kb'])/1024:.1f} MiB (t={first['t_seconds']} s), end {int(last['rss_kb'])/1024:.1f} MiB (t={last['t_seconds']} s), range {rss[0]/1024:.1f}..{rss[1]/1024:.1f} MiB (spread {rss[2]:.2f} %); idle before {int(rows[0]['rss_kb'])/1024:.1f} MiB, after clients left {int(after['rss_kb'])/1024:.1f} MiB",
    f"  RSS growth in steady state {rss_growth_kb/1024:+.1f} MiB, of which sessions account for {accounted_growth_kb/1024:+.1f} MiB (histogram windows fill for 15 min): unexplained {unexplained_pct:.2f} % of RSS",
    f"  threads  steady start {first['threads']}, end {last['threads']}, range {thr[0]}..{thr[1]} (spread {thr[2]:.2f} %); idle before {rows[0]['threads']}, after clients left {after['threads']}",
    f"  fds      steady start {first['fds']}, end {last['fds']}, range {fds[0]}..{fds[1]}; idle before {rows[0]['fds']}, after clients left {after['fds']}",
    f"  clients  connected {totals['connected']}/{clients}, failed {totals['failed']}, closed by server {totals['closed_by_server'] or 0}, errors {totals['errors'] or 0}",
    f"  packets  {totals['packets']} received; client-side gaps {totals['gaps']} ({totals['gap_events']} events), out of order {totals['backwards']}; server dropped_packets {server_dropped}, clients_stalled {stalled}",
    f"  latency  worst session p99 tick->socket {p99} ms, tick lateness p99 {lat_p99} ms",
    f"  shutdown SIGTERM -> exit {exit_code} in {shutdown_ms} ms",
    f"  verdict  RSS/threads {'FLAT' if flat else 'NOT FLAT'} (5 %), drops {'NONE' if no_drops else 'SEEN'}, clients {'ALL OK' if all_connected else 'PROBLEMS'}, shutdown {'CLEAN' if exit_code == 0 and shutdown_ms < 1500 else 'NOT CLEAN'}",
]
text = "\n".join(lines)
print(text)
open(f"{out}/summary.txt", "w").write(text + "\n")
sys.exit(0 if flat and no_drops and all_connected and exit_code == 0 else 1)
EOF
