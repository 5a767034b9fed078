#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60) on the nightly
# toolchain, starting from the committed seeds in fuzz/seeds/TARGET; what
# libFuzzer learns goes to a scratch corpus, not into the repository.
# Prints executions and crashes per target; exits non-zero on a crash (the
# crashing input is kept in fuzz/artifacts/TARGET/).
#
#   bash fuzz/run.sh            # 60 s per target
#   bash fuzz/run.sh 600        # 10 min per target
#   bash fuzz/run.sh 60 range   # one target
#
# Needs: rustup's nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
SECONDS_EACH=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch=$(mktemp -d /tmp/dustmote-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    # -rss_limit_mb: the session target builds small runtimes; 2 GiB is
    # libFuzzer's default and a leak would pass it.
    if cargo +nightly fuzz run "$t" "$scratch/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    execs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    rate=$(grep -m1 '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'cov: [0-9]*' || true)
    printf '%-14s %-5s %10s execs %8s/s  %s\n' "$t" "$result" "${execs:-?}" "${rate:-?}" "$cov"
    if [ "$result" = CRASH ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -8
    fi
done
exit $status
