#!/usr/bin/env bash
# Validates the Prometheus exposition of a running PhantomLink server with real parsers:
#   GET /metrics?format=prometheus                          (text format 0.0.4)
#   GET /metrics  Accept: application/openmetrics-text     (OpenMetrics 1.0, ends in # EOF)
# Validators: `promtool check metrics` (Debian package `prometheus`) for 0.0.4, and the
# Python `prometheus_client` parsers (`pip install prometheus_client`) for 0.0.4 and, strictly,
# for OpenMetrics. At least one must be installed.
#
# usage: tools/check_prometheus.sh [--stream] [URL]      (URL defaults to http://127.0.0.1:8000)
#   --stream  keep one WebSocket client (Python `websockets`) on session `prometheus-check`
#             while checking, so per-client series and histograms are in the output.
# exit: 0 valid, 1 invalid, 2 server unreachable or no validator installed.
set -euo pipefail

stream=0
url="http://127.0.0.1:8000"
for arg in "$@"; do
  case "$arg" in
    --stream) stream=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) url="$arg" ;;
  esac
done
url="${url%/}"
url="${url%/metrics}"

tmp=$(mktemp -d)
client=""
cleanup() {
  if [[ -n "$client" ]]; then kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

say() { printf '%s\n' "$*"; }
have_python_client() { python3 -c 'import prometheus_client' >/dev/null 2>&1; }

curl -sf --max-time 5 "$url/health" >/dev/null || { say "cannot reach $url/health"; exit 2; }

if [[ $stream == 1 ]]; then
  python3 -c 'import websockets' 2>/dev/null || { say "--stream needs: pip install websockets"; exit 2; }
  ws="ws://${url#http://}/stream/prometheus-check"
  python3 - "$ws" <<'PY' &
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        for _ in range(40 * 120):          # at most two minutes of packets
            await ws.recv()
asyncio.run(main())
PY
  client=$!
  for _ in $(seq 50); do   # up to 5 s for the first packets to be written
    sent=$(curl -sf --max-time 2 "$url/metrics?session=prometheus-check" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["sessions"]["prometheus-check"]["packets_sent"])' 2>/dev/null || echo 0)
    [[ "$sent" -ge 10 ]] && break
    sleep 0.1
  done
  say "streaming client connected ($sent packets sent to it)"
fi

fetch() { # name, then curl arguments
  local name=$1; shift
  curl -sS --fail --max-time 10 -D "$tmp/$name.headers" -o "$tmp/$name.txt" "$@" \
    || { say "cannot fetch $name exposition"; exit 2; }
  say "$name: $(wc -l <"$tmp/$name.txt") lines ($(grep -i '^content-type:' "$tmp/$name.headers" | tr -d '\r' || true))"
}
fetch classic "$url/metrics?format=prometheus"
fetch openmetrics -H 'Accept: application/openmetrics-text; version=1.0.0' "$url/metrics"

failed=0
validators=0
fail() { say "FAIL: $*"; failed=1; }

grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/classic.headers" || fail "0.0.4 content type"
grep -qi '^content-type: application/openmetrics-text; version=1.0.0' "$tmp/openmetrics.headers" \
  || fail "OpenMetrics content type"
[[ "$(tail -n 1 "$tmp/openmetrics.txt")" == "# EOF" ]] || fail "OpenMetrics does not end with # EOF"
grep -q '^# EOF' "$tmp/classic.txt" && fail "0.0.4 output contains # EOF"

if command -v promtool >/dev/null; then
  validators=$((validators + 1))
  if promtool check metrics <"$tmp/classic.txt" >"$tmp/promtool.log" 2>&1; then
    say "promtool check metrics (0.0.4): OK"
  else
    fail "promtool check metrics (0.0.4):"; sed 's/^/  /' "$tmp/promtool.log"
  fi
fi

if have_python_client; then
  validators=$((validators + 1))
  if python3 - "$tmp/classic.txt" "$tmp/openmetrics.txt" <<'PY'; then
import math, sys
from prometheus_client.parser import text_string_to_metric_families as parse_classic
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

def check(families, label):
    """Re-check what the parsers leave to the producer: cumulative buckets, +Inf == _count."""
    names, samples, histograms = set(), 0, 0
    for family in families:
        if family.name in names:
            raise SystemExit(f"{label}: family {family.name} appears twice")
        names.add(family.name)
        samples += len(family.samples)
        if family.type != "histogram":
            continue
        series = {}
        for s in family.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": []})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
            elif s.name.endswith("_sum"):
                series[key]["sum"] = s.value
        for key, h in series.items():
            histograms += 1
            b = h["buckets"]
            if any(b2[0] <= b1[0] or b2[1] < b1[1] for b1, b2 in zip(b, b[1:])):
                raise SystemExit(f"{label}: {family.name}{key}: buckets not cumulative: {b}")
            if not b or not math.isinf(b[-1][0]) or b[-1][1] != h.get("count"):
                raise SystemExit(f"{label}: {family.name}{key}: +Inf bucket != _count")
            if "sum" not in h:
                raise SystemExit(f"{label}: {family.name}{key}: no _sum")
    print(f"prometheus_client {label}: OK ({len(names)} families, {samples} samples, {histograms} histograms)")

classic, om = (open(p).read() for p in sys.argv[1:3])
check(parse_classic(classic), "text 0.0.4")
check(parse_om(om), "OpenMetrics 1.0")
PY
    :
  else
    fail "prometheus_client parsing"
  fi
fi

if [[ $validators == 0 ]]; then
  say "no validator found: apt-get install prometheus (promtool) or pip install prometheus_client"
  exit 2
fi
if [[ $failed == 0 ]]; then say "Prometheus exposition valid"; fi
exit "$failed"
