#!/usr/bin/env bash
# Hop-at-drain benchmark (issue 12): a mote holding ITEMS queued messages
# reaches its hop point and hands them all to its successor (`[mote] hop =
# "at_drain"`: POST /v1/peer/items, one HTTP exchange per item, each
# answered after the successor's fsync). Measured in the same run, as the
# peer: the same queue released at the drain point by a mote without a
# successor, by SMTP to smtp-sink (Postfix's; nothing stored) — what the
# mote does when it does not hop.
#
# Both on loopback without Tor (`direct`) and through a private Tor
# network of Debian's tor daemons on 127.0.0.1 (tests/tornet/tornet.sh):
# the successor's API behind an onion service, the SMTP release through
# the network's exit to smtp-sink.
#
#   bash benches/hop.sh [ITEMS] [direct|tor|both]      (default 10000 both)
#
# Prints, per network: seconds from the hop (drain) point until the last
# item has left, items/s and MiB/s, and hop / release. Needs smtp-source,
# smtp-sink (apt: postfix), tor and curl. Everything listens on 127.0.0.1
# on free ports and is stopped at exit (the tors by PID).
set -euo pipefail
ITEMS=${1:-10000}
NETS=${2:-both}
SIZE=2048
# The hop (or drain) point comes this long after the sender started: its
# queue is loaded by then.
LOAD_S=${LOAD_S:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup hop
tornet_dir=""
bench_stop() {
    if [ -n "$tornet_dir" ]; then bash "$root/tests/tornet/tornet.sh" stop "$tornet_dir" || true; fi
}
build_release

# A generated peer token (checked in microseconds at the receiver).
read -r SECRET HASH < <("$BIN" secret)

# [tor] for a mote on network $1 (direct|tor).
tor_table() {
    if [ "$1" = tor ]; then
        printf '[tor]\nmode = "socks5"\nsocks = "127.0.0.1:%s"\n' "$SOCKS_PORT"
    else
        printf '[tor]\nmode = "direct"\nallow_clearnet = true\n'
    fi
}

SINK_PORT=$(free_port)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 &
pids+=($!)
wait_port "$SINK_PORT"

# The successor (benches/lib.sh).
start_receiver "$HASH"

# One sender on network $1, mode $2 (hop|release): prints the seconds from
# its hop (or drain) point until its queue is empty.
run() {
    local net=$1 mode=$2 dir="$work/a-$1-$2" smtp http start
    smtp=$(free_port); http=$(free_port)
    start=$(date +%s)
    local point=$((start + LOAD_S))
    # hop: the hop point is LOAD_S from now (window 10 min before a drain
    # point 1 min before the end); release: the drain point is, 15 min
    # before the end (a circuit per message through Tor takes minutes).
    local expires margin=1m
    if [ "$mode" = hop ]; then expires=$((point + 600 + 60)); else expires=$((point + 900)); margin=15m; fi
    {
        cat <<CONF
[storage]
dir = "$dir"
[smtp]
listen = "127.0.0.1:$smtp"
require_auth = false
max_connections = 64
[http]
listen = "127.0.0.1:$http"
[mixer]
delay = { distribution = "constant", value = "6h" }
[delivery.mail]
mode = "relay"
relay = "127.0.0.1:$SINK_PORT"
tls = "none"
[mote]
expires_at = "$(date -u -d "@$expires" +%Y-%m-%dT%H:%M:%SZ)"
drain_margin = "$margin"
CONF
        if [ "$mode" = hop ]; then
            cat <<CONF
hop = "at_drain"
hop_window = "10m"
successor = "b"
[[peers]]
name = "b"
url = "http://$B_URL_HOST"
token = "a:$SECRET"
CONF
        fi
        tor_table "$net"
    } > "$dir.toml"
    RUST_LOG=warn "$BIN" serve --config "$dir.toml" 2>"$dir.log" &
    local pid=$!
    wait_port "$smtp"
    smtp-source -c -N -s 10 -m "$ITEMS" -l "$SIZE" -M '[127.0.0.1]' \
        -f "hop-$net-$mode@example.org" -t sink@example.net "127.0.0.1:$smtp" > /dev/null
    if [ "$(date +%s)" -ge "$point" ]; then
        echo "loading $ITEMS items took longer than ${LOAD_S}s: raise LOAD_S" >&2
        kill "$pid"; exit 1
    fi
    # Poll until nothing is queued or in flight (bounded: 15 minutes).
    local end=""
    for _ in $(seq 1 4500); do
        q=$("$BIN" queue --config "$dir.toml" 2>/dev/null || true)
        if [ "$(date +%s)" -ge "$point" ] && echo "$q" | grep -q "queued: *0" \
            && echo "$q" | grep -q "in flight: *0"; then
            end=$(date +%s.%N); break
        fi
        sleep 0.2
    done
    local moved
    moved=$("$BIN" status --config "$dir.toml" 2>/dev/null | sed -n 's/.*(\([0-9]*\) handed off.*/\1/p')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    if [ -z "$end" ]; then echo "$net $mode: the queue did not empty in 15 minutes" >&2; exit 1; fi
    if [ "$mode" = hop ] && [ "${moved:-0}" != "$ITEMS" ]; then
        echo "$net hop: $moved of $ITEMS handed off (the rest fell back): see $dir.log" >&2
        exit 1
    fi
    python3 -c "print(round($end - $point, 2))"
}

report() { # NET HOP_S RELEASE_S
    python3 - "$ITEMS" "$SIZE" "$@" <<'PY'
import sys
n, size, net, hop, rel = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
for name, s in (("hop to successor", hop), ("release by SMTP", rel)):
    print(f"{net:6} {name:17} {n} items in {s:7.2f} s  {n / s:7.0f} items/s  {n * size / s / 2**20:6.2f} MiB/s")
print(f"{net:6} hop / release: {rel / hop:.2f}")
PY
}

if [ "$NETS" = direct ] || [ "$NETS" = both ]; then
    B_URL_HOST="127.0.0.1:$B_HTTP"
    h=$(run direct hop); r=$(run direct release)
    report direct "$h" "$r"
fi

if [ "$NETS" = tor ] || [ "$NETS" = both ]; then
    tornet_dir="$work/tornet"
    TORNET_OWNER_PID=$$ bash "$root/tests/tornet/tornet.sh" start "$tornet_dir" > /dev/null
    # shellcheck disable=SC1091
    . "$tornet_dir/network.env"
    onion=$(python3 - "$CONTROL_PORT" "$B_HTTP" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(f"AUTHENTICATE\r\nADD_ONION NEW:ED25519-V3 Flags=Detach,DiscardPK Port=80,127.0.0.1:{sys.argv[2]}\r\nQUIT\r\n".encode())
data = b""
while b"250 closing" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
for line in data.decode().splitlines():
    if line.startswith("250-ServiceID="):
        print(line.split("=", 1)[1] + ".onion")
PY
)
    [ -n "$onion" ] || { echo "ADD_ONION failed" >&2; exit 1; }
    # Wait (bounded: 3 minutes) until the onion service answers.
    for _ in $(seq 1 36); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            --socks5-hostname "127.0.0.1:$SOCKS_PORT" "http://$onion/status" || true)
        [ "$code" = 200 ] && break
        sleep 5
    done
    [ "$code" = 200 ] || { echo "the successor's onion service never answered" >&2; exit 1; }
    B_URL_HOST="$onion"
    h=$(run tor hop); r=$(run tor release)
    report tor "$h" "$r"
fi
