#!/usr/bin/env bash
# A private Tor network on 127.0.0.1, made of Debian's `tor` daemons:
#   auth1   directory authority, also a (non-exit) relay
#   relay1  relay
#   relay2  exit relay (accepts everything but the private ranges other than
#           127/8: tests must only ever target 127.0.0.1)
#   relay3  relay (onion services need 4 relays: their intro and rendezvous
#           circuits extend a 3-hop internal circuit by one more hop, and a
#           path never uses a relay twice)
#   client  a client tor with a SocksPort and a ControlPort
# An exit circuit needs 3 distinct relays, an onion service circuit 4, so this
# is the smallest network that carries both. Only auth1 is a directory cache, so only
# auth1 gets the HSDir flag (onion service descriptors can only be stored on
# caches; with the flag on the other relays, uploads to them fail and
# clients that ask them find nothing).
#
#   tornet.sh start DIR   starts it in DIR (which must not exist or be empty),
#                         waits until a real SOCKS5 round trip works (bounded by
#                         TORNET_TIMEOUT, default 120 s), writes DIR/network.env
#                         and prints it. On failure or timeout everything is
#                         stopped and it exits 1 with the logs' tails.
#   tornet.sh stop DIR    stops every tor it started there (by PID).
#   tornet.sh stop-client DIR / start-client DIR
#                         stop the client tor, or start it again on the same
#                         ports (tests of "Tor is down"); start-client waits
#                         for a SOCKS round trip like start.
#   tornet.sh add-client DIR NAME [TORRC_LINES_FILE]
#                         start one more client tor, NAME, with a SocksPort
#                         (ExtendedErrors, so a refused onion service tells
#                         why) and the lines of TORRC_LINES_FILE (such as a
#                         ClientOnionAuthDir); waits for its bootstrap and
#                         prints SOCKS_PORT=...; stopped with the network.
#
# With TORNET_OWNER_PID set, every tor also exits by itself once that process
# is gone (tor's __OwningControllerProcess), so a killed test run leaves
# nothing behind. Nothing here reads /etc/tor or the system resolver.
set -euo pipefail

cmd=${1:?usage: tornet.sh start|stop DIR}
dir=${2:?usage: tornet.sh start|stop DIR}
TIMEOUT=${TORNET_TIMEOUT:-120}
NODES="client relay3 relay2 relay1 auth1"

stop_all() {
    local pids=() p
    for n in $NODES; do
        if [ -f "$dir/$n/pid" ]; then
            p=$(cat "$dir/$n/pid")
            kill "$p" 2>/dev/null && pids+=("$p")
        fi
    done
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}

if [ "$cmd" = stop ]; then
    # The network's tors and any client added with add-client.
    NODES=$(for f in "$dir"/*/pid; do [ -f "$f" ] && basename "$(dirname "$f")"; done)
    stop_all
    exit 0
fi
if [ "$cmd" = stop-client ]; then
    NODES=client stop_all
    exit 0
fi
[ "$cmd" = start ] || [ "$cmd" = start-client ] || [ "$cmd" = add-client ] ||
    { echo "usage: tornet.sh start|stop|stop-client|start-client|add-client DIR" >&2; exit 2; }

t0=$(date +%s.%N)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
deadline=$(( $(date +%s) + TIMEOUT ))
fail() {
    echo "tornet: $*" >&2
    for n in $NODES; do
        [ -f "$dir/$n/log" ] && { echo "--- $n log (tail)" >&2; tail -n 15 "$dir/$n/log" >&2; }
    done
    stop_all
    exit 1
}
elapsed() { python3 -c "import time; print(f'{time.time() - $t0:.1f}')"; }

wait_bootstrap() { # [node]
    local node=${1:-client}
    until grep -q "Bootstrapped 100%" "$dir/$node/log" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$node not bootstrapped after ${TIMEOUT}s"
        sleep 0.2
    done
}

# Ready means one real round trip: an HTTP server on 127.0.0.1 through SOCKS.
probe() { # socks port
    local port pid
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir/probe"
    echo ok > "$dir/probe/ok"
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir/probe" >/dev/null 2>&1 &
    pid=$!
    until [ "$(curl -s --max-time 10 --socks5-hostname "127.0.0.1:$1" "http://127.0.0.1:$port/ok" 2>/dev/null)" = ok ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            kill "$pid" 2>/dev/null || true
            fail "no SOCKS round trip after ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    kill "$pid" 2>/dev/null || true
}

if [ "$cmd" = add-client ]; then
    # shellcheck disable=SC1091
    . "$dir/network.env"
    name=${3:?usage: tornet.sh add-client DIR NAME [TORRC_LINES_FILE]}
    extra=${4:-}
    NODES=$name
    mkdir -p "$dir/$name"
    chmod 700 "$dir/$name"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    {
        cat <<CONF
TestingTorNetwork 1
Nickname $name
DataDirectory $dir/$name
PidFile $dir/$name/pid
Log notice file $dir/$name/log
RunAsDaemon 1
UseDefaultFallbackDirs 0
DirAuthority auth1 orport=$AUTH1_OR no-v2 v3ident=$AUTH_V3IDENT 127.0.0.1:$AUTH_DIR_PORT $AUTH1_FP
SocksPort 127.0.0.1:$port ExtendedErrors
ClientOnly 1
ConfluxEnabled 0
VanguardsLiteEnabled 0
CONF
        [ -n "${TORNET_OWNER_PID:-}" ] && echo "__OwningControllerProcess $TORNET_OWNER_PID"
        [ -n "$extra" ] && cat "$extra"
    } > "$dir/$name/torrc"
    tor --defaults-torrc "$dir/empty-torrc" --hush -f "$dir/$name/torrc" >"$dir/$name/stdout" 2>&1 ||
        fail "$name did not start: $(tail -n 5 "$dir/$name/stdout")"
    wait_bootstrap "$name"
    echo "SOCKS_PORT=$port"
    exit 0
fi

if [ "$cmd" = start-client ]; then
    # shellcheck disable=SC1091
    . "$dir/network.env"
    mv "$dir/client/log" "$dir/client/log.$(date +%s%N)" 2>/dev/null || true
    tor --defaults-torrc "$dir/empty-torrc" --hush -f "$dir/client/torrc" >"$dir/client/stdout" 2>&1 ||
        fail "client did not start: $(tail -n 5 "$dir/client/stdout")"
    wait_bootstrap
    probe "$SOCKS_PORT"
    echo "client ready after $(elapsed) s"
    exit 0
fi

: > "$dir/empty-torrc"
echo "nameserver 127.0.0.1" > "$dir/resolv.conf"
# Free ports below the ephemeral range (32768+), so that no outgoing
# connection takes one before tor binds it.
read -r P_AUTH_OR P_AUTH_DIR P_R1_OR P_R2_OR P_R3_OR P_SOCKS P_CTRL < <(python3 -c '
import random, socket
ports, socks = [], []
while len(ports) < 7:
    p = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    if p not in ports:
        ports.append(p); socks.append(s)
print(" ".join(map(str, ports)))')

TOR=(tor --defaults-torrc "$dir/empty-torrc" --hush)

# Identity keys and fingerprints.
for n in auth1 relay1 relay2 relay3; do
    mkdir -p "$dir/$n"
    chmod 700 "$dir/$n"
done
mkdir -p "$dir/auth1/keys"
(cd "$dir/auth1/keys" && echo "" | tor-gencert --create-identity-key --passphrase-fd 0 -m 12 \
    -a "127.0.0.1:$P_AUTH_DIR" >/dev/null 2>&1) || fail "tor-gencert failed"
V3IDENT=$(awk '/^fingerprint / {print $2}' "$dir/auth1/keys/authority_certificate")
declare -A ORPORT=([auth1]=$P_AUTH_OR [relay1]=$P_R1_OR [relay2]=$P_R2_OR [relay3]=$P_R3_OR)
declare -A FP ED
for n in auth1 relay1 relay2 relay3; do
    "${TOR[@]}" -f "$dir/empty-torrc" --list-fingerprint --DataDirectory "$dir/$n" \
        --ORPort "${ORPORT[$n]}" --Nickname "$n" >/dev/null 2>&1 || fail "tor --list-fingerprint failed for $n"
    FP[$n]=$(awk '{print $2}' "$dir/$n/fingerprint")
    ED[$n]=$(awk '{print $2}' "$dir/$n/fingerprint-ed25519" 2>/dev/null || true)
done

OWNER_LINE=""
[ -n "${TORNET_OWNER_PID:-}" ] && OWNER_LINE="__OwningControllerProcess $TORNET_OWNER_PID"
common() { # node
    cat <<CONF
TestingTorNetwork 1
Nickname $1
DataDirectory $dir/$1
PidFile $dir/$1/pid
Log notice file $dir/$1/log
RunAsDaemon 1
UseDefaultFallbackDirs 0
DirAuthority auth1 orport=$P_AUTH_OR no-v2 v3ident=$V3IDENT 127.0.0.1:$P_AUTH_DIR ${FP[auth1]}
ServerDNSResolvConfFile $dir/resolv.conf
ServerDNSDetectHijacking 0
$OWNER_LINE
CONF
}
relay() { # node
    common "$1"
    cat <<CONF
SocksPort 0
Address 127.0.0.1
ORPort 127.0.0.1:${ORPORT[$1]}
AssumeReachable 1
__DisablePredictedCircuits 1
CONF
}

{
    relay auth1
    cat <<CONF
DirPort 127.0.0.1:$P_AUTH_DIR
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
V3AuthVotingInterval 10
V3AuthVoteDelay 2
V3AuthDistDelay 2
TestingV3AuthInitialVotingInterval 10
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
TestingDirAuthVoteGuard 127.0.0.0/8
TestingDirAuthVoteHSDir ${FP[auth1]}
TestingDirAuthVoteExit ${FP[relay2]}
ExitRelay 0
CONF
} > "$dir/auth1/torrc"
{ relay relay1; printf 'DirCache 0\nExitRelay 0\n'; } > "$dir/relay1/torrc"
{ relay relay3; printf 'DirCache 0\nExitRelay 0\n'; } > "$dir/relay3/torrc"
{
    relay relay2
    cat <<CONF
DirCache 0
ExitRelay 1
IPv6Exit 0
ExitPolicyRejectPrivate 0
ExitPolicyRejectLocalInterfaces 0
ExitPolicy reject *:25,reject 0.0.0.0/8:*,reject 10.0.0.0/8:*,reject 169.254.0.0/16:*,reject 172.16.0.0/12:*,reject 192.168.0.0/16:*,accept *:*
CONF
} > "$dir/relay2/torrc"

for n in auth1 relay1 relay2 relay3; do
    "${TOR[@]}" -f "$dir/$n/torrc" >"$dir/$n/stdout" 2>&1 || fail "$n did not start: $(tail -n 5 "$dir/$n/stdout")"
done

# Start the client only once the consensus lists all four relays as Running
# and one as Exit (a client that gets an incomplete first consensus keeps it
# for a whole voting round).
until [ -f "$dir/auth1/cached-microdesc-consensus" ] &&
      [ "$(grep -c '^s .*Running' "$dir/auth1/cached-microdesc-consensus")" -ge 4 ] &&
      grep -q '^s .*Exit' "$dir/auth1/cached-microdesc-consensus"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no complete consensus after ${TIMEOUT}s"
    sleep 0.5
done
T_CONSENSUS=$(elapsed)

mkdir -p "$dir/client"
chmod 700 "$dir/client"
{
    common client
    cat <<CONF
SocksPort 127.0.0.1:$P_SOCKS
ControlPort 127.0.0.1:$P_CTRL
ClientOnly 1
ConfluxEnabled 0
VanguardsLiteEnabled 0
MapAddress localhost 127.0.0.1
CONF
} > "$dir/client/torrc"
"${TOR[@]}" -f "$dir/client/torrc" >"$dir/client/stdout" 2>&1 || fail "client did not start: $(tail -n 5 "$dir/client/stdout")"
wait_bootstrap
T_BOOTSTRAP=$(elapsed)
probe "$P_SOCKS"
T_READY=$(elapsed)

cat > "$dir/network.env" <<ENV
SOCKS_PORT=$P_SOCKS
CONTROL_PORT=$P_CTRL
AUTH_DIR_PORT=$P_AUTH_DIR
AUTH_V3IDENT=$V3IDENT
AUTH1_OR=$P_AUTH_OR
AUTH1_FP=${FP[auth1]}
AUTH1_ED=${ED[auth1]}
RELAY1_OR=$P_R1_OR
RELAY1_FP=${FP[relay1]}
RELAY1_ED=${ED[relay1]}
RELAY2_OR=$P_R2_OR
RELAY2_FP=${FP[relay2]}
RELAY2_ED=${ED[relay2]}
SECONDS_TO_CONSENSUS=$T_CONSENSUS
SECONDS_TO_BOOTSTRAP=$T_BOOTSTRAP
SECONDS_TO_READY=$T_READY
ENV
cat "$dir/network.env"
