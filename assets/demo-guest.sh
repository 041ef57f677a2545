#!/bin/sh
# Builds the demo's bootable Linux guest disk without root, mounts or loop
# devices (see docs/DRILLS.md): Debian's cloud kernel, a busybox initramfs
# that prints a marker on the serial console and serves HTTP on port 8080,
# and syslinux on a FAT partition.
#
#   demo-guest.sh kit KITDIR            fetch and unpack the kernel once
#   demo-guest.sh disk KITDIR OUT NAME [ROLE ADDRESS PEER]
#                                       write a 64 MiB raw disk for VM NAME
#
# Roles (for the demo's two-VM service, a recovery plan):
#   plain  the default: the page on 8080 only.
#   db     a "database": reads its table from the first sector of its
#          second disk (vdb), "LIFEBOAT-DB" then "orders: N"; serves that
#          line on port 5432, or prints "database is corrupt" and serves
#          nothing there when the sector is not one.
#   web    also answers /cgi-bin/order on 8080 with what the database at
#          PEER:5432 says (503 when it does not answer).
# ADDRESS (10.10.0.2/24) is the guest's own address on its private NIC:
# the NIC whose MAC is not QEMU's default 52:54:00:12:34:56 (that one,
# the checks' NIC, is always 10.0.2.15); "dhcp" asks for it with DHCP.
#
# Needs: apt-get (kit only), dpkg-deb, busybox-static, cpio, gzip,
# mtools, dosfstools, syslinux, syslinux-common, fdisk (sfdisk).
set -eu

MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
# Also kept in the kit for the running-VM tests' guest (disks, agent channel).
KIT_EXTRA="virtio_blk virtio_console"

die() { echo "demo-guest: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is missing: install $2"; }

kit() {
    kit=$1
    [ -f "$kit/vmlinuz" ] && [ -f "$kit/modules/virtio_console.ko" ] && return 0
    need dpkg-deb dpkg
    mkdir -p "$kit"
    chmod 700 "$kit"
    deb=$(ls "$kit"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        need apt-get apt
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        [ -n "$pkg" ] || die "apt knows no linux-image-cloud-amd64: run apt-get update"
        (cd "$kit" && apt-get download "$pkg" >/dev/null 2>&1) ||
            die "apt-get download $pkg failed (no network or no apt sources?)"
        deb=$(ls "$kit"/linux-image-*-cloud-amd64_*.deb | head -n 1)
    fi
    x=$(mktemp -d "$kit/.x.XXXXXX")
    trap 'rm -rf "$x"' EXIT
    dpkg-deb -x "$deb" "$x"
    mkdir -p "$kit/modules"
    for m in $MODULES $KIT_EXTRA; do
        f=$(find "$x/lib/modules" -name "$m.ko" | head -n 1)
        [ -n "$f" ] || die "module $m.ko is not in $deb"
        cp "$f" "$kit/modules/"
    done
    cp "$x"/boot/vmlinuz-* "$kit/vmlinuz.tmp"
    mv "$kit/vmlinuz.tmp" "$kit/vmlinuz"
}

disk() {
    kit=$1 out=$2 name=$3 role=${4:-plain} addr=${5:-} peer=${6:-}
    case "$role" in plain|db|web) ;; *) die "role $role: use plain, db or web" ;; esac
    need busybox busybox-static
    need cpio cpio
    need mkfs.fat dosfstools
    need mcopy mtools
    need syslinux syslinux
    need sfdisk fdisk
    mbr=/usr/lib/syslinux/mbr/mbr.bin
    [ -f "$mbr" ] || die "$mbr is missing: install syslinux-common"
    bb=$(command -v busybox)
    w=$(mktemp -d "${TMPDIR:-/tmp}/lifeboat-guest.XXXXXX")
    trap 'rm -rf "$w"' EXIT
    r=$w/root
    mkdir -p "$r/bin" "$r/proc" "$r/sys" "$r/dev" "$r/www" "$r/modules"
    cp "$bb" "$r/bin/busybox"
    mods=$MODULES
    [ "$role" = db ] && mods="$MODULES virtio_blk"
    for m in $mods; do cp "$kit/modules/$m.ko" "$r/modules/"; done
    echo "lifeboat demo VM $name: the application answers" > "$r/www/index.html"
    if [ "$role" = web ]; then
        mkdir -p "$r/www/cgi-bin"
        cat > "$r/www/cgi-bin/order" <<EOF
#!/bin/sh
v=\$(printf 'GET /value HTTP/1.0\r\n\r\n' | nc -w 3 $peer 5432 2>/dev/null | grep '^orders:')
if [ -n "\$v" ]; then
    printf 'Content-Type: text/plain\r\n\r\n$name reads from the database at $peer: %s\n' "\$v"
else
    printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nthe database at $peer:5432 does not answer\n'
fi
EOF
        chmod 755 "$r/www/cgi-bin/order"
    fi
    cat > "$r/bin/dhcp-up" <<'EOF'
#!/bin/sh
case "$1" in
    bound|renew)
        ip addr add "$ip/$mask" dev "$interface"
        echo "dhcp: $interface has $ip/$mask" > /dev/ttyS0
        ;;
esac
EOF
    chmod 755 "$r/bin/dhcp-up"
    cat > "$r/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $mods; do insmod /modules/\$m.ko 2>/dev/null; done
ip link set lo up
up=
for d in /sys/class/net/eth*; do
    [ -e "\$d" ] || continue
    n=\${d##*/}
    ip link set \$n up || continue
    if [ -z "$addr" ] || [ "\$(cat \$d/address)" = 52:54:00:12:34:56 ]; then
        [ -n "\$up" ] && continue
        ip addr add 10.0.2.15/24 dev \$n
        up=1
    elif [ "$addr" = dhcp ]; then
        udhcpc -i \$n -q -n -t 10 -T 1 -s /bin/dhcp-up >/dev/null 2>&1 ||
            echo "$name: no DHCP answer on \$n" > /dev/ttyS0
    else
        ip addr add $addr dev \$n
    fi
done
[ -n "\$up" ] && httpd -p 8080 -h /www
if [ "$role" = db ]; then
    mkdir -p /db
    i=0
    while [ ! -b /dev/vdb ] && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i+1)); done
    head -c 512 /dev/vdb 2>/dev/null | tr -d '\\000' > /db/sector
    if [ "\$(head -n 1 /db/sector)" = LIFEBOAT-DB ] && grep -q '^orders: [0-9]*\$' /db/sector; then
        grep '^orders:' /db/sector > /db/value
        httpd -p 5432 -h /db
        echo "$name: database open (\$(cat /db/value))" > /dev/ttyS0
    else
        echo "$name: database is corrupt: not serving" > /dev/ttyS0
    fi
fi
echo "lifeboat-guest $name: up" > /dev/ttyS0
echo "$name login: " > /dev/ttyS0
while true; do sleep 3600; done
EOF
    chmod 755 "$r/init"
    (cd "$r" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$w/initrd.gz")
    cat > "$w/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=ttyS0 quiet panic=-1
EOF
    truncate -s 63M "$w/fat.img"
    mkfs.fat -n LIFEBOAT "$w/fat.img" >/dev/null
    syslinux --install "$w/fat.img"
    mcopy -i "$w/fat.img" "$kit/vmlinuz" ::vmlinuz
    mcopy -i "$w/fat.img" "$w/initrd.gz" ::initrd.gz
    mcopy -i "$w/fat.img" "$w/syslinux.cfg" ::syslinux.cfg
    truncate -s 64M "$w/disk.raw"
    echo 'start=2048, type=c, bootable' | sfdisk -q "$w/disk.raw"
    dd if="$w/fat.img" of="$w/disk.raw" bs=1M seek=1 conv=notrunc status=none
    dd if="$mbr" of="$w/disk.raw" bs=440 count=1 conv=notrunc status=none
    chmod 600 "$w/disk.raw"
    mv "$w/disk.raw" "$out"
}

case "${1:-}" in
    kit) [ $# -eq 2 ] || die "usage: demo-guest.sh kit KITDIR"; kit "$2" ;;
    disk) [ $# -eq 4 ] || [ $# -eq 7 ] || die "usage: demo-guest.sh disk KITDIR OUT NAME [ROLE ADDRESS PEER]"; shift; disk "$@" ;;
    *) die "usage: demo-guest.sh kit KITDIR | disk KITDIR OUT NAME [ROLE ADDRESS PEER]" ;;
esac
