#!/usr/bin/env bash
# The RTO of a restore drill of a 1 GiB VM from a `lifeboat serve` on
# loopback, phase by phase, against `cp` of the same image (then sync, as a
# restore ends durable) on the same file system, in the same run.
#
# The VM: the demo's bootable guest (64 MiB) grown to 1 GiB with 700 MiB of
# data after it (half random, half text). Needs what scripts/test.sh
# installs. Writes docs/bench-drill-latest.md (OUT=... to change).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-drill-latest.md}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-drillbench.XXXXXX")
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
sh assets/demo-guest.sh disk "$LIFEBOAT_GUEST_KIT" "$W/bench01.raw" bench01
truncate -s 1G "$W/bench01.raw"
python3 - "$W/bench01.raw" <<'EOF'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(64 << 20)
    line = b"lifeboat drill benchmark: an application's log line 0123456789\n"
    for i in range(350):
        f.write(os.urandom(1 << 20))
        f.write((line * ((1 << 20) // len(line) + 1))[: 1 << 20])
EOF

cat > "$W/src.toml" <<EOF
repository = "src"
[[vm]]
name = "bench01"
vcpus = 1
memory_mib = 256
[[vm.nic]]
model = "virtio"
[[vm.volume]]
name = "root"
role = "root"
path = "$W/bench01.raw"
format = "raw"
[vm.check]
serial = "bench01 login:"
http = { port = 8080, path = "/", expect = "the application answers" }
timeout_secs = 180
EOF
"$LB" --config "$W/src.toml" init --chunk-size 4M >/dev/null
"$LB" --config "$W/src.toml" backup bench01 >/dev/null

"$LB" serve token add bench --role append --tokens "$W/tokens.toml" | tail -1 > "$W/token"
mkdir "$W/offsite"
"$LB" -r "$W/offsite" serve --listen 127.0.0.1:0 --tokens "$W/tokens.toml" > "$W/serve.out" 2>/dev/null &
server=$!
for _ in $(seq 50); do grep -q "listening on" "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$W/serve.out" | head -1)
LIFEBOAT_TOKEN=$(cat "$W/token") "$LB" --config "$W/src.toml" push "$url" --init >/dev/null

# The drill machine: the same VM config, a fresh local repository.
sed 's/^repository = "src"/repository = "fresh"/' "$W/src.toml" > "$W/drill.toml"
cat >> "$W/drill.toml" <<EOF
[remote.offsite]
url = "$url/"
token_file = "$W/token"
EOF
mkdir "$W/scratch"
drill() { "$LB" --config "$W/drill.toml" --json drill bench01 --from offsite --scratch "$W/scratch" 2>/dev/null; }
drill > "$W/first.json"
drill > "$W/second.json"

sync
t0=$(date +%s.%N)
cp "$W/bench01.raw" "$W/scratch/copy.raw"
sync
t1=$(date +%s.%N)
cp_secs=$(echo "$t1 - $t0" | bc -l)

python3 - "$W/first.json" "$W/second.json" "$cp_secs" "$OUT" <<'EOF'
import json, sys, datetime, os
first, second = (json.load(open(p)) for p in sys.argv[1:3])
cp = float(sys.argv[3])
out = sys.argv[4]
def ph(r):
    return {p["name"]: p for p in r["phases"]}
def row(r, name):
    p = ph(r).get(name)
    if not p:
        return "-"
    mib = p["bytes"] / (1 << 20)
    return f'{p["secs"]:.2f} s' + (f' ({mib:.0f} MiB)' if mib >= 1 else "")
f, s = ph(first), ph(second)
rv1 = f["restore"]["secs"] + f["verify"]["secs"]
rv2 = s["restore"]["secs"] + s["verify"]["secs"]
frv = f["fetch"]["secs"] + rv1
lines = [
    "# Drill benchmark (latest run)",
    "",
    f"`benches/drill_bench.sh` on {os.uname().nodename}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
    f"{os.cpu_count()} cores, shared machine. A 1 GiB raw VM (a bootable Linux guest plus 700 MiB of data, "
    "half random, half text) drilled from a `lifeboat serve` on loopback into a fresh local repository; "
    "then drilled again with the chunks local; `cp` of the same image (then `sync`) on the same file system. "
    "The page cache is warm for every run (the image was just written).",
    "",
    f"Outcome: {first['outcome']} / {second['outcome']}; booted under {first['boot']['accel']}.",
    "",
    "| phase | first drill (fetch from the remote) | second drill (chunks local) |",
    "|---|---|---|",
]
for name in ["fetch", "restore", "verify", "boot", "checks"]:
    lines.append(f"| {name} | {row(first, name)} | {row(second, name)} |")
lines += [
    f"| **RTO** | **{first['rto_secs']:.2f} s** | **{second['rto_secs']:.2f} s** |",
    "",
    f"`cp` of the image, then `sync`: **{cp:.2f} s**.",
    "",
    f"- restore + verify, chunks local: {rv2:.2f} s = **{rv2 / cp:.2f}x** the time of `cp`",
    f"- restore + verify in the first drill: {rv1:.2f} s = {rv1 / cp:.2f}x `cp`",
    f"- fetch + restore + verify from the remote: {frv:.2f} s = {frv / cp:.2f}x `cp`",
    f"- boot (TCG) to the serial pattern: {f['boot']['secs']:.2f} s; HTTP check after it: {f['checks']['secs']:.2f} s",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
