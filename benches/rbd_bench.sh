#!/usr/bin/env bash
# RBD volumes against Ceph's own tools, in one run on a one-node Ceph
# (scripts/ceph/start.sh, memstore OSD, loopback): a full backup of a 1 GiB
# image holding 768 MiB of data (ext4 made from this host's /usr/share,
# `mke2fs -d`) against `rbd export` of the same snapshot to /dev/null; an
# incremental after 3 scattered 1 MiB writes against what `rbd diff`
# reports; a restore onto a new RBD image against `rbd import` of the same
# image. Best of REPS=3 for the timed ones. Writes
# docs/bench-rbd-latest.md (OUT=...). Needs what scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-rbd-latest.md}
REPS=${REPS:-3}
W=$(mktemp -d /tmp/lb-rbdbench.XXXXXX)
cleanup() {
  bash scripts/ceph/stop.sh "$W/c" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
STORE_BYTES=$((6 << 30)) bash scripts/ceph/start.sh "$W/c" >/dev/null
export CEPH_CONF=$W/c/ceph.conf

echo "making the image..."
mkdir -p "$W/root"
cp -al /usr/share "$W/root/share" 2>/dev/null || cp -a /usr/share "$W/root/share"
truncate -s 1G "$W/fill.raw"
mke2fs -q -t ext4 -d "$W/root" "$W/fill.raw"
rm -rf "$W/root"
rbd import --no-progress "$W/fill.raw" rbd/disk
written=$(du -sm "$W/fill.raw" | cut -f1)

cat > "$W/lb.toml" <<EOF
repository = "repo"
[ceph]
conf = "$CEPH_CONF"
[[vm]]
name = "bench"
[[vm.volume]]
name = "root"
path = "rbd:rbd/disk"
EOF

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
lb() { "$LB" --config "$W/lb.toml" "$@"; }

echo "full backups and rbd export..."
lb_full="" export_s=""
for r in $(seq 1 "$REPS"); do
  for s in $(rbd snap ls rbd/disk --format json | python3 -c 'import json,sys; print(" ".join(x["name"] for x in json.load(sys.stdin)))'); do
    rbd snap rm --no-progress "rbd/disk@$s" >/dev/null 2>&1
  done
  rm -rf "$W/repo"; lb init "$W/repo" >/dev/null
  t0=$(now); lb backup bench >/dev/null 2>&1; t1=$(now); lb_full=$(min "$lb_full" "$(secs "$t0" "$t1")")
  snap=$(rbd snap ls rbd/disk --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
  t0=$(now); rbd export --no-progress "rbd/disk@$snap" - > /dev/null; t1=$(now)
  export_s=$(min "$export_s" "$(secs "$t0" "$t1")")
done

echo "the same bytes from a raw file, and the read path alone..."
cat > "$W/file.toml" <<EOF
repository = "repo-file"
[[vm]]
name = "bench"
[[vm.volume]]
name = "root"
path = "$W/fill.raw"
format = "raw"
EOF
file_full="" hash_s="" cat_s=""
for r in $(seq 1 "$REPS"); do
  rm -rf "$W/repo-file"; "$LB" --config "$W/file.toml" init "$W/repo-file" >/dev/null
  t0=$(now); "$LB" --config "$W/file.toml" backup bench >/dev/null 2>&1; t1=$(now)
  file_full=$(min "$file_full" "$(secs "$t0" "$t1")")
  t0=$(now); cat "$W/fill.raw" > /dev/null; t1=$(now); cat_s=$(min "$cat_s" "$(secs "$t0" "$t1")")
  t0=$(now); lb hash rbd:rbd/disk >/dev/null 2>&1; t1=$(now); hash_s=$(min "$hash_s" "$(secs "$t0" "$t1")")
done

echo "an incremental..."
for k in 1 2 3; do
  qemu-io -f raw rbd:rbd/disk -c "write -P $((k + 16)) $((k * 300))M 1M" >/dev/null
done
sleep 6 # the writer's watch times out (5 s in this cluster): snapshots wait for watchers
base=$(rbd snap ls rbd/disk --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["name"])')
reported=$(rbd diff --from-snap "$base" rbd/disk --format json | python3 -c 'import json,sys; print(sum(e["length"] for e in json.load(sys.stdin)))')
t0=$(now); lb backup bench --json > "$W/inc.json" 2>/dev/null; t1=$(now); inc_s=$(secs "$t0" "$t1")
inc_read=$(python3 - "$W/inc.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
dec, i, last = json.JSONDecoder(), 0, None
while i < len(text):
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        break
    last, i = dec.raw_decode(text, i)
c = last["volumes"][0]["capture"]
assert c["incremental"], c
print(c["bytes_read"])
EOF
)

echo "restores and rbd import..."
lb_restore="" import_s=""
rbd export --no-progress rbd/disk "$W/now.raw"
for r in $(seq 1 "$REPS"); do
  rbd rm --no-progress rbd/restored >/dev/null 2>&1 || true
  t0=$(now); lb restore bench/root@latest --to rbd:rbd/restored >/dev/null 2>&1; t1=$(now)
  lb_restore=$(min "$lb_restore" "$(secs "$t0" "$t1")")
  rbd rm --no-progress rbd/imported >/dev/null 2>&1 || true
  t0=$(now); rbd import --no-progress "$W/now.raw" rbd/imported; t1=$(now)
  import_s=$(min "$import_s" "$(secs "$t0" "$t1")")
done
file_restore=""
for r in $(seq 1 "$REPS"); do
  rm -f "$W/restored.raw"
  t0=$(now); lb restore bench/root@latest --to "$W/restored.raw" >/dev/null 2>&1; t1=$(now)
  file_restore=$(min "$file_restore" "$(secs "$t0" "$t1")")
done
rbd export --no-progress rbd/restored "$W/back.raw"
cmp -s "$W/now.raw" "$W/back.raw" || { echo "the RBD restore differs" >&2; exit 1; }

ratio() { echo "scale=2; $1 / $2" | bc; }
{
  echo "# RBD volumes against rbd export / rbd import"
  echo
  echo "\`benches/rbd_bench.sh\`, $(date -u +%Y-%m-%d), $(nproc) cores, Ceph $(ceph --version | awk '{print $3}') (one node, memstore OSD),"
  echo "a 1 GiB image holding ext4 from /usr/share (${written} MiB written); best of $REPS for the timed rows."
  echo
  echo "| | lifeboat | Ceph's tool | lifeboat / tool | goal |"
  echo "|---|---|---|---|---|"
  echo "| full backup vs \`rbd export SNAP - >/dev/null\` (s) | $lb_full | $export_s | $(ratio "$lb_full" "$export_s") | <= 1.5 |"
  echo "| incremental: bytes read vs \`rbd diff --from-snap\` | $inc_read | $reported | $(ratio "$inc_read" "$reported") | <= 1.1 |"
  echo "| restore onto a new image vs \`rbd import FILE\` (s) | $lb_restore | $import_s | $(ratio "$lb_restore" "$import_s") | <= 1.5 |"
  echo
  echo "The incremental (3 scattered 1 MiB writes) took $inc_s s."
  echo
  echo "Where the time goes (same run, same bytes):"
  echo
  echo "| | seconds | over the RBD row above |"
  echo "|---|---|---|"
  echo "| \`lifeboat hash rbd:rbd/disk\` (own snapshot, read through qemu-nbd, BLAKE3; nothing stored) | $hash_s | $(ratio "$hash_s" "$export_s") x rbd export |"
  echo "| full backup of the same bytes from a raw file | $file_full | RBD backup $(ratio "$lb_full" "$file_full") x this |"
  echo "| \`cat\` of that file to /dev/null (page cache) | $cat_s | |"
  echo "| restore of the same backup to a local file | $file_restore | RBD restore $(ratio "$lb_restore" "$file_restore") x this |"
} > "$OUT"
cat "$OUT"
