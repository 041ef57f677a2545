#!/usr/bin/env bash
# Upload throughput of a restore into a cloud, against a plain HTTP upload
# of the same bytes to the same server in the same run:
# - OpenStack: `cloud-restore` into the stand-in (tests/support/
#   openstack_standin.py: Glance upload streamed out of the repository,
#   MD5 + SHA-512 computed on both sides) vs `curl -T` of the raw image to
#   the stand-in's plain PUT endpoint (same Python server, which stores and
#   hashes it the same way);
# - AWS: `cloud-restore` into moto (EBS direct PutSnapshotBlock, 512 KiB
#   blocks with SHA-256, 16 in flight) vs `curl -T` of the image as one S3
#   PutObject to the same moto server.
# The image is random (no zero blocks), so both sides send the same bytes.
# Needs what scripts/test.sh installs. Writes docs/bench-cloud-latest.md
# (OUT=...). SIZE=512M by default.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-cloud-latest.md}
SIZE=${SIZE:-512M}
PY=${LIFEBOAT_TEST_MOTO_PYTHON:-$HOME/.cache/lifeboat/moto-venv/bin/python}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-cloudbench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
rate() { echo "scale=1; $1 / 1048576 / $2" | bc -l; }

head -c "$SIZE" /dev/urandom > "$W/root.raw"
bytes=$(stat -c %s "$W/root.raw")
cat > "$W/lifeboat.toml" <<EOF2
repository = "repo"
[[vm]]
name = "bench"
[[vm.volume]]
name = "root"
role = "root"
path = "$W/root.raw"
format = "raw"
EOF2
export LIFEBOAT_CONFIG=$W/lifeboat.toml OS_PASSWORD=s3cret-pw
export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
(cd "$W" && "$LB" init -q >/dev/null 2>&1 || "$LB" init >/dev/null)
(cd "$W" && "$LB" backup bench >/dev/null)

# --- OpenStack stand-in
mkdir "$W/os"
python3 tests/support/openstack_standin.py "$W/os" > "$W/os.port" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$W/os.port" && break; sleep 0.1; done
osport=$(awk '{print $2}' "$W/os.port")
cat >> "$W/lifeboat.toml" <<EOF2
[cloud.osp]
provider = "openstack"
endpoint = "http://127.0.0.1:$osport/identity/v3"
username = "admin"
project = "dr"
password_env = "OS_PASSWORD"
flavor = "m1.small"
network = "dr-net"
EOF2
t0=$(now); curl -sf -T "$W/root.raw" "http://127.0.0.1:$osport/_standin/plain" >/dev/null; t1=$(now)
os_plain=$(secs "$t0" "$t1")
(cd "$W" && "$LB" --json cloud-restore bench@latest --target osp > "$W/os.json")
os_up=$(python3 -c "import json; print(json.load(open('$W/os.json'))['upload_seconds'])")
os_all=$(python3 -c "import json; print(json.load(open('$W/os.json'))['seconds'])")

# --- moto
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$mport" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$mport/moto-api/" >/dev/null && break; sleep 0.1; done
murl=http://127.0.0.1:$mport
setup=$("$PY" tests/support/moto_client.py setup "$murl")
subnet=$(echo "$setup" | python3 -c 'import json,sys; print(json.load(sys.stdin)["subnet"])')
cat >> "$W/lifeboat.toml" <<EOF2
[cloud.aws]
provider = "aws"
region = "us-east-1"
endpoint = "$murl"
instance_type = "t3.small"
subnet = "$subnet"
EOF2
sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY")
curl -sf "${sig[@]}" -X PUT "$murl/bench-plain" >/dev/null
t0=$(now); curl -sf "${sig[@]}" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$W/root.raw" "$murl/bench-plain/root.raw" >/dev/null; t1=$(now)
aws_plain=$(secs "$t0" "$t1")
(cd "$W" && "$LB" --json cloud-restore bench@latest --target aws > "$W/aws.json")
aws_up=$(python3 -c "import json; print(json.load(open('$W/aws.json'))['upload_seconds'])")
aws_all=$(python3 -c "import json; print(json.load(open('$W/aws.json'))['seconds'])")
aws_sent=$(python3 -c "import json; print(json.load(open('$W/aws.json'))['uploaded_bytes'])")
[ "$aws_sent" = "$bytes" ] || { echo "EBS upload sent $aws_sent of $bytes bytes" >&2; exit 1; }

mib=$((bytes / 1048576))
{
  echo "# Restore-to-cloud upload throughput (latest run)"
  echo
  echo "\`benches/cloud_bench.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), a random ${mib} MiB root volume"
  echo "(no zero blocks: every byte is sent). Baselines: a plain HTTP PUT of the same"
  echo "file with curl to the same server in the same run."
  echo
  echo "| upload | seconds | MiB/s | vs plain upload |"
  echo "|---|---|---|---|"
  printf "| plain PUT to the OpenStack stand-in (curl) | %.2f | %s | 1.00x |\n" "$os_plain" "$(rate "$bytes" "$os_plain")"
  printf "| cloud-restore into the stand-in: Glance upload (streamed from the repository, MD5+SHA-512) | %.2f | %s | %.2fx |\n" "$os_up" "$(rate "$bytes" "$os_up")" "$(echo "$os_up / $os_plain" | bc -l)"
  printf "| plain S3 PutObject to moto (curl) | %.2f | %s | 1.00x |\n" "$aws_plain" "$(rate "$bytes" "$aws_plain")"
  printf "| cloud-restore into moto: EBS direct PutSnapshotBlock (512 KiB, SHA-256, 16 in flight) | %.2f | %s | %.2fx |\n" "$aws_up" "$(rate "$bytes" "$aws_up")" "$(echo "$aws_up / $aws_plain" | bc -l)"
  echo
  printf "Whole restore (auth, upload, image/snapshot ready, server running): stand-in %.2f s, moto %.2f s.\n" "$os_all" "$aws_all"
  echo "\"vs plain upload\" is time over the baseline's time (lower is better)."
} > "$OUT"
cat "$OUT"
