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
build_release() {
    echo "building dustmote (release)..." >&2
    cargo build --release -q --manifest-path "$root/Cargo.toml"
    BIN="$root/target/release/dustmote"
}
