#!/usr/bin/env bash
# Guessing against a shared mote (release build): ACCOUNTS accounts made
# with `dustmote invite`, then ATTEMPTS wrong SMTP passwords and ATTEMPTS
# wrong HTTP tokens spread over their names (tests/peers/bruteforce.py,
# 20 clients a side), while one of those accounts authenticates with its
# real credentials every half second. Prints the attempts a verification
# answered (the rest were turned away before argon2), the most for one
# name in a minute, the mote's CPU time, and the real account's latencies.
# Goals: verified attempts bounded, <= 60 a minute per name after the first
# few; the real account served promptly throughout.
#
#   bash benches/bruteforce.sh [ATTEMPTS] [ACCOUNTS] [RATE]
#       (default 10000 100 and 40 attempts a second a side: the 10,000 take
#       a little over 4 minutes; RATE 0: as fast as the mote answers)
#
# Everything listens on 127.0.0.1 on free ports and is stopped at exit.
set -euo pipefail
ATTEMPTS=${1:-10000}
ACCOUNTS=${2:-100}
RATE=${3:-40}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup bruteforce

build_release
start_mote
pid=$MOTE_PID
t0=$(date +%s.%N)
for i in $(seq 1 "$ACCOUNTS"); do
    name=$(printf 'acct%03d' "$i")
    echo "$name" >> "$work/names"
    "$BIN" invite "$name" --json --config "$work/mote.toml" > "$work/invite-$name.json"
done
echo "$ACCOUNTS accounts invited in $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s" >&2
real=$(sed -n 1p "$work/names")
fresh=$(sed -n 2p "$work/names")
read -r PASSWORD TOKEN < <(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["smtp_password"], d["http_token"])' "$work/invite-$real.json")
FRESH_PASSWORD=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["smtp_password"])' "$work/invite-$fresh.json")
python3 "$root/tests/peers/bruteforce.py" --pid "$pid" --smtp "$SMTP" --http "$HTTP" \
    --names "$work/names" --user "$real" --password "$PASSWORD" --token "$TOKEN" \
    --fresh-user "$fresh" --fresh-password "$FRESH_PASSWORD" \
    --attempts "$ATTEMPTS" --rate "$RATE" --deadline 900 > "$work/out.json"
python3 - "$work/out.json" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
minutes = d["seconds"] / 60
print(f"attack: {d['seconds']:.1f} s, mote CPU {d['mote_cpu_seconds']:.1f} s")
for side in ["smtp", "http"]:
    s = d[side]
    print(f"{side}: {s['attempts']} attempts ({s['attempts'] / minutes:.0f}/min), {s['verified']} verified ({s['verified'] / minutes:.0f}/min), "
          f"{s['turned_away']} turned away, other {s['other']}, "
          f"at most {s['max_verified_per_name_per_minute']} verified for one name in a minute")
r = d["real"]
for k in ["smtp", "http"]:
    lat = sorted(r[k]) or [float("nan")]
    print(f"real account {k}: {len(r[k])} times, median {statistics.median(lat) * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms")
print(f"real account failures: {len(r['failures'])} {r['failures'][:3]}")
f = d["first_login"]
if f:
    print(f"a first login ever, 60 s after the attack began: {f['reply']!r} after {f['tries']} tries, {f['seconds']:.1f} s")
PY
