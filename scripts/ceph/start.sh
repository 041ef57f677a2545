#!/bin/bash
# start.sh DIR - single-node throwaway Ceph (Pacific 16.2) cluster on 127.0.0.1,
# no systemd/cephadm: 1 mon + 1 OSD (+ optional mgr) + an initialised RBD pool.
# Env: AUTH=none|cephx (default none; cephx: admin key in DIR/keyring),
#      MGR=0|1 (default 0), POOL (default rbd),
#      STORE=memstore|bluestore (default memstore: data in the OSD's RAM;
#        bluestore: sparse file DIR/osd/block), STORE_BYTES (default 2 GiB),
#      MON_PORT (msgr2, MON_PORT+1 = msgr1; default: random free port).
# OSD/mgr take free ports in 6800-7300, all on 127.0.0.1. Tested as root.
# Prints "export CEPH_CONF=DIR/ceph.conf" (also written to DIR/env).
# DIR must not hold a cluster yet; stop.sh DIR --purge removes one.
set -euo pipefail
D=${1:?usage: start.sh DIR}
mkdir -p "$D"; D=$(cd "$D" && pwd)
AUTH=${AUTH:-none}; MGR=${MGR:-0}; POOL=${POOL:-rbd}
STORE=${STORE:-memstore}; STORE_BYTES=${STORE_BYTES:-2147483648}
export CEPH_CONF=$D/ceph.conf
C="ceph --connect-timeout 30"
T0=$(date +%s%N)
trap 'echo "start.sh: failed at line $LINENO (logs: $D/log)" >&2' ERR

wait_for() { # wait_for SECONDS CMD... : poll every 0.2 s
  local end=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "start.sh: timeout waiting for: $*" >&2; return 1; }
    sleep 0.2
  done
}
osd_up() { $C osd stat -f json | grep -q '"num_up_osds":1'; }
mgr_up() { $C mgr stat | grep -q '"available": true'; }
[ ! -e "$D/ceph.conf" ] || { echo "start.sh: $D already holds a cluster" >&2; exit 1; }
port_free() { ! ss -ltnH "( sport = :$1 or sport = :$(($1+1)) )" | grep -q .; }
if [ -z "${MON_PORT:-}" ]; then
  for _ in $(seq 50); do p=$((20000 + RANDOM % 20000)); port_free $p && { MON_PORT=$p; break; }; done
fi
: "${MON_PORT:?no free port found}"
mkdir -p "$D"/{mon,osd,mgr,run,log}
FSID=$(uuidgen)
MON_ADDRS="[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT+1))]"
cat > "$CEPH_CONF" <<EOF
[global]
fsid = $FSID
mon_host = $MON_ADDRS
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = $AUTH
auth_service_required = $AUTH
auth_client_required = $AUTH
auth_allow_insecure_global_id_reclaim = false
keyring = $D/keyring
osd_objectstore = $STORE
memstore_device_bytes = $STORE_BYTES
bluestore_block_size = $STORE_BYTES
bluestore_fsck_on_mkfs = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
mon_mgr_mkfs_grace = 31536000
client_mount_timeout = 30
rados_mon_op_timeout = 60
paxos_propose_interval = 0.1
# lifeboat: a client that exited without closing its image (qemu-io) keeps
# a watch until this runs out, and snapshots wait for every watcher.
osd_client_watch_timeout = 5
run_dir = $D/run
[mon]
admin_socket = $D/run/\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
[osd]
admin_socket = $D/run/\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
[mgr]
admin_socket = $D/run/\$name.asok
pid_file = $D/run/\$name.pid
log_file = $D/log/\$name.log
[mon.a]
mon_data = $D/mon
keyring = $D/mon/keyring
[osd.0]
osd_data = $D/osd
keyring = $D/osd/keyring
[mgr.x]
mgr_data = $D/mgr
keyring = $D/mgr/keyring
EOF
# explicit monmap: without it mkfs names the mon "noname-a" and mon.a only
# finds itself when it listens on the default ports 3300/6789
monmaptool --create --fsid "$FSID" --addv a "$MON_ADDRS" "$D/monmap" >/dev/null
if [ "$AUTH" = cephx ]; then
  ceph-authtool "$D/mon.seed" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --create-keyring --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$D/mon.seed" --import-keyring "$D/keyring" >/dev/null
  ceph-mon -i a --mkfs --monmap "$D/monmap" --keyring "$D/mon.seed"
else
  ceph-mon -i a --mkfs --monmap "$D/monmap"
fi
ceph-mon -i a
U=$(uuidgen)
OSD_ID=$($C osd new "$U")
[ "$OSD_ID" = 0 ] || { echo "start.sh: unexpected osd id $OSD_ID" >&2; exit 1; }
ceph-osd -i 0 --mkfs --mkkey --osd-uuid "$U" --no-mon-config 2>>"$D/log/osd.0.stderr"
if [ "$AUTH" = cephx ]; then
  $C auth add osd.0 osd 'allow *' mon 'allow profile osd' mgr 'allow profile osd' -i "$D/osd/keyring" 2>/dev/null
  if [ "$MGR" = 1 ]; then
    $C auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$D/mgr/keyring"
  fi
fi
ceph-osd -i 0 2>>"$D/log/osd.0.stderr"
if [ "$MGR" = 1 ]; then ceph-mgr -i x; fi
$C osd pool create "$POOL" 8 8 >/dev/null 2>&1
wait_for 60 osd_up
rbd pool init "$POOL"                     # returns once the PGs are active
if [ "$MGR" = 1 ]; then wait_for 60 mgr_up; fi
echo "export CEPH_CONF=$CEPH_CONF" > "$D/env"
echo "start.sh: cluster ready in $(( ($(date +%s%N) - T0) / 1000000 )) ms" >&2
echo "export CEPH_CONF=$CEPH_CONF"
