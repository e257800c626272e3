#!/usr/bin/env bash
# Installs the npm packages pinned in tests/js/package-lock.json (jco and the
# WASI shim it targets) into $CAIRN_NODE_DIR, outside the clone, for
# tests/tests/e2e/jco.rs. Run by setup.sh. Takes milliseconds when they are
# already installed from the same lock file; `npm ci --prefer-offline` uses
# npm's cache when it has them. Under CI=true a missing Node or a failed
# install is an error; elsewhere a warning (the jco test then says it skipped).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CAIRN_NODE_DIR:-$HOME/.cache/cairn-node}"
pkg="$root/tests/js/package.json"
lock="$root/tests/js/package-lock.json"

say() { printf '==> %s\n' "$*" >&2; }
problem() {
    if [ "${CI:-}" = true ]; then
        say "error: $*"
        exit 1
    fi
    say "warning: $*; tests/tests/e2e/jco.rs will skip"
    exit 0
}

want="$(cat "$pkg" "$lock" | sha256sum | cut -d' ' -f1)"
if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$want" ] &&
    [ -f "$dir/node_modules/@bytecodealliance/jco/package.json" ]; then
    exit 0
fi

command -v node >/dev/null && command -v npm >/dev/null ||
    problem "node and npm (Node 20 or newer) are needed to run the core component from JavaScript, and were not found"
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || problem "Node $(node --version) is too old: the jco test needs Node 20 or newer"

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
say "installing jco and @bytecodealliance/preview2-shim (tests/js/package-lock.json) into $dir"
cp "$pkg" "$lock" "$dir/"
rm -f "$dir/.installed"
(cd "$dir" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error) ||
    problem "npm ci in $dir failed"
echo "$want" >"$dir/.installed"
