#!/usr/bin/env bash
# A 3-node Garage cluster (replication factor 3) on loopback for the S3 tests.
#   scripts/garage.sh start DIR   -> writes DIR/env.sh (endpoints, bucket, keys, pids)
#   scripts/garage.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
# A free range of ports (s3, rpc, admin for 3 nodes), unless one is given.
free_base() {
  python3 - <<'PY'
import socket, random
for _ in range(200):
    base = random.randrange(20000, 60000, 10)
    ports = [base + n * 10 + k for n in range(3) for k in (0, 1, 3)]
    try:
        socks = []
        for p in ports:
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        for s in socks: s.close()
        print(base); break
    except OSError:
        for s in socks: s.close()
PY
}
base=${GARAGE_PORT_BASE:-$(free_base)}
G=$(command -v garage || echo "$HOME/.cargo/bin/garage")

if [ "$cmd" = stop ]; then
  for n in 1 2 3; do
    [ -f "$dir/n$n.pid" ] && kill "$(cat "$dir/n$n.pid")" 2>/dev/null || true
  done
  exit 0
fi

mkdir -p "$dir"
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
for n in 1 2 3; do
  p=$((base + (n - 1) * 10))
  mkdir -p "$dir/n$n/meta" "$dir/n$n/data"
  cat > "$dir/n$n.toml" <<TOML
metadata_dir = "$dir/n$n/meta"
data_dir = "$dir/n$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((p + 1))"
rpc_public_addr = "127.0.0.1:$((p + 1))"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$p"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$((p + 3))"
TOML
  "$G" -c "$dir/n$n.toml" server > "$dir/n$n.log" 2>&1 &
  echo $! > "$dir/n$n.pid"
done

sleep 0.3
for n in 1 2 3; do
  kill -0 "$(cat "$dir/n$n.pid")" 2>/dev/null || { echo "garage node $n failed to start:" >&2; tail -5 "$dir/n$n.log" >&2; exit 1; }
done
g() { "$G" -c "$dir/n1.toml" "$@"; }
for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
ids=()
for n in 1 2 3; do
  for _ in $(seq 100); do
    id=$("$G" -c "$dir/n$n.toml" node id -q 2>/dev/null) && break
    sleep 0.2
  done
  ids+=("$id")
done
g node connect "${ids[1]}" >/dev/null
g node connect "${ids[2]}" >/dev/null
zone=1
for id in "${ids[@]}"; do
  g layout assign -z "dc$zone" -c 1G "${id%%@*}" >/dev/null
  zone=$((zone + 1))
done
g layout apply --version 1 >/dev/null
for _ in $(seq 100); do g bucket create lifeboat-test >/dev/null 2>&1 && break; sleep 0.3; done
keyout=$(g key create lifeboat-test)
key_id=$(echo "$keyout" | sed -n 's/.*Key ID: *//p' | head -1)
key_secret=$(echo "$keyout" | sed -n 's/.*Secret key: *//p' | head -1)
g bucket allow --read --write --owner lifeboat-test --key lifeboat-test >/dev/null
cat > "$dir/env.sh" <<ENV
export LIFEBOAT_TEST_S3_ENDPOINTS="http://127.0.0.1:$base,http://127.0.0.1:$((base + 10)),http://127.0.0.1:$((base + 20))"
export LIFEBOAT_TEST_S3_BUCKET=lifeboat-test
export LIFEBOAT_TEST_S3_REGION=garage
export LIFEBOAT_TEST_S3_KEY_ID=$key_id
export LIFEBOAT_TEST_S3_SECRET=$key_secret
export LIFEBOAT_TEST_GARAGE_DIR=$dir
export LIFEBOAT_TEST_GARAGE_BIN=$G
ENV
echo "garage cluster up: endpoints http://127.0.0.1:$base (+10, +20), bucket lifeboat-test"
