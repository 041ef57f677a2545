#!/usr/bin/env bash
# An incremental backup of a running 4 GiB VM after 1% of its disk
# changed: with lifeboat's dirty bitmap against without it (`bitmaps =
# false`: the whole disk read through QEMU and hashed, unchanged chunks
# deduplicated). Baseline in the same run: `cat` of the disk image to
# /dev/null. Both backups must produce the same image digest (index id).
#
# The VM: tests/support/live-guest.sh's guest under qemu-system-x86_64
# (TCG), its 4 GiB qcow2 disk filled with random data. Needs what
# scripts/test.sh installs. Writes docs/bench-live-latest.md (OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-live-latest.md}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-livebench.XXXXXX")
qemu=""
cleanup() {
  if [ -n "$qemu" ]; then kill "$qemu" 2>/dev/null; wait "$qemu" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh tests/support/live-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh tests/support/live-guest.sh initrd "$LIFEBOAT_GUEST_KIT" "$W/initrd.gz"

echo "filling a 4 GiB disk with random data..."
head -c 4G /dev/urandom > "$W/fill.raw"
qemu-img convert -q -f raw -O qcow2 "$W/fill.raw" "$W/va.qcow2"
rm "$W/fill.raw"
truncate -s 64M "$W/vb.raw"

mkfifo "$W/console.in"
exec 3<>"$W/console.in"
qemu-system-x86_64 -accel tcg -m 256 -nodefaults -display none -no-reboot \
  -kernel "$LIFEBOAT_GUEST_KIT/vmlinuz" -initrd "$W/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" -serial stdio \
  -drive "file=$W/va.qcow2,if=virtio,format=qcow2" \
  -drive "file=$W/vb.raw,if=virtio,format=raw" \
  -qmp "unix:$W/qmp.sock,server=on,wait=off" <&3 >"$W/console.log" 2>/dev/null &
qemu=$!
wait_for() {
  for _ in $(seq 1 1200); do grep -q "$1" "$W/console.log" && return 0; sleep 0.1; done
  echo "the guest never printed '$1':" >&2; cat "$W/console.log" >&2; exit 1
}
wait_for "live-guest: up"
echo pause >&3
wait_for "live-guest: paused"

for r in a b; do
  bitmaps=true; [ $r = b ] && bitmaps=false
  cat > "$W/$r.toml" <<EOF
repository = "repo-$r"
[[vm]]
name = "bench"
qmp = "$W/qmp.sock"
bitmaps = $bitmaps
[[vm.volume]]
name = "vda"
role = "root"
path = "$W/va.qcow2"
format = "qcow2"
EOF
  "$LB" --config "$W/$r.toml" init "$W/repo-$r" >/dev/null
done

# secs bytes_read index incremental of `backup --json` (the vda volume)
backup() {
  local t0 t1
  t0=$(date +%s.%N)
  "$LB" --config "$W/$1.toml" backup bench --json 2>/dev/null > "$W/out.json"
  t1=$(date +%s.%N)
  python3 - "$W/out.json" "$t0" "$t1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
dec, i, last = json.JSONDecoder(), 0, None
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    last, i = dec.raw_decode(text, i)
v = last["volumes"][0]
print(f'{float(sys.argv[3]) - float(sys.argv[2]):.2f} {v["capture"]["bytes_read"]} {v["index"]} {str(v["capture"]["incremental"]).lower()}')
EOF
}

echo "first backups (full)..."
read -r full_a_s full_a_read _ _ < <(backup a)
read -r full_b_s full_b_read _ _ < <(backup b)
echo "dirty 1 41" >&3          # 41 MiB of 4096: 1%
wait_for "live-guest: dirty done"
echo "incremental backups..."
read -r a_s a_read a_index a_incr < <(backup a)
read -r b_s b_read b_index b_incr < <(backup b)
[ "$a_incr" = true ] || { echo "the bitmap backup was not incremental" >&2; exit 1; }
[ "$a_index" = "$b_index" ] || { echo "digests differ: $a_index vs $b_index" >&2; exit 1; }
cat "$W/va.qcow2" > /dev/null   # warm, as the backups had it
t0=$(date +%s.%N); cat "$W/va.qcow2" > /dev/null; t1=$(date +%s.%N)
cat_s=$(python3 -c "print(f'{$t1 - $t0:.2f}')")

mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
ratio() { python3 -c "print(f'{$1 / max($2, 0.001):.2f}')"; }
cores=$(nproc)
cat > "$OUT" <<EOF
# Running-VM incremental backup: dirty bitmap against a full read

\`benches/live_bench.sh\` on $(date -u +%Y-%m-%d), $cores cores (shared machine),
QEMU $(qemu-system-x86_64 --version | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1) under TCG.

A running VM (the test guest, paused writer) with a 4 GiB qcow2 disk of
random data; after a first full backup into each of two repositories, the
guest rewrites 41 MiB (1%) at scattered places, then each repository takes
an incremental backup through QEMU (fleecing over NBD): one with the dirty
bitmap, one with \`bitmaps = false\`. Both end with the same image digest
(\`$a_index\`).

| backup | time | read through NBD | vs cat of the image |
|---|---|---|---|
| first, full (repository a) | ${full_a_s} s | $(mib "$full_a_read") MiB | $(ratio "$full_a_s" "$cat_s")x |
| first, full (repository b) | ${full_b_s} s | $(mib "$full_b_read") MiB | $(ratio "$full_b_s" "$cat_s")x |
| incremental with the bitmap | ${a_s} s | $(mib "$a_read") MiB | $(ratio "$a_s" "$cat_s")x |
| incremental without (full read) | ${b_s} s | $(mib "$b_read") MiB | $(ratio "$b_s" "$cat_s")x |
| \`cat\` of the 4 GiB image (page cache warm) | ${cat_s} s | | 1.00x |

The bitmap backup read $(python3 -c "print(f'{100 * $a_read / 4294967296:.2f}')")% of the disk and took
$(ratio "$b_s" "$a_s")x less time than the full read.
EOF
cat "$OUT"
