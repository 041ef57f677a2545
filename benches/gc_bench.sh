#!/usr/bin/env bash
# gc and prune benchmark with the restic comparison: builds (once) a restic
# repository of 1,000 snapshots over ~100,000 blobs, then runs
# benches/gc_bench.rs, which writes docs/bench-gc-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic; }
repo=${RESTIC_BENCH_REPO:-/tmp/lifeboat-restic-bench}
if [ ! -d "$repo" ]; then
  export RESTIC_PASSWORD=bench
  data=$(mktemp -d)
  restic -q -r "$repo" init
  for i in $(seq 1 1000); do
    for f in $(seq 1 100); do head -c 2048 /dev/urandom > "$data/f$f"; done
    restic -q -r "$repo" backup "$data" >/dev/null
  done
  rm -rf "$data"
fi
RESTIC_BENCH_REPO=$repo cargo bench --bench gc_bench
