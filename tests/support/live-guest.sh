#!/bin/sh
# The running-VM tests' guest: Debian's cloud kernel (the demo's guest kit)
# with a busybox initramfs that
#   - writes a self-checking record pattern to /dev/vda and /dev/vdb in a
#     loop (see tests/live.rs for how a restored disk is checked),
#   - runs Debian's real qemu-guest-agent when booted with lifeboat.agent=1,
#     with an ext2 filesystem from a third disk (/dev/vdc) mounted for it
#     to freeze,
#   - obeys commands on its serial console: `dirty K` (rewrite 10 MiB of
#     /dev/vda at scattered places), `pause`, `resume`.
#
#   live-guest.sh kit KITDIR           fetch qemu-guest-agent into the kit once
#   live-guest.sh initrd KITDIR OUT    write the initramfs
#
# Needs: the kit from assets/demo-guest.sh, busybox-static, cpio, gzip,
# apt-get and dpkg-deb (kit only), ldd.
set -eu

die() { echo "live-guest: $*" >&2; exit 1; }

kit() {
    kit=$1
    [ -x "$kit/qga/usr/sbin/qemu-ga" ] && return 0
    mkdir -p "$kit/qga"
    deb=$(ls "$kit"/qemu-guest-agent_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        (cd "$kit" && apt-get download qemu-guest-agent >/dev/null 2>&1) ||
            die "apt-get download qemu-guest-agent failed (no network or no apt sources?)"
        deb=$(ls "$kit"/qemu-guest-agent_*.deb | head -n 1)
    fi
    dpkg-deb -x "$deb" "$kit/qga"
}

initrd() {
    kit=$1 out=$2
    [ -f "$kit/modules/virtio_blk.ko" ] || die "the kit lacks virtio_blk.ko: run assets/demo-guest.sh kit $kit"
    [ -x "$kit/qga/usr/sbin/qemu-ga" ] || die "the kit lacks qemu-ga: run $0 kit $kit"
    w=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-live-guest.XXXXXX")
    trap 'rm -rf "$w"' EXIT
    r=$w/root
    mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/modules" "$r/qga"
    cp "$(command -v busybox)" "$r/bin/busybox"
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
        cp "$kit/modules/$m.ko" "$r/modules/"
    done
    cp "$kit/qga/usr/sbin/qemu-ga" "$r/qga/qemu-ga"
    # qemu-ga is dynamically linked: the host is the same Debian release.
    for lib in $(ldd "$kit/qga/usr/sbin/qemu-ga" | grep -o '/[^ ]*'); do
        mkdir -p "$r$(dirname "$lib")"
        cp -L "$lib" "$r$lib"
    done
    if ldd "$kit/qga/usr/sbin/qemu-ga" | grep -q 'not found'; then
        die "qemu-ga needs libraries this host lacks: install qemu-system-x86 (its dependencies)"
    fi
    cat > "$r/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
    insmod /modules/$m.ko 2>/dev/null
done
exec </dev/ttyS0 >/dev/ttyS0 2>&1
stty -echo 2>/dev/null
# A filesystem for the agent to freeze (a third disk, when there is one).
if [ -b /dev/vdc ] && mke2fs -q /dev/vdc 2>/dev/null; then
    mkdir -p /data && mount /dev/vdc /data && echo "live-guest: /data mounted"
fi
if grep -q lifeboat.agent=1 /proc/cmdline; then
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
    done
    if [ -n "${port:-}" ]; then
        /qga/qemu-ga -m virtio-serial -p "$port" -t /tmp >/tmp/qga.log 2>&1 &
        echo "live-guest: agent on $port"
    fi
fi

N=256
# One record: 128 copies of a 32-byte line "LBREC <seq> <idx>", so a torn
# write (old and new sectors mixed) shows.
record() {
    l="LBREC $1 $2"
    while [ ${#l} -lt 31 ]; do l="$l."; done
    l="$l
"
    for _ in 1 2 3 4 5 6 7; do l="$l$l"; done
    printf '%s' "$l" > /tmp/rec
}

writer() {
    seq=0
    while :; do
        if [ -f /tmp/pause ]; then
            [ -f /tmp/paused ] || { touch /tmp/paused; }
            sleep 0.1
            continue
        fi
        rm -f /tmp/paused
        idx=$((seq % N))
        record $seq $idx
        # vda first, then vdb: at any instant vdb is at most one behind.
        dd if=/tmp/rec of=/dev/vda bs=4096 seek=$idx count=1 conv=notrunc oflag=direct 2>/dev/null
        dd if=/tmp/rec of=/dev/vdb bs=4096 seek=$idx count=1 conv=notrunc oflag=direct 2>/dev/null
        [ $((seq % 64)) -eq 0 ] && echo "live-guest: seq $seq"
        seq=$((seq + 1))
    done
}

writer &
echo "live-guest: up"
while read -r cmd arg; do
    arg=${arg:-0}
    case "$cmd" in
        dirty)
            # arg: a seed and how many MiB (default 10, 1% of 1 GiB) of new
            # random data, 1 MiB each at scattered places past the records.
            set -- $arg
            mib=$(( $(cat /sys/block/vda/size) / 2048 ))
            j=1
            while [ $j -le "${2:-10}" ]; do
                at=$(( 1 + (j * 97 + ${1:-0} * 13) % (mib - 1) ))
                dd if=/dev/urandom of=/dev/vda bs=1048576 count=1 seek=$at conv=notrunc oflag=direct 2>/dev/null
                j=$((j + 1))
            done
            echo "live-guest: dirty done"
            ;;
        pause)
            touch /tmp/pause
            while [ ! -f /tmp/paused ]; do sleep 0.1; done
            sync
            echo "live-guest: paused"
            ;;
        resume)
            rm -f /tmp/pause
            echo "live-guest: resumed"
            ;;
        *) [ -n "$cmd" ] && echo "live-guest: unknown command $cmd" ;;
    esac
done
EOF
    chmod 755 "$r/init"
    (cd "$r" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$w/initrd.gz")
    mv "$w/initrd.gz" "$out"
}

case "${1:-}" in
    kit) [ $# -eq 2 ] || die "usage: live-guest.sh kit KITDIR"; kit "$2" ;;
    initrd) [ $# -eq 3 ] || die "usage: live-guest.sh initrd KITDIR OUT"; initrd "$2" "$3" ;;
    *) die "usage: live-guest.sh kit KITDIR | initrd KITDIR OUT" ;;
esac
