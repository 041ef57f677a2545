#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, starts a 3-node
# Garage S3 cluster on loopback, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# openssl: the TLS tests make certificates the way admins do.
if ! command -v openssl >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  else
    echo "openssl is missing: install it (apt-get install openssl)" >&2
    exit 1
  fi
fi

# python3-prometheus-client: the metrics tests parse /metrics with the
# Prometheus project's own parser (Debian's package, for /usr/bin/python3).
if ! /usr/bin/python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-prometheus-client
  else
    echo "python3-prometheus-client is missing: install it (apt-get install python3-prometheus-client)" >&2
    exit 1
  fi
fi

# qemu: the tests use qemu-img, qemu-nbd and qemu-io, and they must be one
# consistent set. Debian 12 ships 7.2; some machines carry a 10.x backport
# of qemu-utils. Installing Debian's qemu-system-x86 alone replaces a newer
# qemu-utils, so whenever something is missing or the versions disagree,
# qemu-utils is installed together with any qemu-system-x86 present.
qemu_version() { "$1" --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1; }
qemu_consistent() {
  local v
  v=$(qemu_version qemu-img) || return 1
  [ -n "$v" ] && [ "$(qemu_version qemu-nbd)" = "$v" ] && [ "$(qemu_version qemu-io)" = "$v" ]
}
if ! qemu_consistent; then
  if [ "$(id -u)" = 0 ]; then
    pkgs=(qemu-utils)
    dpkg -s qemu-system-x86 >/dev/null 2>&1 && pkgs+=(qemu-system-x86)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
  else
    echo "qemu-img, qemu-nbd and qemu-io are missing or of different versions: install qemu-utils (apt-get install qemu-utils)" >&2
    exit 1
  fi
fi
qemu_consistent || { echo "qemu tools are still inconsistent after installing qemu-utils" >&2; exit 1; }
echo "qemu tools: $(qemu_version qemu-img) (qemu-img, qemu-nbd, qemu-io)"

# Garage: a real distributed S3 engine for the S3 tests. Building it takes
# about 15 minutes on 2 cores, so it is installed once and reused.
if ! command -v garage >/dev/null; then
  echo "installing garage (one-time, ~15 min)…"
  cargo install garage --locked --no-default-features --features bundled-libs,sqlite
fi

garage_dir=$(mktemp -d /tmp/lifeboat-garage.XXXXXX)
trap 'scripts/garage.sh stop "$garage_dir"; rm -rf "$garage_dir"' EXIT
scripts/garage.sh start "$garage_dir"
# shellcheck disable=SC1091
source "$garage_dir/env.sh"

cargo test --workspace --locked "$@"
