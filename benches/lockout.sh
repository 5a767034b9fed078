#!/usr/bin/env bash
# Nobody can lock a user out, on a release build: an invited account's
# first login during a flood of wrong credentials that names it
# (tests/peers/lockout.py: 30 SMTP clients sending wrong AUTH, 100 HTTP
# clients sending wrong bearer tokens, half of them shaped like generated
# secrets), right after the mote starts and after each of ROUNDS-1
# restarts; then one flood of 10,000 wrong generated secrets for that
# name while the real one logs in every half second.
# Goals: first login <= 2 s every time, peak RSS <= 256 MiB, no wrong
# secret accepted. Prints per round the first logins, the mote's CPU use
# and the wrong generated secrets it answered per second.
#
#   bash benches/lockout.sh [ROUNDS] [SECONDS]   (default 10 rounds of 8 s)
#
# Everything listens on 127.0.0.1 on free ports and is stopped at exit.
set -euo pipefail
ROUNDS=${1:-10}
FLOOD_SECONDS=${2:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup lockout

build_release
start_mote
"$BIN" invite bea --json --config "$work/mote.toml" > "$work/bea.json"
read -r PASSWORD TOKEN < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["smtp_password"], d["http_token"])' "$work/bea.json")

flood() { # $1: output file; more lockout.py arguments after it
    local out=$1; shift
    python3 "$root/tests/peers/lockout.py" --pid "$MOTE_PID" --smtp "$SMTP" --http "$HTTP" \
        --user bea --password "$PASSWORD" --token "$TOKEN" "$@" > "$out"
}
restart() {
    kill -TERM "$MOTE_PID"
    wait "$MOTE_PID" || true
    start_mote
    wait_port "$HTTP"
}

wait_port "$HTTP"
for r in $(seq 1 "$ROUNDS"); do
    [ "$r" -eq 1 ] || restart
    flood "$work/round-$r.json" --seconds "$FLOOD_SECONDS" --login-after 1
done
restart
flood "$work/tenk.json" --seconds 120 --generated 10000 --login-after 1

python3 - "$work" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rows = [json.load(open(f"{work}/round-{r}.json")) for r in range(1, rounds + 1)]
ok = 0
print(f"{'round':>5} {'smtp first':>10} {'http first':>10} {'cpu %':>6} {'RSS MiB':>8} "
      f"{'gen/s smtp':>10} {'gen/s http':>10} {'accepted':>8}")
for i, d in enumerate(rows, 1):
    f = d["real"]["first"]
    good = all(f.get(s) is not None and f[s] <= 2.0 for s in ("smtp", "http")) and not d["real"]["failures"]
    ok += good
    print(f"{i:5d} {f.get('smtp') or float('nan'):10.3f} {f.get('http') or float('nan'):10.3f} "
          f"{100 * d['cpu_seconds'] / d['seconds']:6.0f} {d['peak_rss_kib'] / 1024:8.0f} "
          f"{d['smtp']['generated_per_s']:10.0f} {d['http']['generated_per_s']:10.0f} {len(d['accepted']):8d}")
print(f"first login within 2 s over SMTP and HTTP: {ok} of {rounds}")
print(f"mote CPU during the floods: median {statistics.median(100 * d['cpu_seconds'] / d['seconds'] for d in rows):.0f} % of one core")
t = json.load(open(f"{work}/tenk.json"))
answered = t["smtp"]["generated_answered"] + t["http"]["generated_answered"]
later = t["real"]["later"]
print(f"10,000 wrong generated secrets for bea: {answered} answered in {t['seconds']:.1f} s "
      f"({answered / t['seconds']:.0f}/s), {len(t['accepted'])} accepted; "
      f"bea's logins meanwhile: {1 + len(later['smtp'])} SMTP, {1 + len(later['http'])} HTTP, "
      f"{len(t['real']['failures'])} failed, slowest {1000 * max(later['smtp'] + later['http'] + [t['real']['first']['smtp'], t['real']['first']['http']]):.0f} ms; "
      f"peak RSS {t['peak_rss_kib'] / 1024:.0f} MiB")
everything = answered + t["smtp"]["human_answered"] + t["http"]["human_answered"]
print(f"the mote's CPU meanwhile: {t['cpu_seconds']:.2f} s ({100 * t['cpu_seconds'] / t['seconds']:.0f} % of one core), "
      f"{1e6 * t['cpu_seconds'] / everything:.0f} µs per answered wrong attempt of either shape "
      f"({everything} in all: connection, protocol and check); the attacker's one Python process is the limit")
PY
