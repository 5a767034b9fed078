#!/usr/bin/env bash
# Download benchmark, zero delays: a SIZE file (default 1 GiB) served by
# nginx on 127.0.0.1,
#   1. fetched by the mote in Range chunks (8–16 MiB, direct mode) vs curl
#      fetching it from nginx directly;
#   2. retrieved from the mote's cache with curl and a Range header vs curl
#      from nginx (same Range);
# with the mote's peak RSS in each phase (VmHWM, reset between phases) and
# sha256 checks. Prints the ratios of medians (goals: fetch >= 0.9 of curl, retrieval
# >= 0.8 of nginx).
#
#   bash benches/fetch_bench.sh [SIZE_MIB]        (default 1024)
#   CHUNK_MIN=64MiB CHUNK_MAX=128MiB bash benches/fetch_bench.sh   (other chunk bounds)
set -euo pipefail
SIZE_MIB=${1:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup fetchbench
now() { date +%s.%N; }

build_release

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
chunk = { min = "${CHUNK_MIN:-8MiB}", max = "${CHUNK_MAX:-16MiB}" }
delay = { distribution = "constant", value = "0s" }
allow_private_addresses = true
[tor]
mode = "direct"
allow_clearnet = true
CONF
RUST_LOG=warn "$BIN" serve --config "$work/mote.toml" 2>"$work/mote.log" &
MOTE=$!
pids+=($MOTE)
wait_port "$HTTP_PORT" || { cat "$work/mote.log" >&2; exit 1; }
AUTH="Authorization: Bearer $TOKEN"
peak_reset() { echo 5 > "/proc/$MOTE/clear_refs"; }
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$MOTE/status"; }

# Each measurement is repeated REPS times (default 3), alternating the
# peers, and the medians are compared: this machine's loopback and disk
# speeds vary by tens of percent from one second to the next.
REPS=${REPS:-3}
: > "$work/times"
for rep in $(seq 1 "$REPS"); do
    # 1. Fetch: curl directly (to a file, then fsync: a download that is
    #    kept; and to /dev/null, the network-only ceiling) vs the mote in chunks.
    t0=$(now); curl -s -o "$work/curl.bin" "http://127.0.0.1:$NG_PORT/big.bin"; sync "$work/curl.bin"; t1=$(now)
    echo "curl $t0 $t1" >> "$work/times"
    rm -f "$work/curl.bin"
    t0=$(now); curl -s -o /dev/null "http://127.0.0.1:$NG_PORT/big.bin"; t1=$(now)
    echo "curl_null $t0 $t1" >> "$work/times"
    peak_reset
    t0=$(now)
    ID=$(curl -s -H "$AUTH" -X POST "http://127.0.0.1:$HTTP_PORT/v1/fetches" \
        -d "{\"url\":\"http://127.0.0.1:$NG_PORT/big.bin\"}" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
    deadline=$(( $(date +%s) + 1800 ))
    until curl -s -H "$AUTH" "http://127.0.0.1:$HTTP_PORT/v1/fetches/$ID" | grep -q '"state":"ready"'; do
        [ "$(date +%s)" -lt "$deadline" ] || { echo "fetch did not finish" >&2; exit 1; }
        sleep 0.02
    done
    t1=$(now)
    echo "fetch $t0 $t1" >> "$work/times"
    echo "fetch_rss $(peak_mib)" >> "$work/times"

    # 2. Retrieval with a Range: nginx vs the mote's cache.
    t0=$(now); curl -s -r 0- -o "$work/from-nginx" "http://127.0.0.1:$NG_PORT/big.bin"; t1=$(now)
    echo "nginx $t0 $t1" >> "$work/times"
    rm -f "$work/from-nginx"
    peak_reset
    t0=$(now); curl -s -r 0- -H "$AUTH" -o "$work/from-mote" "http://127.0.0.1:$HTTP_PORT/v1/fetches/$ID/content"; t1=$(now)
    echo "mote $t0 $t1" >> "$work/times"
    echo "get_rss $(peak_mib)" >> "$work/times"
    GOT=$(sha256sum "$work/from-mote" | cut -d' ' -f1)
    [ "$GOT" = "$SUM" ] || { echo "retrieved content differs from the origin's" >&2; exit 1; }
    rm -f "$work/from-mote"
    curl -s -o /dev/null -H "$AUTH" -X DELETE "http://127.0.0.1:$HTTP_PORT/v1/fetches/$ID"
done

python3 - "$SIZE_MIB" "$REPS" "$work/times" <<'PY'
import statistics, sys
mib, reps = float(sys.argv[1]), int(sys.argv[2])
t, rss = {}, {}
for line in open(sys.argv[3]):
    k, *v = line.split()
    if k.endswith("_rss"):
        rss.setdefault(k, []).append(int(v[0]))
    else:
        t.setdefault(k, []).append(float(v[1]) - float(v[0]))
m = {k: statistics.median(v) for k, v in t.items()}
rate = lambda k: f"{mib / m[k]:7.1f} MiB/s"
spread = lambda k: f"({min(mib / x for x in t[k]):.0f}–{max(mib / x for x in t[k]):.0f})"
print(f"size {mib:.0f} MiB, sha256 checked, medians of {reps} runs (range in parentheses)")
print(f"fetch:     curl -o file+sync {rate('curl')} {spread('curl')}   mote in chunks {rate('fetch')} {spread('fetch')}   ratio {m['curl']/m['fetch']:.2f} (goal >= 0.9)   mote peak RSS {max(rss['fetch_rss'])} MiB")
print(f"           curl to /dev/null {rate('curl_null')} {spread('curl_null')}: ratio {m['curl_null']/m['fetch']:.2f}")
print(f"retrieval: nginx {rate('nginx')} {spread('nginx')}   mote cache {rate('mote')} {spread('mote')}   ratio {m['nginx']/m['mote']:.2f} (goal >= 0.8)   mote peak RSS {max(rss['get_rss'])} MiB")
PY
