#!/usr/bin/env bash
# Runs the load generator against a fresh release server on this host, then stops the server.
#
#   tools/loadgen/with-server.sh PORT "SERVER ARGS" [LOADGEN ARGS...]
#   tools/loadgen/with-server.sh 18500 "--max-sessions 256" --sessions 50 --clients 10 --seconds 25
#
# The server listens on 127.0.0.1:PORT only; the load generator gets --url and --server-pid
# (so it samples the server's CPU, RSS and per-thread CPU) and waits for /health itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
port=$1
server_args=$2
shift 2
cargo build --release --quiet --bin phantomlink --bin phantomlink-loadgen
# shellcheck disable=SC2086 # server_args is a list of flags
./target/release/phantomlink --host 127.0.0.1 --port "$port" --log-level warn $server_args &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
./target/release/phantomlink-loadgen --url "ws://127.0.0.1:$port" --server-pid "$server" "$@"
