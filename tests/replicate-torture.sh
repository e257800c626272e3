#!/usr/bin/env bash
# The long replication torture (issue 13 §5): a writer of random
# transactions, `cairn replicate` SIGKILLed and restarted at random moments,
# checkpoints by the application, faults injected in front of the S3 server;
# then restores at many moments are checked against the writer's log and the
# newest one against the live database, page for page.
#
#   tests/replicate-torture.sh [SECONDS] [ITERATIONS]
#
# SECONDS per iteration (default 300; CAIRN_TORTURE_SECS), ITERATIONS with a
# new seed each (default 1), CAIRN_TORTURE_POINTS moments checked per
# iteration (default 40), CAIRN_TORTURE_SEED to replay one. The test command
# runs the same test for 25 s.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${CAIRN_TORTURE_SECS:-300}}"
iters="${2:-1}"
if [ -z "${CAIRN_SKIP_SETUP:-}" ]; then
    source .ci/setup.sh
    cargo build --release --locked --workspace --bins --examples  # as .ci/test.sh: one build serves both
    cargo test --release --locked -p cairn-e2e --test e2e --no-run
fi
target="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
bin="$(ls -t "$target"/release/deps/e2e-* | grep -v '\.d$' | head -1)"
cd tests
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=0
for i in $(seq 1 "$iters"); do
    echo "== iteration $i of $iters: ${secs}s"
    rc=0
    CI=true CAIRN_TORTURE_SECS="$secs" CAIRN_TORTURE_POINTS="${CAIRN_TORTURE_POINTS:-40}" \
        "$bin" replicate_torture:: --nocapture >"$log" 2>&1 || rc=$?
    grep -E '^torture:|test result|panicked|wrong' "$log" || true
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        tail -50 "$log"
    fi
done
echo "== $iters iterations, $failed failed"
[ "$failed" -eq 0 ]
