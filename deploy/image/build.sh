#!/usr/bin/env bash
# Build a mote's disk image from Debian's packages: a kernel, systemd,
# cloud-init, tor and the dustmote .deb -- nothing else that listens (no
# ssh: a mote is reached only through its onion services).
#
#   bash deploy/image/build.sh DUSTMOTE_DEB OUT_DIR
#
# OUT_DIR receives:
#   mote.img      the root file system, raw ext4 (2 GiB, sparse)
#   vmlinuz, initrd.img   the image's kernel and initramfs, for a direct
#                 kernel boot (QEMU -kernel/-initrd; tests/vm_boot.rs)
#   manifest.txt  every installed package and its version
#   files.sha256  every file in the image and its sha256
#   SHA256SUMS    of the three files above and of the .deb
# and prints SHA256SUMS. Needs root (or runs mmdebstrap in unshare mode).
#
# Reproducible where the inputs allow: the package set comes from the
# mirror at build time (pin MIRROR to a snapshot.debian.org URL for
# bit-identical rebuilds); SOURCE_DATE_EPOCH (default: the commit's time)
# fixes every file time (mtime, ctime, atime), the file system's UUID,
# hash seed and creation time; no machine-id, random seed, ssh host key, apt lists or logs are
# baked in (systemd makes a machine-id at first boot).
set -euo pipefail
deb=$(realpath "$1")
out=$2
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root_dir" log -1 --format=%ct)}
mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d "${TMPDIR:-/tmp}/dustmote-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree=$work/root

packages=(
    linux-image-cloud-amd64 systemd-sysv udev
    ifupdown isc-dhcp-client netbase iproute2
    cloud-init tor
)
include=$(IFS=,; echo "${packages[*]}")

# The local .deb goes in by a hook (its dependencies, tor and systemd, are
# already there); mmdebstrap cannot hand a host path to the chroot's dpkg.
mmdebstrap --variant=important --include="$include" \
    --customize-hook="upload '$deb' /tmp/dustmote.deb" \
    --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/dustmote.deb && rm "$1/tmp/dustmote.deb"' \
    --customize-hook='echo mote > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='printf "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n" > "$1/etc/network/interfaces"' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" | LC_ALL=C sort > "$1/manifest.txt"' \
    --customize-hook='rm -f "$1/etc/machine-id" "$1/var/lib/dbus/machine-id" "$1/var/lib/systemd/random-seed" && : > "$1/etc/machine-id"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/ldconfig/aux-cache "$1"/var/log/*.log "$1"/var/log/apt/* "$1"/etc/ssh/ssh_host_*' \
    "$suite" "$tree" "$mirror" >&2

mv "$tree/manifest.txt" "$out/manifest.txt"
# Every regular file's sha256: what to compare when two builds differ.
(cd "$tree" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum) > "$out/files.sha256"
cp "$(readlink -f "$tree/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$tree/initrd.img")" "$out/initrd.img"
# Every file time clamped to SOURCE_DATE_EPOCH (what the packages wrote at
# install time would otherwise carry the build's clock).
find "$tree" -newermt "@$SOURCE_DATE_EPOCH" -print0 \
    | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
# The file system's identity from SOURCE_DATE_EPOCH, not from /dev/urandom.
uuid=$(printf 'dustmote-image-%s' "$SOURCE_DATE_EPOCH" | sha256sum \
    | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
rm -f "$out/mote.img"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -t ext4 -L mote -U "$uuid" \
    -E "hash_seed=$uuid,root_owner=0:0" -d "$tree" "$out/mote.img" 2G
# mke2fs -d copies each file's ctime (and atime) from the tree, and those
# are the build's clock, not settable from user space: set them in the
# image instead, one debugfs command file for all inodes.
(cd "$tree" && find . | sed -e 's|^\.||' -e 's|^$|/|') \
    | awk -v t="@$SOURCE_DATE_EPOCH" '{ printf "sif \"%s\" ctime %s\nsif \"%s\" atime %s\n", $0, t, $0, t }' \
    > "$work/times.debugfs"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/times.debugfs" "$out/mote.img" > /dev/null 2> "$work/debugfs.log" \
    || { cat "$work/debugfs.log" >&2; exit 1; }
if grep -v '^debugfs ' "$work/debugfs.log" | grep -q .; then
    grep -v '^debugfs ' "$work/debugfs.log" | head >&2
    exit 1
fi
cp "$deb" "$out/"
(cd "$out" && sha256sum mote.img vmlinuz initrd.img "$(basename "$deb")" > SHA256SUMS)
echo "image built from $(wc -l < "$out/manifest.txt") packages ($suite), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" >&2
cat "$out/SHA256SUMS"
