#!/usr/bin/env bash
# Download benchmark, zero delays: a SIZE file (default 1 GiB) served by
# nginx on 127.0.0.1,
#   1. fetched by the mote in Range chunks (8–16 MiB, direct mode) vs curl
#      fetching it from nginx directly;
#   2. retrieved from the mote's cache with curl and a Range header vs curl
#      from nginx (same Range);
# with the mote's peak RSS in each phase (VmHWM, reset between phases) and
# sha256 checks. Prints the ratios (goals: fetch >= 0.9 of curl, retrieval
# >= 0.8 of nginx).
#
#   bash benches/fetch_bench.sh [SIZE_MIB]        (default 1024)
set -euo pipefail
SIZE_MIB=${1:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/dustmote-fetchbench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
now() { date +%s.%N; }

echo "building dustmote (release)..." >&2
cargo build --release -q --manifest-path "$root/Cargo.toml"
BIN="$root/target/release/dustmote"

mkdir -p "$work/www" "$work/tmp"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$work/www/big.bin"
SUM=$(sha256sum "$work/www/big.bin" | cut -d' ' -f1)

NG_PORT=$(free_port)
cat > "$work/nginx.conf" <<CONF
daemon off;
master_process off;
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 64; }
http {
    access_log off;
    sendfile on;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    server { listen 127.0.0.1:$NG_PORT; root $work/www; }
}
CONF
nginx -e "$work/nginx-error.log" -p "$work" -c "$work/nginx.conf" &
pids+=($!)
wait_port "$NG_PORT"

TOKEN=bench-token
HASH=$(echo "$TOKEN" | "$BIN" passwd)
SMTP_PORT=$(free_port)
HTTP_PORT=$(free_port)
cat > "$work/mote.toml" <<CONF
[storage]
dir = "$work/mote-data"
cache_bytes = ${CACHE_BYTES:-67108864}
[smtp]
listen = "127.0.0.1:$SMTP_PORT"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[[http.users]]
name = "bench"
token_hash = "$HASH"
[fetch]
chunk = { min = "8MiB", max = "16MiB" }
delay = { distribution = "constant", value = "0s" }
allow_private_addresses = true
[tor]
mode = "direct"
allow_clearnet = true
CONF
RUST_LOG=warn "$BIN" serve --config "$work/mote.toml" 2>"$work/mote.log" &
MOTE=$!
pids+=($MOTE)
wait_port "$HTTP_PORT"
AUTH="Authorization: Bearer $TOKEN"
peak_reset() { echo 5 > "/proc/$MOTE/clear_refs"; }
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$MOTE/status"; }

# 1. Fetch: curl directly (to a file, then fsync: a download that is kept;
#    and to /dev/null, the network-only ceiling) vs the mote in chunks.
t0=$(now); curl -s -o "$work/curl.bin" "http://127.0.0.1:$NG_PORT/big.bin"; sync "$work/curl.bin"; t1=$(now)
CURL_S=$(python3 -c "print($t1 - $t0)")
rm -f "$work/curl.bin"
t0=$(now); curl -s -o /dev/null "http://127.0.0.1:$NG_PORT/big.bin"; t1=$(now)
CURL_NULL_S=$(python3 -c "print($t1 - $t0)")
peak_reset
t0=$(now)
ID=$(curl -s -H "$AUTH" -X POST "http://127.0.0.1:$HTTP_PORT/v1/fetches" \
    -d "{\"url\":\"http://127.0.0.1:$NG_PORT/big.bin\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
deadline=$(( $(date +%s) + 1800 ))
until curl -s -H "$AUTH" "http://127.0.0.1:$HTTP_PORT/v1/fetches/$ID" | grep -q '"state":"ready"'; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "fetch did not finish" >&2; exit 1; }
    sleep 0.05
done
t1=$(now)
FETCH_S=$(python3 -c "print($t1 - $t0)")
FETCH_RSS=$(peak_mib)

# 2. Retrieval with a Range: nginx vs the mote's cache.
t0=$(now); curl -s -r 0- -o "$work/from-nginx" "http://127.0.0.1:$NG_PORT/big.bin"; t1=$(now)
NGINX_S=$(python3 -c "print($t1 - $t0)")
peak_reset
t0=$(now); curl -s -r 0- -H "$AUTH" -o "$work/from-mote" "http://127.0.0.1:$HTTP_PORT/v1/fetches/$ID/content"; t1=$(now)
MOTE_S=$(python3 -c "print($t1 - $t0)")
GET_RSS=$(peak_mib)
GOT=$(sha256sum "$work/from-mote" | cut -d' ' -f1)
[ "$GOT" = "$SUM" ] || { echo "retrieved content differs from the origin's" >&2; exit 1; }
rm -f "$work/from-nginx" "$work/from-mote"

python3 - "$SIZE_MIB" "$CURL_S" "$FETCH_S" "$NGINX_S" "$MOTE_S" "$FETCH_RSS" "$GET_RSS" "$CURL_NULL_S" <<'PY'
import sys
mib, curl_s, fetch_s, nginx_s, mote_s = (float(x) for x in sys.argv[1:6])
fetch_rss, get_rss = sys.argv[6:8]
curl_null_s = float(sys.argv[8])
print(f"size {mib:.0f} MiB, sha256 checked")
print(f"fetch:     curl -o file+sync {mib/curl_s:8.1f} MiB/s   mote in chunks {mib/fetch_s:8.1f} MiB/s   ratio {curl_s/fetch_s:.2f} (goal >= 0.9)   mote peak RSS {fetch_rss} MiB")
print(f"           (curl to /dev/null {mib/curl_null_s:8.1f} MiB/s: ratio {curl_null_s/fetch_s:.2f})")
print(f"retrieval: nginx       {mib/nginx_s:8.1f} MiB/s   mote cache     {mib/mote_s:8.1f} MiB/s   ratio {nginx_s/mote_s:.2f} (goal >= 0.8)   mote peak RSS {get_rss} MiB")
PY
