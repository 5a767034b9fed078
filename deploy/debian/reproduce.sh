#!/usr/bin/env bash
# Reproducibility check: build the .deb twice, from two clean clones of the
# same commit in two different directories (each with its own target dir),
# and compare the sha256 of the packages and of the binaries.
#
#   bash deploy/debian/reproduce.sh [COMMIT]      (default: HEAD)
#
# Two full release builds: about 12 minutes on 2 cores. Exits non-zero if
# anything differs (and lists what, with diffoscope if it is installed).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
commit=$(git -C "$root" rev-parse "${1:-HEAD}")
work=$(mktemp -d /tmp/dustmote-repro.XXXXXX)
trap 'rm -rf "$work"' EXIT
sums=()
for n in one two-with-a-longer-path; do
    git clone -q "$root" "$work/$n"
    git -C "$work/$n" checkout -q "$commit"
    start=$(date +%s)
    CARGO_TARGET_DIR="$work/$n/target" bash "$work/$n/deploy/debian/build-deb.sh" "$work/out-$n" > "$work/$n.sums"
    echo "build $n: $(( $(date +%s) - start )) s" >&2
    cat "$work/$n.sums" >&2
    sums+=("$(cut -d' ' -f1-3 "$work/$n.sums" | sort | tr '\n' ' ')")
done
if [ "${sums[0]}" = "${sums[1]}" ]; then
    echo "reproducible: commit $commit gives the same .deb and binary twice"
else
    echo "NOT reproducible for commit $commit" >&2
    if command -v diffoscope >/dev/null; then
        diffoscope "$work"/out-one/*.deb "$work"/out-two-with-a-longer-path/*.deb | head -100 >&2 || true
    fi
    exit 1
fi
