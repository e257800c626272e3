#!/usr/bin/env bash
# Runs every cairn fuzz target (or those named) for SECONDS each,
# CAIRN_FUZZ_JOBS at a time (default 1) under `nice -n 19`, and prints target|execs|seconds|result.
#   fuzz/run.sh [SECONDS] [TARGET...]      SECONDS defaults to 3600
# (-max_total_time is wall-clock: for the soak bar of 10 million executions
# and an hour of CPU per target, use fuzz/soak.sh.)
# Needs the nightly toolchain and cargo-fuzz (.ci/setup.sh installs both).
# Builds into $CAIRN_FUZZ_TARGET_DIR (default: $CARGO_TARGET_DIR/fuzz, outside
# the clone); the growing corpus lives beside it, the committed seeds in
# fuzz/seeds/<target>; a crash's input is written to fuzz/artifacts/<target>/.
# Exit status: non-zero if any target crashed, leaked, hung or failed to build.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-3600}
shift || true
tdir=${CAIRN_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}/fuzz}
corpus=${CAIRN_FUZZ_CORPUS:-$tdir/corpus}

# Per-target memory bounds: malloc_mb and rss_mb.
source ./limits.sh

if ! rustup run nightly rustc --version >/dev/null 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "fuzz/run.sh: the nightly toolchain or cargo-fuzz is missing (.ci/setup.sh installs them)" >&2
        exit 1
    fi
    echo "fuzz/run.sh: skipped: install the nightly toolchain and cargo-fuzz to fuzz" >&2
    exit 0
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Release with debug assertions (overflow checks) and AddressSanitizer.
nice -n 19 cargo +nightly fuzz build --debug-assertions --target-dir "$tdir" >&2

# One target: its row goes to $tdir/$t.row ("target|execs|seconds|result").
run_one() {
    local t=$1 log="$tdir/$1.log" start=$SECONDS rc took execs rss result what unit
    mkdir -p "$corpus/$t" "artifacts/$t" "seeds/$t"
    set +e
    nice -n 19 cargo +nightly fuzz run --debug-assertions --target-dir "$tdir" "$t" \
        "$corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb="$rss_mb" \
        -malloc_limit_mb="${malloc_mb[$t]:-64}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    # libFuzzer's own count of the fuzzing time (a rebuild is not in it).
    took=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | awk '{print $5}')
    took=${took:-$((SECONDS - start))}
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | awk '{print $2}')
    if [ $rc -eq 0 ]; then
        result="ok (peak RSS ${rss:-?} MB)"
    else
        what=$(grep -oE 'panicked at [^ ]+|ERROR: (libFuzzer|AddressSanitizer): [a-z-]+' "$log" | head -1)
        unit=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $5}')
        result="FAILED (${what:-exit $rc}) ${unit:-see $log}"
    fi
    echo "$t|${execs:-0}|$took|$result" >"$tdir/$t.row"
    echo "fuzz: $t: ${execs:-0} executions in ${took}s: $result" >&2
}

# CAIRN_FUZZ_JOBS targets at once (default 1; the test command uses one per
# core, since nothing else runs then).
parallel=${CAIRN_FUZZ_JOBS:-1}
for t in "${targets[@]}"; do
    rm -f "$tdir/$t.row"
    while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
        wait -n || true
    done
    run_one "$t" &
done
wait

failed=0
rows=()
for t in "${targets[@]}"; do
    row=$(cat "$tdir/$t.row" 2>/dev/null || echo "$t|0|0|FAILED (no result)")
    case $row in *"|FAILED"*) failed=1 ;; esac
    rows+=("$row")
done

echo "target|execs|seconds|result"
printf '%s\n' "${rows[@]}"
exit $failed
