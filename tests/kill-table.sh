#!/usr/bin/env bash
# The long kill table (issue 15 §2): 100 SIGKILLs at random moments per
# operation (CAIRN_KILL_RUNS to change), against a local directory and a
# local S3 server; prints the table that docs/RELIABILITY.md records.
# The test command runs the same test with 4 runs per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup.sh
cargo build --release --locked --workspace --bins --examples  # as .ci/test.sh: one build serves both
CAIRN_KILL_RUNS="${CAIRN_KILL_RUNS:-100}" cargo test --release --locked -p cairn-e2e --test e2e \
    kill:: -- --nocapture 2>&1 | grep -E '^\| |CAIRN_KILL_SEED|test result|panicked|broke'
