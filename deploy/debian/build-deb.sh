#!/usr/bin/env bash
# Build the dustmote Debian package reproducibly: the same commit gives the
# same .deb and the same binary, byte for byte, in any directory.
#
#   bash deploy/debian/build-deb.sh [OUT_DIR]     (default: target/debian)
#
# What makes it reproducible: Cargo.lock (--locked); every build path
# remapped out of the binary (the checkout, CARGO_HOME, the target dir) for
# rustc and for the C compiler (ring's assembly and C); SOURCE_DATE_EPOCH
# from the commit for cargo-deb's archive times; no incremental builds.
# Needs cargo-deb (`cargo install cargo-deb`). Prints the sha256 of the
# .deb and of the binary inside it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-$root/target/debian}
mkdir -p "$out"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
target=${CARGO_TARGET_DIR:-$root/target/reproducible}
export CARGO_TARGET_DIR=$target
maps=("$root=/build/dustmote" "$cargo_home=/cargo" "$target=/build/target")
rustflags=""
cflags=""
for m in "${maps[@]}"; do
    rustflags+=" --remap-path-prefix=$m"
    cflags+=" -ffile-prefix-map=$m"
done
export RUSTFLAGS="$rustflags"
export CFLAGS="$cflags"
export CARGO_INCREMENTAL=0
cargo deb --locked --output "$out" >&2
deb=$(ls -t "$out"/dustmote_*.deb | head -1)
bin_sum=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/dustmote | sha256sum | cut -d' ' -f1)
echo "deb    $(sha256sum "$deb" | cut -d' ' -f1)  $(basename "$deb")"
echo "binary $bin_sum  usr/bin/dustmote"
