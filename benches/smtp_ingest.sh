#!/usr/bin/env bash
# SMTP intake benchmark: Postfix's smtp-source against
#   - dustmote (release build; every 250 only after fsync; delay 6 h, so
#     this measures intake only),
#   - a private Postfix instance that queues durably (cleanup fsyncs the
#     queue file before 250; every message is put on hold, never delivered),
#   - smtp-sink (accepts and discards: the ceiling, no storage at all),
# in the same run, alternating the order each round. Prints messages/s per
# target (median of the rounds) and the ratios.
#
#   bash benches/smtp_ingest.sh [MESSAGES_PER_RUN] [ROUNDS]     (default 3000 3)
#
# Needs root (Postfix), smtp-source/smtp-sink/postfix (apt: postfix).
# Everything listens on 127.0.0.1 on free ports and is stopped at exit.
set -euo pipefail
MESSAGES=${1:-3000}
ROUNDS=${2:-3}
SESSIONS=10
SIZE=2048
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
. "$root/benches/lib.sh"
bench_setup bench
chmod 755 "$work"
pf="$work/postfix"
pf_started=0
bench_stop() {
    if [ "$pf_started" = 1 ]; then postfix -c "$pf/etc" stop >/dev/null 2>&1 || true; fi
}

build_release

# --- dustmote ---------------------------------------------------------------
MOTE_PORT=$(free_port)
MOTE_HTTP_PORT=$(free_port)
cat > "$work/mote.toml" <<CONF
[storage]
dir = "$work/mote-data"
min_free = ${MIN_FREE:-67108864}
[smtp]
listen = "127.0.0.1:$MOTE_PORT"
require_auth = false
max_connections = 64
[mixer]
delay = { distribution = "constant", value = "6h" }
[http]
listen = "127.0.0.1:$MOTE_HTTP_PORT"
# No delivery is configured; "direct" keeps the mote off the Tor network
# (the default, embedded Arti, would bootstrap from the public one).
[tor]
mode = "direct"
allow_clearnet = true
CONF
RUST_LOG=warn "$BIN" serve --config "$work/mote.toml" 2>"$work/mote.log" &
pids+=($!)
wait_port "$MOTE_PORT"

# --- smtp-sink ----------------------------------------------------------------
SINK_PORT=$(free_port)
smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 &
pids+=($!)
wait_port "$SINK_PORT"

# --- Postfix, queueing durably --------------------------------------------------
PF_PORT=$(free_port)
mkdir -p "$pf/etc" "$pf/spool" "$pf/data"
chown postfix "$pf/data"
cat > "$pf/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $pf/spool
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.invalid
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# Queue durably but never deliver: every message goes to the hold queue.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
maillog_file = $pf/maillog
maillog_file_prefixes = $work
CONF
# Debian's master.cf, without chroot, with smtpd on our port.
awk -v port="$PF_PORT" '
    /^smtp[ \t]+inet/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
    /^[a-z]/ && NF >= 8 { $5 = "n" }
    { print }' /etc/postfix/master.cf > "$pf/etc/master.cf"
postfix -c "$pf/etc" check >/dev/null 2>&1 || true
postfix -c "$pf/etc" start >/dev/null 2>&1 || { echo "postfix did not start:" >&2; cat "$pf/maillog" >&2; exit 1; }
pf_started=1
wait_port "$PF_PORT"

# --- runs ------------------------------------------------------------------------
run() { # port round -> messages/s
    local t0 t1
    t0=$(date +%s.%N)
    # A numbered recipient per message (-N) and a sender per round, so that
    # no two are the same message (dustmote stores a resent message once).
    smtp-source -N -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -M '[127.0.0.1]' \
        -f "bench$2@example.org" -t sink@example.net "127.0.0.1:$1"
    t1=$(date +%s.%N)
    python3 -c "print(f'{$MESSAGES / ($t1 - $t0):.0f}')"
}

declare -A ports=([dustmote]=$MOTE_PORT [postfix]=$PF_PORT [smtp-sink]=$SINK_PORT)
declare -A rates=([dustmote]="" [postfix]="" [smtp-sink]="")
orders=("dustmote postfix smtp-sink" "postfix smtp-sink dustmote" "smtp-sink dustmote postfix")
for r in $(seq 1 "$ROUNDS"); do
    for t in ${orders[$(( (r - 1) % 3 ))]}; do
        rate=$(run "${ports[$t]}" "$r")
        rates[$t]="${rates[$t]} $rate"
        printf 'round %d  %-9s %6s msg/s\n' "$r" "$t" "$rate" >&2
    done
done

# Check that the stored targets really stored everything.
stored_mote=$("$BIN" queue --config "$work/mote.toml" | awk '/^queued:/ {print $2}')
stored_pf=$(find "$pf/spool/hold" -type f | wc -l)

python3 - "$MESSAGES" "$ROUNDS" "$stored_mote" "$stored_pf" \
    "${rates[dustmote]}" "${rates[postfix]}" "${rates[smtp-sink]}" <<'PY'
import statistics, sys
msgs, rounds, stored_mote, stored_pf = map(int, sys.argv[1:5])
med = {}
for name, vals in zip(["dustmote", "postfix", "smtp-sink"], sys.argv[5:8]):
    v = [float(x) for x in vals.split()]
    med[name] = statistics.median(v)
    print(f"{name:10s} median {med[name]:7.0f} msg/s   runs: {' '.join(f'{x:.0f}' for x in v)}")
print(f"stored: dustmote {stored_mote}, postfix hold queue {stored_pf}, expected {msgs * rounds} each")
print(f"dustmote / postfix   = {med['dustmote'] / med['postfix']:.2f}x   (goal >= 3x)")
print(f"dustmote / smtp-sink = {med['dustmote'] / med['smtp-sink'] * 100:.0f} %   (goal >= 50 %)")
if stored_mote != msgs * rounds or stored_pf != msgs * rounds:
    sys.exit("a target did not store every message; the numbers above are not comparable")
PY
