#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
command -v qemu-nbd >/dev/null || need_apt+=(qemu-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing ${need_apt[*]}: install them (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

cargo test --locked "$@"
