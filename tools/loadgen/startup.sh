#!/usr/bin/env bash
# Startup to first packet: launches a release server and, at the same moment, a one-client load
# generator that waits for it; prints the time from launching the server to the first data
# packet the client received (kernel receive stamp), for RUNS fresh servers.
#
#   tools/loadgen/startup.sh [PORT] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${1:-18499}
runs=${2:-5}
cargo build --release --quiet --bin phantomlink --bin phantomlink-loadgen
for run in $(seq "$runs"); do
  t0=$(date +%s.%N)
  ./target/release/phantomlink --host 127.0.0.1 --port "$port" --log-level warn &
  server=$!
  report=$(./target/release/phantomlink-loadgen --url "ws://127.0.0.1:$port" --wait-for-server 5 \
    --sessions 1 --clients 1 --packets 1 --warmup 0 --quiet --json) || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  first=$(printf '%s' "$report" | sed -n 's/^  "first_packet_unix": \([0-9.]*\),$/\1/p')
  if [ -n "$first" ]; then
    awk -v a="$t0" -v b="$first" -v r="$run" 'BEGIN { printf "run %d: server launch -> first data packet %.1f ms\n", r, (b - a) * 1000 }'
  else
    echo "run $run: no data packet"
  fi
done
