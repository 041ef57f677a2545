#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, starts a 3-node
# Garage S3 cluster on loopback, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages the tests use, installed in one go when any is missing:
# - openssl: the TLS tests make certificates the way admins do;
# - python3-prometheus-client: the metrics tests parse /metrics with the
#   Prometheus project's own parser (Debian's package, for /usr/bin/python3);
# - qemu-utils and qemu-system-x86, always together (installing Debian's
#   qemu-system-x86 alone removes a newer backported qemu-utils): qemu-img,
#   qemu-nbd, qemu-io, and the boot checks of restore drills;
# - busybox-static cpio dosfstools fdisk mtools syslinux syslinux-common:
#   the demo's bootable Linux guest (see assets/demo-guest.sh);
# - e2fsprogs (with fdisk's sfdisk): the file-restore tests build ext4
#   filesystems with mkfs.ext4 -d inside MBR and GPT disks;
# - libvirt-clients libxml2-utils: virt-xml-validate checks restored
#   domain XML against libvirt's schema;
# - python3-venv: the cloud tests' moto (an AWS emulator) lives in a venv;
# - dpkg-dev systemd: the package test (cargo-deb computes the package's
#   library dependencies with dpkg-shlibdeps; systemd-analyze verify checks
#   the installed units; nothing is started);
# - ceph-mon ceph-osd ceph-common qemu-block-extra: the RBD tests start a
#   one-node Ceph of their own on loopback (scripts/ceph/start.sh; no
#   systemd) and read it through QEMU's rbd driver (qemu-block-extra comes
#   from the same Debian release as qemu-utils);
# - libvirt-daemon-system virtnbdbackup: the libvirt tests start their own
#   virtlogd and libvirtd in a private mount namespace (scripts/libvirt.sh;
#   the host's libvirt directories are never touched) and compare with
#   virtnbdbackup, the open-source reference for libvirt backups.
# (qemu-system-x86 also brings the libraries the running-VM tests copy
# into their guest with Debian's qemu-guest-agent: glib, libnuma, liburing.)
pkgs=(openssl python3-prometheus-client qemu-utils qemu-system-x86
      busybox-static cpio dosfstools fdisk mtools syslinux syslinux-common e2fsprogs
      libvirt-clients libxml2-utils python3-venv dpkg-dev systemd
      libvirt-daemon-system virtnbdbackup
      ceph-mon ceph-osd ceph-common qemu-block-extra)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
qemu_version() { "$1" --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1; }
qemu_consistent() {
  local v
  v=$(qemu_version qemu-img) || return 1
  [ -n "$v" ] && [ "$(qemu_version qemu-nbd)" = "$v" ] && [ "$(qemu_version qemu-io)" = "$v" ] &&
    [ "$(qemu_version qemu-system-x86_64)" = "$v" ]
}
# A mixed qemu set (e.g. a backported qemu-utils) is replaced by Debian's.
qemu_consistent || missing+=(qemu-utils qemu-system-x86 qemu-block-extra)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # Machine images may carry a newer backported qemu-utils; apt never
    # downgrades on its own ("held broken packages"), so both qemu packages
    # are named with the release they must come from.
    release=$(. /etc/os-release && echo "$VERSION_CODENAME")
    others=()
    for p in "${missing[@]}"; do
      case "$p" in qemu-utils|qemu-system-x86|qemu-block-extra) ;; *) others+=("$p") ;; esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "${others[@]}" \
      "qemu-utils/$release" "qemu-system-x86/$release" "qemu-block-extra/$release" >/dev/null
  else
    echo "missing Debian packages: ${missing[*]} (apt-get install them)" >&2
    exit 1
  fi
fi
/usr/bin/python3 -c 'import prometheus_client.openmetrics.parser' ||
  { echo "python3-prometheus-client does not import" >&2; exit 1; }
qemu_consistent || { echo "qemu tools are still inconsistent after installing them together" >&2; exit 1; }
echo "qemu tools: $(qemu_version qemu-img) (qemu-img, qemu-nbd, qemu-io, qemu-system-x86_64)"

# The demo guest's kernel: Debian's cloud kernel, fetched once with
# apt-get download and kept (the demo and the drill tests boot it).
export LIFEBOAT_GUEST_KIT="${LIFEBOAT_GUEST_KIT:-$HOME/.cache/lifeboat/guest-kit}"
sh assets/demo-guest.sh kit "$LIFEBOAT_GUEST_KIT"
# The running-VM tests' guest runs Debian's qemu-guest-agent (tests/live.rs).
sh tests/support/live-guest.sh kit "$LIFEBOAT_GUEST_KIT"
echo "guest kernel: $LIFEBOAT_GUEST_KIT"

# moto: the third-party AWS emulator (EC2 and the EBS direct APIs) the
# cloud tests run in server mode on loopback, with boto3 as their
# independent AWS client; from PyPI into a venv of Debian's python3, once.
moto_version=5.2.1
moto_venv="$HOME/.cache/lifeboat/moto-venv"
if ! "$moto_venv/bin/python" -c "import moto, moto.server, boto3, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  echo "installing moto $moto_version into $moto_venv…"
  rm -rf "$moto_venv"
  /usr/bin/python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi
export LIFEBOAT_TEST_MOTO_PYTHON="$moto_venv/bin/python"
echo "moto: $("$LIFEBOAT_TEST_MOTO_PYTHON" -c 'import moto; print(moto.__version__)')"

# Garage: a real distributed S3 engine for the S3 tests. Building it takes
# about 15 minutes on 2 cores, so it is installed once and reused.
if ! command -v garage >/dev/null; then
  echo "installing garage (one-time, ~15 min)…"
  cargo install garage --locked --no-default-features --features bundled-libs,sqlite
fi

# cargo-deb builds the Debian package (tests/package.rs); scripts/package.sh
# installs the version it pins (about 2 minutes, once).
scripts/package.sh --install-tool

garage_dir=$(mktemp -d /tmp/lifeboat-garage.XXXXXX)
trap 'scripts/garage.sh stop "$garage_dir"; rm -rf "$garage_dir"' EXIT
scripts/garage.sh start "$garage_dir"
# shellcheck disable=SC1091
source "$garage_dir/env.sh"

cargo test --workspace --locked "$@"
