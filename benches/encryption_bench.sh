#!/usr/bin/env bash
# Encryption benchmark: lifeboat on an encrypted repository against the
# same lifeboat on an unencrypted one and against restic (which encrypts
# too), on the same mixed image in the same run. Prints times and ratios.
#   benches/encryption_bench.sh [SIZE_MIB]      (default 1024)
# The encrypted steps unlock with the recovery key file, as the daemon
# does; the passphrase unlock (argon2id) is its own row, paid once per command.
# Needs: restic bc (Debian packages), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
WORK=${BENCH_WORK:-$PWD/bench-work/encryption}
for t in restic bc python3; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install restic bc" >&2; exit 1; }
done
cargo build --release --quiet
LB=$PWD/target/release/lifeboat
mkdir -p "$WORK"
IMG=$WORK/image.raw
IMG2=$WORK/image-changed.raw
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" != $((SIZE_MIB << 20)) ]; then
  python3 benches/make_image.py "$IMG" "$IMG2" $((SIZE_MIB << 20)) 2
fi
printf 'benchmark passphrase\n' > "$WORK/pass"
chmod 600 "$WORK/pass"
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
cat "$IMG" > /dev/null

declare -A T
ROUNDS=${ROUNDS:-3}
t() { # name command...
  # Each step starts with no dirty pages of the one before (a restore's
  # writeback would otherwise slow whichever step comes next).
  sync
  local s e d; s=$(date +%s.%N)
  "${@:2}" > "$WORK/$1.log" 2>&1 || { echo "FAILED: $1 (see $WORK/$1.log)" >&2; cat "$WORK/$1.log" >&2; exit 1; }
  e=$(date +%s.%N); d=$(echo "$e - $s" | bc -l)
  if [ -z "${T[$1]:-}" ] || [ "$(echo "$d < ${T[$1]}" | bc -l)" = 1 ]; then T[$1]=$d; fi
  printf '%-18s %8.2f s\n' "$1" "$d"
}

for round in $(seq "$ROUNDS"); do
  echo "--- round $round"
  rm -rf "$WORK"/{plain,restic,restic-cache,out} && mkdir -p "$WORK/out"
  $LB init "$WORK/plain" >/dev/null
  if [ "$round" = 1 ]; then
    rm -rf "$WORK"/{enc,recovery}
    LIFEBOAT_PASSPHRASE_FILE=$WORK/pass $LB init "$WORK/enc" --encrypt --recovery-key-out "$WORK/recovery" >/dev/null
  else
    # Emptied but the same key: the plain chunks are the same bytes every
    # round (and every run), which Garage deduplicates by block; the
    # encrypted ones must get the same chance, or S3 pushes compare a
    # deduplicated upload with a new one.
    find "$WORK/enc" -mindepth 1 -maxdepth 1 ! -name lifeboat.json -exec rm -rf {} +
  fi
  t plain_ls       $LB -r "$WORK/plain" ls
  t enc_ls         env LIFEBOAT_PASSPHRASE_FILE="$WORK/pass" $LB -r "$WORK/enc" ls
  t enc_ls_key     env LIFEBOAT_KEY_FILE="$WORK/recovery" $LB -r "$WORK/enc" ls
  t plain_full     $LB -r "$WORK/plain" backup bench --format raw --volume "disk=$IMG"
  t enc_full       env LIFEBOAT_KEY_FILE="$WORK/recovery" $LB -r "$WORK/enc" backup bench --format raw --volume "disk=$IMG"
  t plain_incr     $LB -r "$WORK/plain" backup bench --format raw --volume "disk=$IMG2"
  t enc_incr       env LIFEBOAT_KEY_FILE="$WORK/recovery" $LB -r "$WORK/enc" backup bench --format raw --volume "disk=$IMG2"
  # Restores are bound by the disk's writeback, which other work on a
  # shared machine disturbs: three of each, alternating which goes first,
  # each into an empty directory.
  for k in 1 2 3; do
    for which in $([ $((k % 2)) = 1 ] && echo "plain enc" || echo "enc plain"); do
      rm -f "$WORK"/out/*.raw
      t ${which}_restore env LIFEBOAT_KEY_FILE="$WORK/recovery" $LB -r "$WORK/$which" restore bench/disk@~1 --to "$WORK/out/$which.raw"
    done
  done
  cmp "$IMG" "$WORK/out/enc.raw" || { echo "encrypted restore differs!" >&2; exit 1; }
  # Push both repositories to a `lifeboat serve` on loopback (a fresh
  # server directory each time) and, when scripts/garage.sh's variables
  # are set, to Garage; alternating which goes first.
  for which in $([ $((round % 2)) = 1 ] && echo "plain enc" || echo "enc plain"); do
    rm -rf "$WORK/srv-$which" "$WORK/tokens-$which.toml" && mkdir -p "$WORK/srv-$which"
    tok=$($LB serve token add bench --role append --tokens "$WORK/tokens-$which.toml" | tail -1)
    $LB -r "$WORK/srv-$which" serve --listen 127.0.0.1:0 --tokens "$WORK/tokens-$which.toml" > "$WORK/serve-$which.out" 2>/dev/null &
    spid=$!
    until grep -q "listening on" "$WORK/serve-$which.out" 2>/dev/null; do sleep 0.05; done
    url=$(sed -n 's/^listening on //p' "$WORK/serve-$which.out" | head -1)
    printf '[remote.offsite]\nurl = "%s"\ntoken_env = "BENCH_TOKEN"\n' "$url" > "$WORK/push-$which.toml"
    if [ -n "${LIFEBOAT_TEST_S3_ENDPOINTS:-}" ]; then
      printf '[remote.cloud]\nurl = "s3://%s/bench-%s-%s-%s"\nendpoint = "%s"\nregion = "%s"\npath_style = true\naccess_key_id_env = "LIFEBOAT_TEST_S3_KEY_ID"\nsecret_access_key_env = "LIFEBOAT_TEST_S3_SECRET"\n' \
        "$LIFEBOAT_TEST_S3_BUCKET" "$which" "$$" "$round" "${LIFEBOAT_TEST_S3_ENDPOINTS%%,*}" "${LIFEBOAT_TEST_S3_REGION:-garage}" >> "$WORK/push-$which.toml"
    fi
    t ${which}_push_serve env BENCH_TOKEN="$tok" LIFEBOAT_KEY_FILE="$WORK/recovery" $LB --config "$WORK/push-$which.toml" -r "$WORK/$which" push offsite --init
    kill $spid; wait $spid 2>/dev/null || true
    if [ -n "${LIFEBOAT_TEST_S3_ENDPOINTS:-}" ]; then
      t ${which}_push_s3 env LIFEBOAT_KEY_FILE="$WORK/recovery" $LB --config "$WORK/push-$which.toml" -r "$WORK/$which" push cloud --init
    fi
  done
  restic init --repo "$WORK/restic" >/dev/null 2>&1
  t restic_full    restic --repo "$WORK/restic" backup "$IMG"
done

r() { echo "scale=2; $1 / $2" | bc -l; }
echo
echo "| operation ($SIZE_MIB MiB mixed image, best of $ROUNDS) | encrypted | baseline | ratio | target |"
echo "|---|---|---|---|---|"
printf '| full backup vs restic | %.2f s | %.2f s | %sx faster | >= 5x |\n' "${T[enc_full]}" "${T[restic_full]}" "$(r "${T[restic_full]}" "${T[enc_full]}")"
printf '| full backup vs unencrypted lifeboat | %.2f s | %.2f s | %sx its time | <= 1.15x |\n' "${T[enc_full]}" "${T[plain_full]}" "$(r "${T[enc_full]}" "${T[plain_full]}")"
printf '| incremental (2%%) vs unencrypted | %.2f s | %.2f s | %sx its time | - |\n' "${T[enc_incr]}" "${T[plain_incr]}" "$(r "${T[enc_incr]}" "${T[plain_incr]}")"
printf '| restore vs unencrypted | %.2f s | %.2f s | %sx its time | <= 1.15x |\n' "${T[enc_restore]}" "${T[plain_restore]}" "$(r "${T[enc_restore]}" "${T[plain_restore]}")"
printf '| push to lifeboat serve (loopback) vs unencrypted | %.2f s | %.2f s | %sx its time | <= 1.10x |\n' "${T[enc_push_serve]}" "${T[plain_push_serve]}" "$(r "${T[enc_push_serve]}" "${T[plain_push_serve]}")"
if [ -n "${T[enc_push_s3]:-}" ]; then
  printf '| push to Garage (S3, loopback) vs unencrypted | %.2f s | %.2f s | %sx its time | <= 1.10x |\n' "${T[enc_push_s3]}" "${T[plain_push_s3]}" "$(r "${T[enc_push_s3]}" "${T[plain_push_s3]}")"
fi
printf '| unlocking (ls on an empty repository: argon2id 64 MiB, t=3) | %.2f s | %.2f s | +%.2f s per command | - |\n' "${T[enc_ls]}" "${T[plain_ls]}" "$(echo "${T[enc_ls]} - ${T[plain_ls]}" | bc -l)"
printf '| unlocking with the key file (ls on an empty repository) | %.2f s | %.2f s | +%.2f s per command | - |\n' "${T[enc_ls_key]}" "${T[plain_ls]}" "$(echo "${T[enc_ls_key]} - ${T[plain_ls]}" | bc -l)"
echo "| repository size after both backups | $(du -sm "$WORK/enc" | cut -f1) MiB | unencrypted $(du -sm "$WORK/plain" | cut -f1) MiB, restic $(du -sm "$WORK/restic" | cut -f1) MiB | | |"
