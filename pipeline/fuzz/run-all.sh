#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 10) and exits non-zero if any target crashes.
#
#   pipeline/fuzz/run-all.sh 10
#
# cargo-fuzz wants nightly; on stable it works with RUSTC_BOOTSTRAP=1 (set here), which lets
# stable rustc accept the -Z sanitizer flags cargo-fuzz passes. Needs `cargo install cargo-fuzz`.
# Each target starts from seeds/<target>/ (committed); new inputs go to corpus/<target>/ and
# crash inputs to artifacts/<target>/ (both git-ignored). Extra arguments after SECONDS go to
# cargo fuzz build/run (e.g. `-s none` to build without AddressSanitizer, faster).
set -uo pipefail

SECONDS_PER_TARGET="${1:-10}"
shift || true
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

TARGETS=(ethernet arp ipv4 ipv6 ipv6frag reasm udp tcp icmpv4 icmpv6 ndp neighbor esp natt nat worker codec ike ike_record ike_cert ike_fragment ike_group)

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
    echo "CRASHED: ${failed[*]} (inputs in pipeline/fuzz/artifacts/)" >&2
    exit 1
fi
echo "all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET}s without a crash"
