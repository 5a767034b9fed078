# Shared helpers of the benchmark scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait (at most 15 s) until something listens on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# Build the release binary of the checkout at $root; sets BIN to it.
# DUSTMOTE_BIN=path uses that binary instead (a before/after comparison
# with another commit's release build, in alternating runs).
build_release() {
    if [ -n "${DUSTMOTE_BIN:-}" ]; then
        BIN=$DUSTMOTE_BIN
        echo "using $BIN" >&2
        return
    fi
    echo "building dustmote (release)..." >&2
    cargo build --release -q --manifest-path "$root/Cargo.toml"
    BIN="$root/target/release/dustmote"
}

# The scratch space of a benchmark run: $work (a directory under /tmp named
# after $1), $keys (a tmpfs directory: the mote keeps its sealing key in
# memory, as in production; exported as RUNTIME_DIRECTORY), and $pids, the
# processes to kill at exit. A script may define `bench_stop` for more to
# do at exit (it runs after the kills, before the directories go).
bench_setup() {
    work=$(mktemp -d "/tmp/dustmote-$1.XXXXXX")
    keys=$(mktemp -d /dev/shm/dustmote-keys.XXXXXX)
    export RUNTIME_DIRECTORY="$keys"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if declare -F bench_stop >/dev/null; then bench_stop; fi
    sleep 0.5
    rm -rf "$work" "$keys"
}

# Start the receiving mote of a hand-off benchmark: it holds everything
# for 6 h (so what is measured is admission) and takes items from peer
# "a" (token hash $1) without a rate limit. Sets B_SMTP and B_HTTP; its
# config is $work/b.toml, its log $work/b.log.
start_receiver() {
    B_SMTP=$(free_port); B_HTTP=$(free_port)
    cat > "$work/b.toml" <<CONF
[storage]
dir = "$work/b"
[smtp]
listen = "127.0.0.1:$B_SMTP"
require_auth = false
max_connections = 64
[http]
listen = "127.0.0.1:$B_HTTP"
[tor]
mode = "direct"
allow_clearnet = true
[mixer]
delay = { distribution = "constant", value = "6h" }
[[peers]]
name = "a"
token_hash = "$1"
rate = "100000/s"
burst = 100000
CONF
    RUST_LOG=warn "$BIN" serve --config "$work/b.toml" 2>"$work/b.log" &
    pids+=($!)
    wait_port "$B_HTTP"
}

# Start a mote ($BIN) on free ports that holds everything for 6 h (so what
# is measured is what happens before delivery), with no delivery and
# "direct" transport (the default, embedded Arti, would bootstrap from the
# public network). $1: more lines for [smtp], $2: more lines for [http].
# Sets SMTP, HTTP and MOTE_PID; its config is $work/mote.toml, its log
# $work/mote.log.
start_mote() {
    SMTP=$(free_port); HTTP=$(free_port)
    cat > "$work/mote.toml" <<CONF
[storage]
dir = "$work/data"
[smtp]
listen = "127.0.0.1:$SMTP"
${1:-}
[mixer]
delay = { distribution = "constant", value = "6h" }
[http]
listen = "127.0.0.1:$HTTP"
${2:-}
[tor]
mode = "direct"
allow_clearnet = true
CONF
    RUST_LOG=warn "$BIN" serve --config "$work/mote.toml" 2>"$work/mote.log" &
    MOTE_PID=$!
    pids+=("$MOTE_PID")
    wait_port "$SMTP"
}
