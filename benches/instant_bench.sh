#!/usr/bin/env bash
# Time to a serving VM from a backup on a `lifeboat serve` on loopback, in
# one run: (a) `restore VM@latest --from` of every disk, then boot; (b)
# `restore VM@latest --instant --from`: the VM boots at once on overlays
# over NBD exports of the backup while its disks are copied into place.
# "Serving" = the guest's HTTP check answers (port 8080 forwarded by
# QEMU's user networking). After (b) the copied disks are compared with
# (a)'s: byte-equal, or the script fails.
#
# The VM: the demo's bootable guest (64 MiB) grown to SIZE (default 4G),
# run twice: with 1 GiB of data after it, and with FULL (default 3.5G)
# — a disk that is mostly full. Data is half random, half text. Best of
# REPS=2. TCG (no KVM here): the guest's own boot is the floor of both.
# Needs what scripts/test.sh installs. Writes docs/bench-instant-latest.md
# (OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-instant-latest.md}
SIZE=${SIZE:-4G}
FULL=${FULL:-3584}
REPS=${REPS:-2}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-instantbench.XXXXXX")
server="" vm="" inst=""
cleanup() {
  for p in $vm $inst $server; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  for f in "$W"/inst*/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
"$LB" -r "$W/src" init >/dev/null
# make_vm NAME DATA_MIB: the guest's disk with DATA_MIB of data after it.
make_vm() {
  sh assets/demo-guest.sh disk "$LIFEBOAT_GUEST_KIT" "$W/$1.raw" "$1"
  truncate -s "$SIZE" "$W/$1.raw"
  python3 - "$W/$1.raw" "$2" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(64 << 20)
    line = b"lifeboat instant benchmark: an application's log line 0123456789\n"
    text = (line * ((1 << 20) // len(line) + 1))[: 1 << 20]
    for i in range(int(sys.argv[2]) // 2):
        f.write(os.urandom(1 << 20))
        f.write(text)
PY
  "$LB" -r "$W/src" backup "$1" --format raw --volume "root=$W/$1.raw" >/dev/null
}
make_vm small 1024
make_vm full "$FULL"

"$LB" serve token add bench --role append --tokens "$W/tokens.toml" | tail -1 > "$W/token"
mkdir "$W/offsite"
"$LB" -r "$W/offsite" serve --listen 127.0.0.1:0 --tokens "$W/tokens.toml" > "$W/serve.out" 2>/dev/null &
server=$!
for _ in $(seq 50); do grep -q "listening on" "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$W/serve.out" | head -1)
export LIFEBOAT_TOKEN
LIFEBOAT_TOKEN=$(cat "$W/token")
"$LB" -r "$W/src" push "$url" --init >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
now() { date +%s.%N; }
answers() { curl -sf --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null | grep -q "the application answers"; }
# boot DISK FORMAT: QEMU on DISK until the guest's HTTP check answers.
boot() {
  qemu-system-x86_64 -accel tcg -m 256 -nodefaults -display none -no-reboot \
    -serial "file:$W/serial.log" -drive "file=$1,if=virtio,format=$2" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:8080" \
    -device virtio-net-pci,netdev=n0 >/dev/null 2>&1 &
  vm=$!
  for _ in $(seq 1 3000); do
    if answers; then
      kill "$vm"; wait "$vm" 2>/dev/null || true; vm=""; return 0
    fi
    sleep 0.1
  done
  echo "the guest never answered" >&2; cat "$W/serial.log" >&2; exit 1
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

rows=""
for run in small: full: small:100M full:100M; do
  name=${run%%:*} link=${run#*:}
  lim=()
  [ -n "$link" ] && lim=(--limit-download "$link")
  full="" first="" local=""
  for r in $(seq 1 "$REPS"); do
    rm -rf "$W/fresh" "$W/restored"
    t0=$(now)
    "$LB" "${lim[@]}" -r "$W/fresh" restore "$name@latest" --from "$url" --to "$W/restored" >/dev/null 2>&1
    boot "$W/restored/root.raw" raw
    t1=$(now); full=$(min "$full" "$(echo "$t1 - $t0" | bc)")

    rm -rf "$W/inst"
    t0=$(now)
    "$LB" "${lim[@]}" -r "$W/none" restore "$name@latest" --instant --accel tcg --from "$url" \
      --to "$W/inst" --forward "$port:8080" > "$W/inst.out" 2> "$W/inst.err" &
    inst=$!
    answered=""
    for _ in $(seq 1 3000); do
      if answers; then answered=$(now); break; fi
      sleep 0.1
    done
    [ -n "$answered" ] || { echo "the instantly restored guest never answered" >&2; cat "$W/inst.err" >&2; exit 1; }
    wait "$inst" || { cat "$W/inst.err" >&2; exit 1; }
    inst=""
    t2=$(now)
    first=$(min "$first" "$(echo "$answered - $t0" | bc)")
    local=$(min "$local" "$(echo "$t2 - $t0" | bc)")
    pid=$(cat "$W/inst/$name.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "the instantly restored VM is not running after the restore:" >&2
      ls -la "$W/inst" >&2; cat "$W/inst.out" >&2; tail -5 "$W/inst.err" >&2
      tail -5 "$W/inst/$name.serial.log" >&2 || true
      exit 1
    fi
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    qemu-img compare -q -f raw -F raw "$W/inst/root.raw" "$W/restored/root.raw" ||
      { echo "the instant restore's disk differs from a plain restore's" >&2; exit 1; }
  done
  ratio=$(echo "scale=2; $full / $first" | bc)
  data=$([ "$name" = small ] && echo "1 GiB" || echo "$FULL MiB")
  via=$([ -n "$link" ] && echo "a $link/s link (--limit-download $link)" || echo "loopback, unlimited")
  rows="$rows| $SIZE VM, $data of data | $via | $full | $first | **${ratio}x** | $local |
"
done
# The guest's own boot, from the restored local disk: the floor of both.
boot_only=""
for r in $(seq 1 "$REPS"); do
  t0=$(now); boot "$W/restored/root.raw" raw; t1=$(now)
  boot_only=$(min "$boot_only" "$(echo "$t1 - $t0" | bc)")
done
{
  echo "# Instant restore: serving at once, or after a full restore"
  echo
  echo "\`benches/instant_bench.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, shared machine; the demo's"
  echo "bootable guest grown to $SIZE with data after it (half random, half text) on a \`lifeboat serve\`"
  echo "on loopback; best of $REPS; serving = its HTTP check answers; TCG (no KVM on this machine)."
  echo
  echo "| VM | link | restore --from, then boot (s) | restore --instant: answering (s) | faster | --instant: on local disks (s) |"
  echo "|---|---|---|---|---|---|"
  printf "%s" "$rows"
  echo
  echo "The guest's own boot from a local disk (the floor of both columns): $boot_only s."
  echo "Issue 28's goal: >= 5x. After each instant restore its copied disk was compared"
  echo "with the plain restore's: byte-equal."
} > "$OUT"
cat "$OUT"
