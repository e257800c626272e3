#!/usr/bin/env bash
# The main job, from a fresh clone: set up, build cairn, make a sample SQLite
# database, back it up to ./backups, list, verify in the sandbox, restore.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup.sh

say "building cairn (release; the first build takes a few minutes)"
cargo build --release --locked -p cairn
cairn="$CARGO_TARGET_DIR/release/cairn"

mkdir -p demo
if [ ! -f demo/app.db ]; then
    say "creating demo/app.db (a sample database of 100,000 orders)"
    sqlite3 demo/app.db >/dev/null <<'SQL'
PRAGMA journal_mode=WAL;
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, item TEXT, qty INTEGER, price REAL, note TEXT);
CREATE INDEX orders_customer ON orders(customer);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO orders(customer, item, qty, price, note)
SELECT 'customer-' || (i * 7919 % 5000), 'item-' || (i % 250), 1 + i % 9, (i % 10000) / 100.0,
       'ordered on day ' || (i % 365) || ' via ' || CASE i % 3 WHEN 0 THEN 'web' WHEN 1 THEN 'app' ELSE 'phone' END
FROM n;
SQL
fi

say "cairn backup demo/app.db        (to ./backups)"
"$cairn" backup demo/app.db
say "cairn list"
"$cairn" list
say "cairn verify                    (decoded inside the WebAssembly sandbox)"
"$cairn" verify
say "cairn restore backups -o demo/restored.db --force"
"$cairn" restore backups -o demo/restored.db --force
orig=$(sqlite3 demo/app.db 'SELECT count(*), sum(qty), total(price) FROM orders')
back=$(sqlite3 demo/restored.db 'SELECT count(*), sum(qty), total(price) FROM orders')
[ "$orig" = "$back" ] || { echo "restored data differs: $orig vs $back" >&2; exit 1; }
say "restored demo/restored.db matches demo/app.db ($back)"
