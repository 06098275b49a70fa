#!/usr/bin/env bash
# Runs every control fuzz target for SECONDS (default 10), as pipeline/fuzz/run-all.sh does for
# the data plane's (see there: cargo-fuzz on stable with RUSTC_BOOTSTRAP=1, seeds/<target>/
# committed, corpus/ and artifacts/ git-ignored). Exits non-zero if a target crashes.
set -uo pipefail

SECONDS_PER_TARGET="${1:-10}"
shift || true
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

TARGETS=(ha_sync cluster_msg store_record)

if ! cargo fuzz build -O "$@"; then
    echo "fuzz build failed" >&2
    exit 2
fi

failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    echo "=== $t (${SECONDS_PER_TARGET}s)"
    if ! cargo fuzz run -O "$@" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 2>"corpus/.$t.log"; then
        failed+=("$t")
        tail -n 40 "corpus/.$t.log" >&2
    else
        grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "corpus/.$t.log" | tail -n 2
    fi
done

if ((${#failed[@]})); then
    echo "CRASHED: ${failed[*]} (inputs in control/fuzz/artifacts/)" >&2
    exit 1
fi
echo "all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s without a crash"
