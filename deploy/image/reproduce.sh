#!/usr/bin/env bash
# Build the mote image twice from the same .deb and the same
# SOURCE_DATE_EPOCH and compare: the image, kernel and initramfs sha256, and
# file by file which ones differ (from each build's files.sha256).
#
#   sudo bash deploy/image/reproduce.sh DUSTMOTE_DEB
#
# Both builds read Debian's mirror; if it changed between them (a point
# release, a security update) the manifests differ and so does everything
# else: pin MIRROR to a snapshot.debian.org URL to rule that out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
deb=$(realpath "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/dustmote-image-repro.XXXXXX")
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct)}
for n in one two; do
    start=$(date +%s)
    bash "$here/build.sh" "$deb" "$work/$n" > /dev/null 2> "$work/$n.log" \
        || { tail -20 "$work/$n.log" >&2; exit 1; }
    echo "build $n: $(( $(date +%s) - start )) s" >&2
done
status=0
if ! cmp -s "$work/one/manifest.txt" "$work/two/manifest.txt"; then
    echo "the package sets differ (the mirror changed between the builds):" >&2
    diff "$work/one/manifest.txt" "$work/two/manifest.txt" >&2 || true
    status=1
fi
for f in mote.img vmlinuz initrd.img; do
    a=$(grep " $f\$" "$work/one/SHA256SUMS" | cut -d' ' -f1)
    b=$(grep " $f\$" "$work/two/SHA256SUMS" | cut -d' ' -f1)
    if [ "$a" = "$b" ]; then echo "same      $f  $a"; else echo "DIFFERENT $f  $a $b"; status=1; fi
done
total=$(wc -l < "$work/one/files.sha256")
differ=$(diff <(sort "$work/one/files.sha256") <(sort "$work/two/files.sha256") | grep '^<' | sed 's/^< [0-9a-f]*  //' | sort -u || true)
echo "files: $total in the image, $(printf '%s' "$differ" | grep -c . || true) differ"
[ -z "$differ" ] || { printf '%s\n' "$differ" | head -50; status=1; }
exit $status
