#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the wasm target and the few Debian
# packages the tests and demo use. Sourced by demo.sh and test.sh.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '==> %s\n' "$*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 target (the core is also built as a WebAssembly component)"
    rustup target add wasm32-wasip2
fi

need_apt=()
command -v gunzip >/dev/null || need_apt+=(gzip)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} with apt-get"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
