#!/usr/bin/env bash
# Soaks cairn's fuzz targets to the bar of issue 15 §1: each target runs until
# it has, summed over all its runs, at least CAIRN_SOAK_EXECS executions
# (default 10,000,000) AND CAIRN_SOAK_CPU seconds of CPU time (user+sys of the
# fuzzer process; default 3600). CPU time, not wall time: runs are under
# `nice -n 19` on shared machines, where libFuzzer's wall-clock
# -max_total_time=3600 may be far less than an hour of fuzzing.
#   fuzz/soak.sh [TARGET...]     default: every target, cheapest bar first
#   fuzz/soak.sh --status        the totals so far, and which targets met the bar
# Runs CAIRN_FUZZ_JOBS targets at once (default 1), each in slices of at most
# CAIRN_SOAK_SLICE wall seconds (default 900); every finished, failed or
# interrupted slice appends one line to the results file
#   target|execs|cpu_seconds|wall_seconds|result|date
# (fuzz/soak-results.txt, committed, so that the totals survive the machine;
# CAIRN_SOAK_RESULTS overrides), and its libFuzzer output to
# $CAIRN_FUZZ_TARGET_DIR/soak/<target>.log. The corpus carries over between
# slices and sessions on one machine, so the script can be stopped at any time
# (SIGTERM, or Ctrl-C in the foreground: the running fuzzers stop, their
# slices are recorded; a script started with `&` from another script ignores
# SIGINT, so send it SIGTERM) and run again later: totals are summed from
# the results file. A crash, leak,
# hang or over-bound allocation ends that target's soak and its count: only
# the lines after a target's last FAILED line count toward the bar (the bar is
# a clean soak). Crash inputs go to fuzz/artifacts/<target>/.
# Exit status: non-zero if a target failed or was interrupted short of the bar.
# Builds first (as fuzz/run.sh does) unless CAIRN_SOAK_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")"

tdir=${CAIRN_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}/fuzz}
corpus=${CAIRN_FUZZ_CORPUS:-$tdir/corpus}
sdir=$tdir/soak
results=${CAIRN_SOAK_RESULTS:-$PWD/soak-results.txt}
want_execs=${CAIRN_SOAK_EXECS:-10000000}
want_cpu=${CAIRN_SOAK_CPU:-3600}
slice=${CAIRN_SOAK_SLICE:-900}
source ./limits.sh

status=0
if [ "${1:-}" = --status ]; then
    status=1
    shift
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    # Cheapest bar first: the fast targets need only the hour of CPU; the
    # slowest (archive) needs more than an hour for 10 million executions.
    targets=(latest header key catalog layout inflate trailer decode wal segment
        frames_gzip frames_encrypted archive)
fi

# The totals of every target, and whether each met the bar.
summary() {
    local t execs cpu bar
    echo "target|execs|cpu_seconds|bar"
    for t in "${targets[@]}"; do
        read -r execs cpu < <(totals "$t")
        bar=short
        if [ "$execs" -ge "$want_execs" ] && [ "$cpu" -ge "$want_cpu" ]; then
            bar=met
        fi
        echo "$t|$execs|$cpu|$bar"
    done
}

# Totals of target $1 since its last FAILED line: "execs cpu".
totals() {
    if [ ! -f "$results" ]; then
        echo "0 0"
        return
    fi
    awk -F'|' -v t="$1" '$1 == t {
            if ($5 ~ /^FAILED/) { e = 0; c = 0 } else { e += $2; c += $3 }
        } END { printf "%d %d\n", e, c }' "$results"
}

# Sets `ticks` to the user+sys CPU of this shell's waited-for children, in
# clock ticks (not in a $(...) subshell: that would read the subshell's).
child_ticks() {
    local st
    read -ra st <"/proc/$BASHPID/stat"
    ticks=$((st[15] + st[16]))
}

# Soaks one target to the bar, slice by slice.
soak_one() {
    local t=$1 log="$sdir/$1.log" stop=0 fpid=0
    # SIGTERM from the main script (or SIGINT): stop the fuzzer, which
    # prints its final stats, record the slice, and end.
    trap 'stop=1; if [ $fpid -gt 0 ]; then kill -INT $fpid 2>/dev/null || true; fi' INT TERM
    mkdir -p "$corpus/$t" "artifacts/$t" "seeds/$t"
    local hz
    hz=$(getconf CLK_TCK)
    while [ $stop = 0 ]; do
        local execs cpu
        read -r execs cpu < <(totals "$t")
        if [ "$execs" -ge "$want_execs" ] && [ "$cpu" -ge "$want_cpu" ]; then
            echo "soak: $t: bar met: $execs executions, $cpu CPU seconds" >&2
            return 0
        fi
        # Wall time >= CPU time, so a slice of the missing CPU seconds never
        # overshoots the CPU bar; once that is met, short slices for the rest.
        local secs=300
        if [ "$cpu" -lt "$want_cpu" ]; then
            secs=$((want_cpu - cpu))
        fi
        secs=$((secs < 30 ? 30 : secs > slice ? slice : secs))
        local t0 w0 rc off ticks
        child_ticks
        t0=$ticks
        w0=$SECONDS
        off=$(stat -c %s "$log" 2>/dev/null || echo 0)
        echo "=== soak slice of ${secs}s, $(date -u +%FT%TZ)" >>"$log"
        nice -n 19 "$bin/$t" "$corpus/$t" "seeds/$t" \
            -max_total_time="$secs" -timeout=10 -rss_limit_mb="$rss_mb" \
            -malloc_limit_mb="${malloc_mb[$t]:-64}" -print_final_stats=1 \
            -artifact_prefix="$PWD/artifacts/$t/" >>"$log" 2>&1 &
        fpid=$!
        # A trapped signal interrupts `wait`; wait again for the exit status.
        rc=0
        wait $fpid || rc=$?
        while kill -0 $fpid 2>/dev/null; do
            rc=0
            wait $fpid || rc=$?
        done
        fpid=0
        local ran rss cpu_s wall_s result what unit
        ran=$(tail -c +$((off + 1)) "$log" | grep -o 'stat::number_of_executed_units: [0-9]*' | tail -1 | awk '{print $2}')
        rss=$(tail -c +$((off + 1)) "$log" | grep -o 'stat::peak_rss_mb: *[0-9]*' | tail -1 | awk '{print $2}')
        child_ticks
        cpu_s=$(((ticks - t0) / hz))
        wall_s=$((SECONDS - w0))
        # libFuzzer exits 72 on SIGINT/SIGTERM (a Ctrl-C reaches it first).
        if [ $stop = 1 ] || [ $rc -eq 72 ] || tail -c +$((off + 1)) "$log" | grep -q 'libFuzzer: run interrupted'; then
            stop=1
            result="interrupted (peak RSS ${rss:-?} MB)"
        elif [ $rc -eq 0 ]; then
            result="ok (peak RSS ${rss:-?} MB)"
        else
            what=$(tail -c +$((off + 1)) "$log" | grep -oE 'panicked at [^ ]+|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer): [a-z-]+' | head -1)
            unit=$(tail -c +$((off + 1)) "$log" | grep -oE 'Test unit written to [^ ]+' | tail -1 | awk '{print $5}')
            result="FAILED (${what:-exit $rc}) ${unit:-see $log}"
        fi
        echo "$t|${ran:-0}|$cpu_s|$wall_s|$result|$(date -u +%FT%TZ)" >>"$results"
        echo "soak: $t: slice: ${ran:-0} executions, ${cpu_s} CPU s, ${wall_s} s: $result" >&2
        case $result in FAILED*) return 1 ;; esac
    done
    return 1
}

if [ $status = 1 ]; then
    echo "$results:"
    summary
    exit 0
fi
mkdir -p "$sdir"
touch "$results"

if [ "${CAIRN_SOAK_NO_BUILD:-}" != 1 ]; then
    nice -n 19 cargo +nightly fuzz build --debug-assertions --target-dir "$tdir" >&2
fi
bin=$tdir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

pids=()
stopping=0
on_signal() {
    stopping=1
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap on_signal INT TERM

parallel=${CAIRN_FUZZ_JOBS:-1}
failed=0
for t in "${targets[@]}"; do
    while [ $stopping = 0 ] && [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
        wait -n || failed=1
    done
    [ $stopping = 0 ] || break
    soak_one "$t" &
    pids+=($!)
done
# A trapped signal interrupts `wait`: wait until every soak has recorded.
while [ -n "$(jobs -rp)" ]; do
    wait -n || failed=1
done
[ $stopping = 0 ] || failed=1

summary
exit $failed
