#!/usr/bin/env bash
# Remote benchmark: push/pull of the store benchmark's 2 GiB image to a
# `lifeboat serve` on loopback and to a 3-node Garage cluster, against curl
# uploading the same bytes (one file) to nginx (WebDAV PUT) on loopback, and
# against `rclone copy --transfers 8` of the same repository directory to the
# same Garage bucket (the baseline for pushing to S3).
#   benches/remote_bench.sh            (needs nginx, rclone, garage; run store_bench.sh first for the images)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
WORK=${BENCH_WORK:-$PWD/bench-work}
IMG=$WORK/image.raw; IMG2=$WORK/image-changed.raw
[ -f "$IMG" ] || python3 benches/make_image.py "$IMG" "$IMG2" $((2048 << 20)) 2
for t in nginx curl rclone garage; do command -v $t >/dev/null || { echo "missing $t (apt-get install nginx curl rclone; cargo install garage)" >&2; exit 1; }; done
cargo build --release --quiet
LB=$PWD/target/release/lifeboat
R=$WORK/remote; rm -rf "$R"; mkdir -p "$R"/{srv,dav,nginx}
cleanup() {
  [ -n "${SRV_PID:-}" ] && kill "$SRV_PID" 2>/dev/null
  [ -f "$R/nginx/nginx.pid" ] && kill "$(cat "$R/nginx/nginx.pid")" 2>/dev/null
  scripts/garage.sh stop "$R/garage" 2>/dev/null || true
}
trap cleanup EXIT

# Local repository with the full backup.
$LB init "$R/local" >/dev/null
$LB -r "$R/local" backup bench --format raw --volume "disk=$IMG" >/dev/null
STORED=$(find "$R/local/chunks" "$R/local/indexes" "$R/local/manifests" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
# The same bytes as one file, for curl.
find "$R/local/chunks" -type f -print0 | xargs -0 cat > "$R/blob"
BLOB=$(stat -c %s "$R/blob")

# nginx WebDAV sink on loopback.
cat > "$R/nginx/nginx.conf" <<CONF
daemon on; pid $R/nginx/nginx.pid; error_log $R/nginx/error.log; worker_processes 2;
events {}
http { access_log off; client_max_body_size 0; client_body_temp_path $R/nginx/tmp;
  server { listen 127.0.0.1:18471; root $R/dav; location / { dav_methods PUT; create_full_put_path on; } } }
CONF
mkdir -p "$R/nginx/tmp"
# nginx workers run as another user when started by root: let them write the sink.
chmod 0777 "$R/dav" "$R/nginx/tmp"
nginx -c "$R/nginx/nginx.conf"

# lifeboat server.
TOKEN=$($LB serve token add bench --role append --tokens "$R/tokens.toml" | tail -1)
$LB -r "$R/srv" serve --listen 127.0.0.1:18472 --tokens "$R/tokens.toml" > "$R/srv.out" 2>"$R/srv.log" & SRV_PID=$!
for _ in $(seq 50); do grep -q listening "$R/srv.out" && break; sleep 0.1; done
export LIFEBOAT_TOKEN=$TOKEN

# Garage.
GARAGE_PORT_BASE=18500 scripts/garage.sh start "$R/garage" >/dev/null
source "$R/garage/env.sh"
export AWS_ACCESS_KEY_ID=$LIFEBOAT_TEST_S3_KEY_ID AWS_SECRET_ACCESS_KEY=$LIFEBOAT_TEST_S3_SECRET
cat > "$R/cfg.toml" <<CFG
[remote.srv]
url = "http://127.0.0.1:18472/"
[remote.garage]
url = "s3://lifeboat-test/bench"
endpoint = "${LIFEBOAT_TEST_S3_ENDPOINTS%%,*}"
region = "garage"
path_style = true
CFG
lb() { $LB --config "$R/cfg.toml" "$@"; }
secs() { local s e; s=$(date +%s.%N); "$@" > "$R/last.json" || { echo "FAILED: $*" >&2; return 1; }; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
sent() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$R/last.json"; }

T_CURL=$(secs curl -sS -f -T "$R/blob" http://127.0.0.1:18471/blob)
# rclone: the same repository files to the same bucket, 8 at a time.
export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
  RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
  RCLONE_CONFIG_GARAGE_ENDPOINT=${LIFEBOAT_TEST_S3_ENDPOINTS%%,*} RCLONE_CONFIG_GARAGE_REGION=garage \
  RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
# (rclone 1.60 cannot load the AWS_CA_BUNDLE some machines set; loopback is plain HTTP.)
T_RCLONE=$(secs env -u AWS_CA_BUNDLE rclone copy --transfers 8 --exclude "tmp/**" "$R/local" garage:lifeboat-test/rclone-bench)
B_RCLONE=$(env -u AWS_CA_BUNDLE rclone size --json garage:lifeboat-test/rclone-bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
[ "$B_RCLONE" -ge "$STORED" ] || { echo "rclone copied $B_RCLONE of $STORED bytes" >&2; exit 1; }
T_PUSH_SRV=$(secs lb --json -r "$R/local" push srv --init); B_PUSH_SRV=$(sent)
T_PULL_SRV=$(secs lb --json -r "$R/pulled" pull srv --init); B_PULL_SRV=$(sent)
T_PUSH_S3=$(secs lb --json -r "$R/local" push garage --init); B_PUSH_S3=$(sent)
T_PULL_S3=$(secs lb --json -r "$R/pulled-s3" pull garage --init); B_PULL_S3=$(sent)
# 2% changed: incremental backup, then push; compare with the new chunks' stored size.
NEW=$($LB --json -r "$R/local" backup bench --format raw --volume "disk=$IMG2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["stats"]["new_stored_bytes"])')
T_INC_SRV=$(secs lb --json -r "$R/local" push srv); B_INC_SRV=$(sent)
T_INC_S3=$(secs lb --json -r "$R/local" push garage); B_INC_S3=$(sent)

mib() { echo "scale=1; $1 / 1048576" | bc -l; }
rate() { echo "scale=1; $1 / 1048576 / $2" | bc -l; }
r() { echo "scale=2; $1 / $2" | bc -l; }
R_CURL=$(rate "$BLOB" "$T_CURL")
echo "| operation (2 GiB image, $(mib "$STORED") MiB stored) | time | bytes | rate MiB/s | ratio | target |"
echo "|---|---|---|---|---|---|"
printf '| curl PUT of the same bytes to nginx | %.2f s | %s MiB | %s | baseline | |\n' "$T_CURL" "$(mib "$BLOB")" "$R_CURL"
printf '| first push to lifeboat serve | %.2f s | %s MiB | %s | %sx curl | >= 0.5x |\n' "$T_PUSH_SRV" "$(mib "$B_PUSH_SRV")" "$(rate "$B_PUSH_SRV" "$T_PUSH_SRV")" "$(r "$(rate "$B_PUSH_SRV" "$T_PUSH_SRV")" "$R_CURL")"
printf '| pull back from lifeboat serve | %.2f s | %s MiB | %s | %sx curl | >= 0.5x |\n' "$T_PULL_SRV" "$(mib "$B_PULL_SRV")" "$(rate "$B_PULL_SRV" "$T_PULL_SRV")" "$(r "$(rate "$B_PULL_SRV" "$T_PULL_SRV")" "$R_CURL")"
printf '| rclone copy --transfers 8 of the repository to Garage | %.2f s | %s MiB | %s | baseline for S3 | |\n' "$T_RCLONE" "$(mib "$B_RCLONE")" "$(rate "$B_RCLONE" "$T_RCLONE")"
printf '| first push to Garage (3 nodes, rf 3) | %.2f s | %s MiB | %s | %sx rclone | >= 1x |\n' "$T_PUSH_S3" "$(mib "$B_PUSH_S3")" "$(rate "$B_PUSH_S3" "$T_PUSH_S3")" "$(r "$(rate "$B_PUSH_S3" "$T_PUSH_S3")" "$(rate "$B_RCLONE" "$T_RCLONE")")"
printf '| pull back from Garage | %.2f s | %s MiB | %s | %sx curl | - |\n' "$T_PULL_S3" "$(mib "$B_PULL_S3")" "$(rate "$B_PULL_S3" "$T_PULL_S3")" "$(r "$(rate "$B_PULL_S3" "$T_PULL_S3")" "$R_CURL")"
printf '| incremental push (2%% changed) to serve | %.2f s | %s MiB | | %sx new stored (%s MiB) | <= 1.1x |\n' "$T_INC_SRV" "$(mib "$B_INC_SRV")" "$(r "$B_INC_SRV" "$NEW")" "$(mib "$NEW")"
printf '| incremental push (2%% changed) to Garage | %.2f s | %s MiB | | %sx new stored | <= 1.1x |\n' "$T_INC_S3" "$(mib "$B_INC_S3")" "$(r "$B_INC_S3" "$NEW")"
