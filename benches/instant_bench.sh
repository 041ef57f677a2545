#!/usr/bin/env bash
# Time to a booted guest from a backup on a `lifeboat serve` on loopback,
# in one run: (a) `restore --from` of the whole disk, then boot; (b)
# `lifeboat nbd --from` and boot at once on a qcow2 overlay over the
# export (chunks fetched as the guest reads them). "Booted" = the guest's
# HTTP check answers (port 8080 forwarded by QEMU's user networking).
#
# The VM: the demo's bootable guest (64 MiB) grown to SIZE (default 4G)
# with data after it (half random, half text, 1 GiB of it). Best of
# REPS=2. Needs what scripts/test.sh installs. Writes
# docs/bench-instant-latest.md (OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-instant-latest.md}
SIZE=${SIZE:-4G}
REPS=${REPS:-2}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-instantbench.XXXXXX")
server="" nbd="" vm=""
cleanup() {
  for p in $vm $nbd $server; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh assets/demo-guest.sh disk "$LIFEBOAT_GUEST_KIT" "$W/vm.raw" inst01
truncate -s "$SIZE" "$W/vm.raw"
python3 - "$W/vm.raw" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(64 << 20)
    line = b"lifeboat instant benchmark: an application's log line 0123456789\n"
    for i in range(512):
        f.write(os.urandom(1 << 20))
        f.write((line * ((1 << 20) // len(line) + 1))[: 1 << 20])
PY
"$LB" -r "$W/src" init >/dev/null
"$LB" -r "$W/src" backup inst01 --format raw --volume "root=$W/vm.raw" >/dev/null

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
# boot DISK FORMAT: QEMU on DISK until the guest's HTTP check answers.
boot() {
  qemu-system-x86_64 -accel tcg -m 256 -nodefaults -display none -no-reboot \
    -serial "file:$W/serial.log" -drive "file=$1,if=virtio,format=$2" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:8080" \
    -device virtio-net-pci,netdev=n0 >/dev/null 2>&1 &
  vm=$!
  for _ in $(seq 1 3000); do
    if curl -sf --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null | grep -q "the application answers"; then
      kill "$vm"; wait "$vm" 2>/dev/null || true; vm=""; return 0
    fi
    sleep 0.1
  done
  echo "the guest never answered" >&2; cat "$W/serial.log" >&2; exit 1
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

full="" instant=""
for r in $(seq 1 "$REPS"); do
  rm -rf "$W/fresh" "$W/restored.raw"
  t0=$(now)
  "$LB" -r "$W/fresh" restore inst01/root@latest --from "$url" --to "$W/restored.raw" >/dev/null 2>&1
  boot "$W/restored.raw" raw
  t1=$(now); full=$(min "$full" "$(echo "$t1 - $t0" | bc)")

  rm -f "$W/nbd.sock" "$W/overlay.qcow2"
  t0=$(now)
  "$LB" -r "$W/fresh2" nbd inst01/root@latest --from "$url" --socket "$W/nbd.sock" > "$W/nbd.out" 2>/dev/null &
  nbd=$!
  for _ in $(seq 1 600); do [ -S "$W/nbd.sock" ] && break; sleep 0.05; done
  qemu-img create -q -f qcow2 -b "nbd+unix:///?socket=$W/nbd.sock" -F raw "$W/overlay.qcow2"
  boot "$W/overlay.qcow2" qcow2
  t1=$(now); instant=$(min "$instant" "$(echo "$t1 - $t0" | bc)")
  kill "$nbd"; wait "$nbd" 2>/dev/null || true; nbd=""
done
# The guest's own boot, from the restored local disk: the floor of both.
boot_only=""
for r in $(seq 1 "$REPS"); do
  t0=$(now); boot "$W/restored.raw" raw; t1=$(now)
  boot_only=$(min "$boot_only" "$(echo "$t1 - $t0" | bc)")
done
ratio=$(echo "scale=2; $full / $instant" | bc)
{
  echo "# Booting from a backup: at once over NBD, or after a full restore"
  echo
  echo "\`benches/instant_bench.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, shared machine; a $SIZE raw VM (the demo's"
  echo "bootable guest + 1 GiB of data, half random, half text) on a \`lifeboat serve\` on loopback; best of $REPS;"
  echo "booted = its HTTP check answers (TCG)."
  echo
  echo "| | seconds |"
  echo "|---|---|"
  echo "| \`restore --from\` of the whole disk, then boot | $full |"
  echo "| \`nbd --from\` + qcow2 overlay, boot at once | $instant |"
  echo "| **faster** | **${ratio}x** (issue 28's goal: >= 5x) |"
  echo "| the boot alone, from the restored local disk | $boot_only |"
} > "$OUT"
cat "$OUT"
