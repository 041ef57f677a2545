#!/usr/bin/env bash
# The package on a fresh Debian 12: debootstraps a minimal bookworm into a
# scratch directory, installs the package there with apt (its Depends and
# Recommends from Debian's archive), and runs `lifeboat demo --no-tui`
# inside it. Needs root and network; takes minutes; not part of the test
# suite (tests/package.rs installs into a scratch root without network).
#   scripts/deb-fresh-check.sh [PACKAGE.deb]   (default: build it)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, chroot)" >&2; exit 1; }
deb=${1:-}
if [ -z "$deb" ]; then
  scripts/package.sh
  deb=$(ls -t target/debian/lifeboat_*_amd64.deb | head -1)
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d /tmp/lifeboat-deb12.XXXXXX)
cleanup() {
  for m in dev/pts dev proc; do umount "$root/$m" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
echo "debootstrap bookworm (minbase) into $root…"
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/lifeboat.deb"
chroot "$root" apt-get update -qq
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /tmp/lifeboat.deb >/dev/null
chroot "$root" dpkg -s lifeboat | grep -E '^(Status|Version|Depends|Recommends):'
chroot "$root" id lifeboat
chroot "$root" stat -c '%A %U %n' /var/lib/lifeboat /var/lib/lifeboat-serve /etc/lifeboat/serve
chroot "$root" lifeboat --version
chroot "$root" env HOME=/root lifeboat demo --no-tui --keep /root/demo
echo "fresh Debian 12: package installed and the demo built its world"
