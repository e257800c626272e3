#!/usr/bin/env bash
# Every check, from a fresh clone: set-up, format, lints, the build of all
# crates (native and wasm32-wasip2), and every test. One target directory
# outside the clone is shared by all steps (CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup.sh
started=$SECONDS

say "cargo fmt --check"
cargo fmt --all --check

say "cargo clippy (native and wasm32-wasip2)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo clippy --release --locked --target wasm32-wasip2 -p cairn-core -p cairn-wasi -- -D warnings
cargo clippy --release --locked --target wasm32-wasip2 -p cairn-wasi --features host-crypto -- -D warnings

say "building cairn and cairn-wasi"
# The e2e tests run the cairn binary (and the example app of `embed::`),
# which `cargo test` alone does not rebuild.
cargo build --release --locked --workspace --bins --examples
cargo build --release --locked --target wasm32-wasip2 -p cairn-wasi

say "cargo test"
cargo test --release --locked --workspace --no-fail-fast 2>&1 | tee "$CARGO_TARGET_DIR/test.log"

say "benchmark smoke run (bench/run.sh --smoke: 20 MiB, every peer, the table must be well-formed)"
CAIRN_BIN="$CARGO_TARGET_DIR/release/cairn" bash bench/run.sh --smoke  # the binary built above: run.sh would rebuild it with other features
say "per-size bench smoke run (bench/sizes.py at 20 MiB; the real run is 1G,8G)"
python3 bench/sizes.py --cairn "$CARGO_TARGET_DIR/release/cairn" --sizes 20M --json "$CARGO_TARGET_DIR/sizes-smoke.json"
say "fuzzing: every target for ${CAIRN_FUZZ_SECONDS:-30}s, two at a time (fuzz/run.sh; long runs: fuzz/run.sh 3600)"
CAIRN_FUZZ_JOBS=2 bash fuzz/run.sh "${CAIRN_FUZZ_SECONDS:-30}"
summary=$(grep -E '^test result:' "$CARGO_TARGET_DIR/test.log" |
    awk '{p += $4; f += $6} END {printf "%d passed, %d failed", p, f}')
say "done in $((SECONDS - started))s"
echo "$summary"
