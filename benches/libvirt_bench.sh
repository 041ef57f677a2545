#!/usr/bin/env bash
# lifeboat against virtnbdbackup (Debian's 1.9.15, the open-source
# reference for libvirt backups) on the same running libvirt domain, one
# after the other in one run: a full backup (best of REPS=3, each into an
# empty repository), five incrementals after the same guest change (the
# guest rewrites 10 MiB of its disk at scattered places before each round,
# and is otherwise idle), the bytes each keeps after the full and the five
# incrementals, and the time to restore the newest point to a file (best
# of REPS). Both read through libvirt's pull-mode backup
# API; lifeboat's restore must equal virtnbdbackup's, byte for byte.
#
# The domain: tests/support/live-guest.sh's guest (TCG) under a private
# libvirtd (scripts/libvirt.sh) with a 2 GiB qcow2 disk holding, with
# DATA=os (the default), an ext4 filesystem made from this host's
# /usr/share and /usr/bin (about 1 GiB of real OS files, `mke2fs -d`), or
# with DATA=random, 512 MiB of random data and 512 MiB of base64 text (a
# worst case for compression); the rest never written.
# Needs what scripts/test.sh installs; runs as root. Writes
# docs/bench-libvirt-latest.md (DATA=os) or docs/bench-libvirt-random-latest.md
# (OUT=... to change).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
DATA=${DATA:-os}
case "$DATA" in
  os) OUT=${OUT:-docs/bench-libvirt-latest.md} ;;
  random) OUT=${OUT:-docs/bench-libvirt-random-latest.md} ;;
  *) echo "DATA is os or random" >&2; exit 2 ;;
esac
W=$(mktemp -d /tmp/lb-lvbench.XXXXXX)
D=$(mktemp -d /tmp/lb-lvd.XXXXXX)
cleanup() {
  scripts/libvirt.sh stop "$D" >/dev/null 2>&1 || true
  rm -rf "$W" "$D"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh tests/support/live-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh tests/support/live-guest.sh initrd "$LIFEBOAT_GUEST_KIT" "$W/initrd.gz"
cp "$LIFEBOAT_GUEST_KIT/vmlinuz" "$W/"

if [ "$DATA" = os ]; then
  echo "making a 2 GiB disk: ext4 with this host's /usr/share and /usr/bin..."
  mkdir -p "$W/root"
  # Hard links (same filesystem) or copies: nothing of the host changes.
  cp -al /usr/share "$W/root/share" 2>/dev/null || cp -a /usr/share "$W/root/share"
  cp -al /usr/bin "$W/root/bin" 2>/dev/null || cp -a /usr/bin "$W/root/bin"
  truncate -s 2G "$W/fill.raw"
  mke2fs -q -t ext4 -d "$W/root" "$W/fill.raw"
  rm -rf "$W/root"
  disk_what="ext4 from /usr/share and /usr/bin ($(du -sm "$W/fill.raw" | cut -f1) MiB written)"
else
  echo "making a 2 GiB disk: 512 MiB random, 512 MiB text..."
  # (base64 is cut off by head: not a failure.)
  set +o pipefail
  { head -c 512M /dev/urandom; base64 -w 76 /dev/urandom | head -c 512M; } > "$W/fill.raw"
  set -o pipefail
  truncate -s 2G "$W/fill.raw"
  disk_what="512 MiB random + 512 MiB base64 text"
fi
qemu-img convert -q -f raw -O qcow2 "$W/fill.raw" "$W/va.qcow2"
rm "$W/fill.raw"
qemu-img create -q -f qcow2 "$W/vb.qcow2" 64M
chown -R libvirt-qemu: "$W"
chmod 755 "$W"

scripts/libvirt.sh start "$D" >/dev/null
URI=$(cat "$D/uri")
virsh() { command virsh -q -c "$URI" "$@"; }
cat > "$W/dom.xml" <<EOF
<domain type='qemu'>
  <name>bench</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$W/vmlinuz</kernel>
    <initrd>$W/initrd.gz</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/va.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/vb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='unix'><source mode='bind' path='$W/console.sock'/><target port='0'/></serial>
  </devices>
</domain>
EOF
virsh define "$W/dom.xml" >/dev/null
virsh start bench >/dev/null

# console [COMMAND] PATTERN: sends COMMAND to the guest's serial console
# and waits for PATTERN.
console() {
  python3 - "$W/console.sock" "$@" <<'EOF'
import socket, sys, time
path, args = sys.argv[1], sys.argv[2:]
cmd, pat = (args[0], args[1]) if len(args) == 2 else (None, args[0])
deadline = time.time() + 600
while True:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        if time.time() > deadline: sys.exit("no console")
        time.sleep(0.1)
if cmd: s.sendall((cmd + "\n").encode())
buf = b""
s.settimeout(1)
while pat.encode() not in buf:
    if time.time() > deadline: sys.exit("never saw " + pat)
    try:
        d = s.recv(65536)
        if not d: break
        buf += d
    except socket.timeout:
        pass
EOF
}
console "live-guest: up"
# The record writer stops: the only change between backups is `dirty`.
console pause "live-guest: paused"

cat > "$W/lb.toml" <<EOF
repository = "repo"
[libvirt]
uri = "$URI"
EOF

REPS=${REPS:-3}
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
no_checkpoints() { for cp in $(virsh checkpoint-list bench --name); do virsh checkpoint-delete bench "$cp" >/dev/null; done; }
# $1: full or inc; an incremental must have read only what changed (a
# checkpoint the other tool removed would make it a full read).
lb_backup() {
  "$LB" --config "$W/lb.toml" backup bench --json >"$W/lb.json" 2>"$W/lb.err" || { cat "$W/lb.err" >&2; exit 1; }
  if [ "$1" = inc ] && [ "$(grep -oE '"incremental": *true' "$W/lb.json" | wc -l)" -lt 2 ]; then
    echo "lifeboat's incremental read a disk in full:" >&2; cat "$W/lb.json" >&2; exit 1
  fi
}
vnb_backup() {
  virtnbdbackup -U "$URI" -d bench -l "$1" -o "$W/vnb" -n -S "$W" >/dev/null 2>"$W/vnb.err" \
    || { tail -20 "$W/vnb.err" >&2; exit 1; }
}
# Each full backup into a new, empty repository (output directory) with no
# checkpoint on the domain.
lb_fresh() { rm -rf "$W/repo"; "$LB" --config "$W/lb.toml" init "$W/repo" >/dev/null; }
vnb_fresh() { rm -rf "$W/vnb"; mkdir -p "$W/vnb"; }

# virtnbdbackup refuses a domain with checkpoints it did not make, so the
# two chains run one after the other on the same domain: the best of REPS
# full backups, then five incrementals after the same `dirty` rounds (same
# places, same sizes) on the last full.
# chain TOOL: sets full_s (best of REPS) and inc_s (the five, summed).
chain() {
  local t0 t1 r
  full_s=""
  for r in $(seq 1 "$REPS"); do
    no_checkpoints
    "$1_fresh"
    t0=$(now); "$1_backup" full; t1=$(now); full_s=$(min "$full_s" "$(secs "$t0" "$t1")")
  done
  inc_s=0
  for i in 1 2 3 4 5; do
    console "dirty $i" "live-guest: dirty done"
    t0=$(now); "$1_backup" inc; t1=$(now); inc_s=$(echo "$inc_s + $(secs "$t0" "$t1")" | bc)
  done
}
echo "lifeboat: full backups, then 5 incrementals..."
chain lb
lb_full=$full_s lb_inc=$inc_s
lb_bytes=$(du -sb "$W/repo" | cut -f1)
echo "virtnbdbackup: full backups, then 5 incrementals..."
chain vnb
vnb_full=$full_s vnb_inc=$inc_s
vnb_bytes=$(du -sb "$W/vnb" | cut -f1)
# The guest is idle since virtnbdbackup's last backup: one more lifeboat
# backup (a full read: its checkpoint was removed for virtnbdbackup; not
# timed) holds the same disk, so both restores can be compared.
"$LB" --config "$W/lb.toml" backup bench >/dev/null 2>&1

echo "restores of the newest point (best of $REPS)..."
lb_restore="" vnb_restore=""
for r in $(seq 1 "$REPS"); do
  rm -f "$W/lb-vda.raw"
  t0=$(now)
  "$LB" --config "$W/lb.toml" restore bench/vda@latest --to "$W/lb-vda.raw" >/dev/null
  t1=$(now); lb_restore=$(min "$lb_restore" "$(secs "$t0" "$t1")")
  rm -rf "$W/vnb-out"; mkdir -p "$W/vnb-out"
  t0=$(now)
  virtnbdrestore -U "$URI" -i "$W/vnb" -o "$W/vnb-out" -d vda -n >/dev/null 2>"$W/vnbr.err" \
    || { tail -20 "$W/vnbr.err" >&2; exit 1; }
  t1=$(now); vnb_restore=$(min "$vnb_restore" "$(secs "$t0" "$t1")")
done
vnb_image=$(ls "$W"/vnb-out/* | grep -v '\.xml$' | head -1)
qemu-img compare -q "$W/lb-vda.raw" "$vnb_image" \
  || { echo "the two restores differ" >&2; exit 1; }

ratio() { echo "scale=2; $1 / $2" | bc; }
mib() { echo "scale=1; $1 / 1048576" | bc; }
{
  echo "# lifeboat vs virtnbdbackup on one running libvirt domain"
  echo
  echo "\`benches/libvirt_bench.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "libvirt $(command virsh -c "$URI" version | awk '/Using library/ {print $4; exit}'),"
  echo "QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') (TCG), virtnbdbackup $(virtnbdbackup -V 2>&1 | tail -1)."
  echo "Disk: 2 GiB qcow2, $disk_what, $(qemu-img info -U --output=json "$W/va.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["actual-size"] >> 20)') MiB allocated;"
  echo "each incremental after the guest rewrote 10 MiB at scattered places (1 MiB"
  echo "each). lifeboat: default repository (4 MiB chunks, zstd 1); virtnbdbackup:"
  echo "defaults (stream format, no compression). Restores compared equal."
  echo
  echo "| | lifeboat | virtnbdbackup | virtnbdbackup / lifeboat |"
  echo "|---|---|---|---|"
  echo "| full backup (s, best of $REPS) | $lb_full | $vnb_full | $(ratio "$vnb_full" "$lb_full") |"
  echo "| 5 incrementals (s, total) | $lb_inc | $vnb_inc | $(ratio "$vnb_inc" "$lb_inc") |"
  echo "| stored after full + 5 inc (MiB) | $(mib "$lb_bytes") | $(mib "$vnb_bytes") | $(ratio "$vnb_bytes" "$lb_bytes") |"
  echo "| restore newest point (s, best of $REPS) | $lb_restore | $vnb_restore | $(ratio "$vnb_restore" "$lb_restore") |"
} > "$OUT"
cat "$OUT"
