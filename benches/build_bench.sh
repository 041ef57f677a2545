#!/usr/bin/env bash
# Cold release build: a baseline commit against the work tree, one after
# the other in the same run, each in a fresh target dir (the registry's
# downloaded sources are shared: what is measured is compiling).
#   benches/build_bench.sh [BASELINE_REF]   (default f727776, the last
#                                            commit before issue 30)
# Prints both times, the ratio and the binaries' sizes; writes
# docs/bench-build-latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-f727776}
WORK=${BENCH_WORK:-$PWD/bench-work/build}
rm -rf "$WORK"
mkdir -p "$WORK"
git worktree add --detach -f "$WORK/baseline" "$BASE" >/dev/null
trap 'git worktree remove --force "$WORK/baseline" >/dev/null 2>&1 || true' EXIT
# The work tree as it is (uncommitted changes included), without its target.
mkdir "$WORK/current"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/current"
( cd "$WORK/baseline" && cargo fetch --locked -q ) && ( cd "$WORK/current" && cargo fetch --locked -q )

build() { # name dir
  sync
  local s e
  s=$(date +%s.%N)
  (cd "$2" && CARGO_TARGET_DIR="$WORK/target-$1" cargo build --release --locked --offline -q) ||
    { echo "build of $1 failed" >&2; exit 1; }
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}
tb=$(build baseline "$WORK/baseline")
printf 'baseline (%s): %.1f s\n' "$BASE" "$tb"
tc=$(build current "$WORK/current")
printf 'current: %.1f s\n' "$tc"
ratio=$(echo "$tb / $tc" | bc -l)
sb=$(stat -c %s "$WORK/target-baseline/release/lifeboat")
sc=$(stat -c %s "$WORK/target-current/release/lifeboat")
units_b=$(ls "$WORK/target-baseline/release/deps" | grep -c '\.rlib$' || true)
units_c=$(ls "$WORK/target-current/release/deps" | grep -c '\.rlib$' || true)
printf 'speed-up: %.2fx; binary %d MB -> %d MB; crates %d -> %d\n' "$ratio" $((sb >> 20)) $((sc >> 20)) "$units_b" "$units_c"
{
  echo "# Cold release build ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "\`benches/build_bench.sh $BASE\`: \`cargo build --release --locked\` in a fresh target dir, baseline then current, one run."
  echo
  echo "| build | time | binary | crates (rlibs) |"
  echo "|---|---|---|---|"
  printf '| baseline %s | %.1f s | %d MB | %d |\n' "$BASE" "$tb" $((sb >> 20)) "$units_b"
  printf '| current | %.1f s | %d MB | %d |\n' "$tc" $((sc >> 20)) "$units_c"
  echo
  printf 'Speed-up: **%.2fx**.\n' "$ratio"
} > docs/bench-build-latest.md
rm -rf "$WORK/target-baseline" "$WORK/target-current"
