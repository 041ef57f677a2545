#!/usr/bin/env bash
# Two lifeboat binaries on the same work, alternating, best of ROUNDS:
# full backup (unencrypted and encrypted), restore, verify --deep. For
# build settings (LTO, opt-level, allocator): does the change cost runtime?
#   benches/binary_ab.sh BIN_A BIN_B [IMAGE]
# IMAGE defaults to the encryption benchmark's 1 GiB mixed image
# (benches/make_image.py makes one). Prints B's time as a ratio of A's.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2
IMG=${3:-$PWD/bench-work/encryption/image.raw}
[ -f "$IMG" ] || { echo "no image $IMG: run benches/encryption_bench.sh once, or name one" >&2; exit 1; }
WORK=${BENCH_WORK:-$PWD/bench-work/ab}
ROUNDS=${ROUNDS:-3}
rm -rf "$WORK"; mkdir -p "$WORK"
printf 'benchmark passphrase\n' > "$WORK/pass"; chmod 600 "$WORK/pass"
cat "$IMG" > /dev/null
declare -A T
t() { # key command...
  sync
  local s e d; s=$(date +%s.%N)
  "${@:2}" > "$WORK/last.log" 2>&1 || { cat "$WORK/last.log" >&2; exit 1; }
  e=$(date +%s.%N); d=$(echo "$e - $s" | bc -l)
  if [ -z "${T[$1]:-}" ] || [ "$(echo "$d < ${T[$1]}" | bc -l)" = 1 ]; then T[$1]=$d; fi
}
for r in $(seq "$ROUNDS"); do
  for side in A B; do
    bin=${!side}
    w=$WORK/$side; rm -rf "$w"; mkdir -p "$w"
    "$bin" init "$w/plain" >/dev/null
    LIFEBOAT_PASSPHRASE_FILE=$WORK/pass "$bin" init "$w/enc" --encrypt --recovery-key-out "$w/key" >/dev/null
    t "$side backup" "$bin" -r "$w/plain" backup ab --format raw --volume "disk=$IMG"
    t "$side backup (encrypted)" env LIFEBOAT_KEY_FILE="$w/key" "$bin" -r "$w/enc" backup ab --format raw --volume "disk=$IMG"
    t "$side restore" "$bin" -r "$w/plain" restore ab/disk@latest --to "$w/out.raw"
    rm -f "$w/out.raw"
    t "$side restore (encrypted)" env LIFEBOAT_KEY_FILE="$w/key" "$bin" -r "$w/enc" restore ab/disk@latest --to "$w/out.raw"
    rm -f "$w/out.raw"
    t "$side verify --deep" "$bin" -r "$w/plain" verify --deep
  done
done
echo "| step (best of $ROUNDS, $(($(stat -c %s "$IMG") >> 20)) MiB) | A | B | B/A |"
echo "|---|---|---|---|"
for step in "backup" "backup (encrypted)" "restore" "restore (encrypted)" "verify --deep"; do
  a=${T["A $step"]} b=${T["B $step"]}
  printf '| %s | %.2f s | %.2f s | %.2f |\n' "$step" "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
rm -rf "$WORK"
