#!/usr/bin/env bash
# A private libvirtd for tests and benchmarks: `scripts/libvirt.sh start DIR`
# starts virtlogd and libvirtd (root; no systemd needed) in their own mount
# namespace, where DIR's subdirectories are bind-mounted over /run,
# /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt:
# the host's libvirt state, config and sockets are never touched, and a
# libvirtd the host runs keeps running beside it. DIR/uri holds the URI to
# reach it (qemu:///system?socket=DIR/run/libvirt/libvirt-sock).
# `scripts/libvirt.sh stop DIR` destroys its domains and stops both daemons
# by PID.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

uri() { echo "qemu:///system?socket=$dir/run/libvirt/libvirt-sock"; }

case "$cmd" in
start)
  [ "$(id -u)" = 0 ] || { echo "a system libvirtd runs as root" >&2; exit 1; }
  command -v libvirtd >/dev/null || { echo "libvirtd is not installed (apt-get install libvirt-daemon-system)" >&2; exit 1; }
  mkdir -p "$dir"/{run,etc,lib,cache,log}
  cp -a /etc/libvirt/. "$dir/etc/"
  # No network autostarts (the default one needs dnsmasq and a bridge).
  rm -rf "$dir/etc/qemu/networks/autostart"
  # Shared with the domains' QEMU, which runs as libvirt-qemu.
  chmod 0755 "$dir" "$dir/run"
  setsid unshare -m --propagation private bash -c '
    set -e
    d=$1
    mount --bind "$d/run" /run
    mount --bind "$d/etc" /etc/libvirt
    mount --bind "$d/lib" /var/lib/libvirt
    mount --bind "$d/cache" /var/cache/libvirt
    mount --bind "$d/log" /var/log/libvirt
    mkdir -p /var/lib/libvirt/qemu /var/lib/libvirt/images
    virtlogd & echo $! > "$d/virtlogd.pid"
    libvirtd & echo $! > "$d/libvirtd.pid"
    wait
  ' lifeboat-libvirt "$dir" > "$dir/daemons.log" 2>&1 < /dev/null &
  uri > "$dir/uri"
  for _ in $(seq 1 600); do
    if virsh -c "$(uri)" version >/dev/null 2>&1; then
      echo "libvirtd up: $(uri)"
      exit 0
    fi
    sleep 0.1
  done
  echo "libvirtd did not answer; its log:" >&2
  cat "$dir/daemons.log" >&2
  exit 1
  ;;
stop)
  if [ -S "$dir/run/libvirt/libvirt-sock" ]; then
    for d in $(virsh -c "$(uri)" list --name 2>/dev/null); do
      virsh -c "$(uri)" destroy "$d" >/dev/null 2>&1 || true
    done
  fi
  # QEMU outlives libvirtd by design: anything still running goes by PID.
  for f in "$dir"/run/libvirt/qemu/*.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  for p in libvirtd virtlogd; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
