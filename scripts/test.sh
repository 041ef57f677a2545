#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, starts a 3-node
# Garage S3 cluster on loopback, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v qemu-img >/dev/null || ! command -v qemu-nbd >/dev/null || ! command -v qemu-io >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils
  else
    echo "missing qemu-utils: install it (apt-get install qemu-utils)" >&2
    exit 1
  fi
fi

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

cargo test --locked "$@"
