#!/usr/bin/env bash
# Hand-off benchmark (issue 12): how fast a mote empties a queue into
#   - another mote, over the peer link (`[delivery.mail] mode = "peer"`:
#     POST /v1/peer/items, answered after the receiver's fsync), and
#   - smtp-sink by SMTP (`mode = "relay"`: the ceiling, nothing stored),
# in the same run, on loopback without Tor (`direct` mode), alternating
# the order each round. Each sender takes MESSAGES messages from
# smtp-source and holds them for one binomial round of 15 s with rate 1:
# the whole queue is released at once, as at a hand-off; the clock runs
# from that round to an empty queue. Prints items/s and MiB/s per route
# (median of the rounds) and the ratio.
#
#   bash benches/handoff.sh [MESSAGES] [ROUNDS]      (default 2000 3)
#
# Needs smtp-source/smtp-sink (apt: postfix). Everything listens on
# 127.0.0.1 on free ports and is stopped at exit.
set -euo pipefail
MESSAGES=${1:-2000}
ROUNDS=${2:-3}
SIZE=2048
DELAY_S=15
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup handoff
build_release

# A generated peer token (checked in microseconds at the receiver).
read -r SECRET HASH < <("$BIN" secret)

common() { # DIR SMTP_PORT HTTP_PORT
    cat <<CONF
[storage]
dir = "$1"
[smtp]
listen = "127.0.0.1:$2"
require_auth = false
max_connections = 64
[http]
listen = "127.0.0.1:$3"
[tor]
mode = "direct"
allow_clearnet = true
CONF
}

# The receiving mote (benches/lib.sh).
start_receiver "$HASH"

SINK_PORT=$(free_port)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 &
pids+=($!)
wait_port "$SINK_PORT"

# One sender run: ROUTE (peer|relay), round N; prints the seconds from the
# first release to an empty queue.
run() {
    local route=$1 n=$2 dir="$work/a-$1-$2" smtp http
    smtp=$(free_port); http=$(free_port)
    { common "$dir" "$smtp" "$http"
      cat <<CONF
[mixer]
strategy = "binomial"
binomial = { interval = "${DELAY_S}s", rate = 1.0 }
CONF
      if [ "$route" = peer ]; then
          cat <<CONF
[delivery.mail]
mode = "peer"
peer = "b"
[[peers]]
name = "b"
url = "http://127.0.0.1:$B_HTTP"
token = "a:$SECRET"
CONF
      else
          cat <<CONF
[delivery.mail]
mode = "relay"
relay = "127.0.0.1:$SINK_PORT"
tls = "none"
CONF
      fi
    } > "$dir.toml"
    local start
    start=$(date +%s.%N)
    RUST_LOG=warn "$BIN" serve --config "$dir.toml" 2>"$dir.log" &
    local pid=$!
    wait_port "$smtp"
    smtp-source -c -N -s 10 -m "$MESSAGES" -l "$SIZE" -M '[127.0.0.1]' \
        -f "bench$n@example.org" -t sink@example.net "127.0.0.1:$smtp" > /dev/null
    # The first round comes one interval after the mote started.
    local first_release end
    first_release=$(python3 -c "print($start + $DELAY_S)")
    local intake_s
    intake_s=$(python3 -c "import time; print(round(time.time() - $start, 2))")
    if python3 -c "import sys; sys.exit(0 if $intake_s < $DELAY_S else 1)"; then :; else
        echo "intake took ${intake_s}s, longer than the ${DELAY_S}s delay: lower MESSAGES" >&2
        kill "$pid"; exit 1
    fi
    # Poll until nothing is queued or in flight (bounded: 10 minutes).
    for _ in $(seq 1 6000); do
        q=$("$BIN" queue --config "$dir.toml" 2>/dev/null || true)
        if echo "$q" | grep -q "queued: *0" && echo "$q" | grep -q "in flight: *0"; then break; fi
        sleep 0.1
    done
    end=$(date +%s.%N)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "print(round($end - $first_release, 3))"
}

declare -A secs
for n in $(seq 1 "$ROUNDS"); do
    if [ $((n % 2)) = 1 ]; then order="peer relay"; else order="relay peer"; fi
    for route in $order; do
        s=$(run "$route" "$n")
        secs[$route]+="$s "
        echo "round $n $route: $MESSAGES items in ${s}s after the first release" >&2
    done
done

python3 - "$MESSAGES" "$SIZE" "${secs[peer]}" "${secs[relay]}" <<'PY'
import statistics, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
med = {}
for name, arg in (("peer", sys.argv[3]), ("relay", sys.argv[4])):
    s = statistics.median(float(x) for x in arg.split())
    med[name] = n / s
    print(f"{name:6} {n / s:8.0f} items/s  {n * size / s / 2**20:6.2f} MiB/s  (median of {len(arg.split())} rounds, {s:.2f} s)")
print(f"peer hand-off / SMTP to smtp-sink: {med['peer'] / med['relay']:.2f}")
PY
