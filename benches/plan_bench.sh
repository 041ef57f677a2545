#!/usr/bin/env bash
# The service RTO of the demo's two-VM plan (shop: db01 and web01) drilled
# from its off-site `lifeboat serve` on loopback, against each member's own
# single-VM drill from the same server, in the same run. Every drill goes
# into a fresh, empty local repository (a recovery site that holds
# nothing), so each one fetches what it needs.
#
# Three rounds; each round drills db01, web01, the plan, and the plan with
# web01 waiting for db01's checks (`after`), in that order. The figure is
# the plan's median RTO over the slower member's median RTO (the issue's
# goal: at most 1.3x). Needs what scripts/test.sh installs. Writes
# docs/bench-plan-latest.md (OUT=... to change).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
LB=$PWD/target/release/lifeboat
OUT=${OUT:-docs/bench-plan-latest.md}
ROUNDS=${ROUNDS:-3}
W=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-planbench.XXXXXX")
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

export LIFEBOAT_GUEST_KIT=${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}
LIBVIRT_DEFAULT_URI=test:///default "$LB" demo --no-tui --keep "$W/world" >/dev/null 2>&1
"$LB" -r "$W/world/offsite" serve --listen 127.0.0.1:0 --tokens "$W/world/offsite-tokens.toml" > "$W/serve.out" 2>/dev/null &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$W/serve.out" | head -1)
sed "s#^url = .*#url = \"$url/\"#" "$W/world/lifeboat.toml" > "$W/base.toml"
sed 's/^address = "10.10.0.3"/address = "10.10.0.3"\nafter = ["db01"]/' "$W/base.toml" > "$W/ordered.toml"
mkdir "$W/scratch"

n=0
drill() { # CONFIG OUT ARGS...
  local cfg=$1 out=$2; shift 2
  n=$((n + 1))
  sed "s#^repository = .*#repository = \"$W/site$n\"#" "$cfg" > "$W/run.toml"
  "$LB" --config "$W/run.toml" --json drill "$@" --scratch "$W/scratch" > "$out" 2>/dev/null || true
  rm -rf "$W/site$n"
}
for r in $(seq "$ROUNDS"); do
  drill "$W/base.toml" "$W/db01-$r.json" db01
  drill "$W/base.toml" "$W/web01-$r.json" web01
  drill "$W/base.toml" "$W/plan-$r.json" --plan shop
  drill "$W/ordered.toml" "$W/ordered-$r.json" --plan shop
done

python3 - "$W" "$ROUNDS" "$OUT" <<'EOF'
import json, sys, os, datetime, statistics
w, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def runs(kind):
    return [json.load(open(f"{w}/{kind}-{r}.json")) for r in range(1, rounds + 1)]
kinds = {k: runs(k) for k in ["db01", "web01", "plan", "ordered"]}
for k, rs in kinds.items():
    bad = [r.get("outcome") for r in rs if r.get("outcome") != "pass"]
    if bad:
        sys.exit(f"{k}: a drill did not pass: {bad}")
med = {k: statistics.median(r["rto_secs"] for r in rs) for k, rs in kinds.items()}
slower = max(med["db01"], med["web01"])
which = "db01" if med["db01"] >= med["web01"] else "web01"
def cells(rs):
    return ", ".join(f"{r['rto_secs']:.2f}" for r in rs)
def phases(r):
    return ", ".join(f"{p['name']} {p['secs']:.1f}" for p in r["phases"])
accel = kinds["db01"][0]["boot"]["accel"]
lines = [
    "# Recovery plan benchmark (latest run)",
    "",
    f"`benches/plan_bench.sh` on {os.uname().nodename}, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
    f"{os.cpu_count()} cores, shared machine; guests under {accel}. The demo's shop (db01 and web01; "
    "web01's order page reads from db01 over the plan's private network) drilled from the demo's "
    "off-site `lifeboat serve` on loopback; every drill into a fresh, empty local repository. "
    f"{rounds} rounds, each: db01 alone, web01 alone, the plan, the plan with web01 after db01.",
    "",
    "| drill | RTO per round (s) | median |",
    "|---|---|---|",
    f"| db01 alone | {cells(kinds['db01'])} | {med['db01']:.2f} s |",
    f"| web01 alone | {cells(kinds['web01'])} | {med['web01']:.2f} s |",
    f"| plan shop (both start at once) | {cells(kinds['plan'])} | **{med['plan']:.2f} s** |",
    f"| plan shop, web01 after db01 | {cells(kinds['ordered'])} | {med['ordered']:.2f} s |",
    "",
    f"- service RTO / slower member's own RTO ({which}): **{med['plan'] / slower:.2f}x** (goal: at most 1.3x)",
    f"- with web01 waiting for db01's checks: {med['ordered'] / slower:.2f}x (the boots follow each other)",
    "",
    "Phases of the last round's plan drill, per VM (s): "
    + "; ".join(f"{m['vm']}: {phases(m)}" for m in kinds["plan"][-1]["members"]),
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
