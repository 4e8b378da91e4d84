#!/usr/bin/env bash
# Compares the /metrics render of two or more commits: builds benches/metrics.rs at each one,
# then runs the binaries in turn, ROUNDS rounds (each run: 500 timed renders of each format
# at 100 sessions x 10 clients), and prints per commit and format the median and best of the
# runs' p50 and p99. Interleaving the runs is what makes the comparison fair on a shared
# machine whose speed drifts from one minute to the next.
#
#   tools/metrics_ab.sh ROUNDS REV [REV...]
#   tools/metrics_ab.sh 8 221d4ae HEAD
#
# Builds happen in temporary worktrees under ${TMPDIR:-/tmp}, removed at the end; the shared
# target directory stays, so a second comparison builds little. Nothing in this checkout
# changes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
rounds=$1
shift
work=${TMPDIR:-/tmp}/phantomlink-metrics-ab
mkdir -p "$work"
declare -A bins
trees=()
trap 'for t in "${trees[@]}"; do git worktree remove --force "$t" 2>/dev/null || true; done' EXIT
for rev in "$@"; do
  sha=$(git rev-parse --short "$rev")
  tree="$work/$sha"
  git worktree remove --force "$tree" 2>/dev/null || true
  git worktree add --detach "$tree" "$sha" >/dev/null 2>&1
  trees+=("$tree")
  # One target directory for every commit (dependencies built once); each bench binary is
  # copied out, since the next commit's build writes the same path.
  out=$(cd "$tree" && CARGO_TARGET_DIR="$work/target" cargo bench --bench metrics --no-run --message-format short 2>&1)
  bin=$(echo "$out" | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
  [ -x "$bin" ] || { echo "no bench binary for $rev:"; echo "$out" | tail -5; exit 1; }
  cp "$bin" "$work/metrics-$sha"
  bins[$rev]="$work/metrics-$sha"
done
results=$(mktemp)
for round in $(seq "$rounds"); do
  for rev in "$@"; do
    # "no-criterion-match" selects no criterion benchmark: only the timed renders run.
    "${bins[$rev]}" --bench no-criterion-match 2>&1 |
      sed -nE "s/^metrics_100x10\/([a-z]+): .* p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/$rev \1 \2 \3/p" >>"$results"
  done
  echo "round $round of $rounds done" >&2
done
python3 - "$results" "$@" <<'EOF'
import statistics, sys
path, revs = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    rev, fmt, p50, p99 = line.split()
    runs.setdefault((fmt, rev), []).append((float(p50), float(p99)))
print(f"{'format':11} {'commit':12} {'runs':>4}  {'p50 median':>10} {'best':>6}  {'p99 median':>10} {'best':>6}  (ms)")
for fmt in ("json", "prometheus"):
    for rev in revs:
        r = runs.get((fmt, rev), [])
        if not r:
            continue
        p50s, p99s = [a for a, _ in r], [b for _, b in r]
        print(f"{fmt:11} {rev:12} {len(r):>4}  {statistics.median(p50s):>10.3f} {min(p50s):>6.3f}"
              f"  {statistics.median(p99s):>10.3f} {min(p99s):>6.3f}")
EOF
rm -f "$results"
