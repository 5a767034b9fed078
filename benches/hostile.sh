#!/usr/bin/env bash
# Hostile load on a release build: tests/peers/hostile.py's four attacks
# (junk bearer tokens, wrong AUTH, slot holders, trickled bodies), each for
# SECONDS, while a real user submits one message a second. Prints the
# mote's peak RSS and threads and the real user's latencies per phase.
# Goals: peak RSS <= 256 MiB, real-user latency <= 2 s.
#
#   bash benches/hostile.sh [SECONDS]     (default 15; the real user starts
#                                          3 s into each phase)
#
# Everything listens on 127.0.0.1 on free ports and is stopped at exit.
set -euo pipefail
SECONDS_PER_PHASE=${1:-15}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup hostile

build_release
PASSWORD=hostile-bench-password
HASH=$(echo "$PASSWORD" | "$BIN" passwd)
start_mote "[[smtp.users]]
name = \"alice\"
password_hash = \"$HASH\"" "[[http.users]]
name = \"alice\"
token_hash = \"$HASH\""
pid=$MOTE_PID
python3 "$root/tests/peers/hostile.py" --pid "$pid" --smtp "$SMTP" --http "$HTTP" \
    --user alice --password "$PASSWORD" --seconds "$SECONDS_PER_PHASE" > "$work/out.json"
python3 - "$work/out.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
print(f"baseline RSS {d['baseline_rss_kib'] / 1024:.0f} MiB")
for phase in ["junk_tokens", "wrong_auth", "idle_slots", "slow_bodies"]:
    p = d[phase]
    lat = sorted(p["latency"]) or [float("nan")]
    print(f"{phase:12s} peak RSS {p['peak_rss_kib'] / 1024:5.0f} MiB  threads {p['peak_threads']:3d}  "
          f"real user: {len(p['latency'])} sent, median {statistics.median(lat) * 1000:.0f} ms, "
          f"max {max(lat) * 1000:.0f} ms, {len(p['failures'])} failed")
PY
