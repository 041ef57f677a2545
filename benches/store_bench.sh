#!/usr/bin/env bash
# Image-store benchmark: lifeboat against b3sum, cp, restic and borg on the
# same data in the same run. Prints a table of times and ratios.
#   benches/store_bench.sh [SIZE_MIB]      (default 2048)
# Needs: b3sum restic borgbackup (Debian packages), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-2048}
WORK=${BENCH_WORK:-$PWD/bench-work}
for t in b3sum restic borg python3; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install b3sum restic borgbackup" >&2; exit 1; }
done
cargo build --release --quiet
LB=$PWD/target/release/lifeboat
mkdir -p "$WORK"
IMG=$WORK/image.raw
IMG2=$WORK/image-changed.raw
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != $((SIZE_MIB << 20)) ]; then
  python3 benches/make_image.py "$IMG" "$IMG2" $((SIZE_MIB << 20)) 2
fi
rm -rf "$WORK"/{lb,restic,borg,out} && mkdir -p "$WORK/out"
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$WORK/borg-base
# Warm the page cache so every tool reads from memory, not the disk.
cat "$IMG" "$IMG2" > /dev/null

declare -A T
ROUNDS=${ROUNDS:-3}
# Best of ROUNDS: this kind of machine is shared and noisy, and the first
# touch of fresh memory is slow, so every tool gets the same repeated chances.
t() { # name command...
  local s e d; s=$(date +%s.%N)
  "${@:2}" > "$WORK/$1.log" 2>&1 || { echo "FAILED: $1 (see $WORK/$1.log)" >&2; cat "$WORK/$1.log" >&2; exit 1; }
  e=$(date +%s.%N); d=$(echo "$e - $s" | bc -l)
  if [ -z "${T[$1]:-}" ] || [ "$(echo "$d < ${T[$1]}" | bc -l)" = 1 ]; then T[$1]=$d; fi
  printf '%-22s %8.2f s\n' "$1" "$d"
}

for round in $(seq "$ROUNDS"); do
  echo "--- round $round"
  t b3sum            b3sum "$IMG"
  t b3sum_changed    b3sum "$IMG2"
  rm -f "$WORK/out/cp.raw"
  t cp_sparse        cp --sparse=always "$IMG" "$WORK/out/cp.raw"
  rm -f "$WORK/out/cp.raw"
  rm -rf "$WORK/lb"; $LB init "$WORK/lb" >/dev/null
  t lb_full          $LB -r "$WORK/lb" backup bench --format raw --volume "disk=$IMG"
  t lb_incr          $LB -r "$WORK/lb" backup bench --format raw --volume "disk=$IMG2"
  rm -f "$WORK/out/lb.raw"
  t lb_restore       $LB -r "$WORK/lb" restore bench/disk@~1 --to "$WORK/out/lb.raw"
  t lb_verify_deep   $LB -r "$WORK/lb" verify --deep
  cmp "$IMG" "$WORK/out/lb.raw" || { echo "lifeboat restore differs!" >&2; exit 1; }
  rm -f "$WORK/out/lb.raw"
  rm -rf "$WORK/restic" "$WORK/restic-cache"; restic init --repo "$WORK/restic" >/dev/null 2>&1
  t restic_full      restic --repo "$WORK/restic" backup "$IMG"
  t restic_incr      restic --repo "$WORK/restic" backup "$IMG2"
  rm -rf "$WORK/out/restic"
  t restic_restore   restic --repo "$WORK/restic" restore latest --path "$IMG2" --target "$WORK/out/restic"
  t restic_check     restic --repo "$WORK/restic" check --read-data
  rm -rf "$WORK/out/restic"
  rm -rf "$WORK/borg" "$WORK/borg-base"; borg init -e none "$WORK/borg" >/dev/null 2>&1
  t borg_full        borg create "$WORK/borg::a" "$IMG"
  t borg_incr        borg create "$WORK/borg::b" "$IMG2"
  t borg_restore     bash -c "cd '$WORK/out' && borg extract '$WORK/borg::a'"
  rm -rf "${WORK:?}/out"/*
done
du_lb=$(du -sm "$WORK/lb" | cut -f1); du_restic=$(du -sm "$WORK/restic" | cut -f1); du_borg=$(du -sm "$WORK/borg" | cut -f1)

r() { echo "scale=2; $1 / $2" | bc -l; }
echo
echo "| operation ($SIZE_MIB MiB image, best of $ROUNDS) | lifeboat | baseline | ratio | target |"
echo "|---|---|---|---|---|"
printf '| full backup vs restic | %.2f s | %.2f s | %sx faster | >= 5x |\n' "${T[lb_full]}" "${T[restic_full]}" "$(r "${T[restic_full]}" "${T[lb_full]}")"
printf '| full backup vs borg | %.2f s | %.2f s | %sx faster | >= 3x |\n' "${T[lb_full]}" "${T[borg_full]}" "$(r "${T[borg_full]}" "${T[lb_full]}")"
printf '| full backup vs b3sum | %.2f s | %.2f s | %sx b3sum time | - |\n' "${T[lb_full]}" "${T[b3sum]}" "$(r "${T[lb_full]}" "${T[b3sum]}")"
printf '| incremental (2%%) vs b3sum | %.2f s | %.2f s | %sx b3sum time | <= 1.5x |\n' "${T[lb_incr]}" "${T[b3sum_changed]}" "$(r "${T[lb_incr]}" "${T[b3sum_changed]}")"
printf '| incremental vs restic | %.2f s | %.2f s | %sx faster | - |\n' "${T[lb_incr]}" "${T[restic_incr]}" "$(r "${T[restic_incr]}" "${T[lb_incr]}")"
printf '| incremental vs borg | %.2f s | %.2f s | %sx faster | - |\n' "${T[lb_incr]}" "${T[borg_incr]}" "$(r "${T[borg_incr]}" "${T[lb_incr]}")"
printf '| restore vs restic | %.2f s | %.2f s | %sx faster | >= 2x |\n' "${T[lb_restore]}" "${T[restic_restore]}" "$(r "${T[restic_restore]}" "${T[lb_restore]}")"
printf '| restore vs borg | %.2f s | %.2f s | %sx faster | - |\n' "${T[lb_restore]}" "${T[borg_restore]}" "$(r "${T[borg_restore]}" "${T[lb_restore]}")"
printf '| restore vs cp --sparse=always | %.2f s | %.2f s | %sx cp time | <= 1.5x |\n' "${T[lb_restore]}" "${T[cp_sparse]}" "$(r "${T[lb_restore]}" "${T[cp_sparse]}")"
printf '| deep verify vs restic check --read-data | %.2f s | %.2f s | %sx faster | >= 3x |\n' "${T[lb_verify_deep]}" "${T[restic_check]}" "$(r "${T[restic_check]}" "${T[lb_verify_deep]}")"
echo "| repository size after both backups | ${du_lb} MiB | restic ${du_restic} MiB, borg ${du_borg} MiB | | |"
