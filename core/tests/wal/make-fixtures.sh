#!/bin/sh
# Regenerates the real-SQLite WAL fixtures (sqlite3 CLI, any 3.x): base.db is
# the database before the WAL's transactions, app.db-wal the WAL with them
# (copied while the connection is open, so no checkpoint has run), final.db
# the database after a checkpoint. core/tests/wal.rs replays the WAL on
# base.db and compares with final.db page for page.
set -eu
cd "$(dirname "$0")"
rm -f base.db app.db app.db-wal app.db-shm final.db wal.bin
sqlite3 app.db <<'SQL'
PRAGMA page_size=1024;
PRAGMA journal_mode=WAL;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO t(v) VALUES ('seed');
PRAGMA wal_checkpoint(TRUNCATE);
SQL
cp app.db base.db
sqlite3 app.db <<'SQL'
PRAGMA wal_autocheckpoint=0;
INSERT INTO t(v) VALUES ('one');
BEGIN; INSERT INTO t(v) SELECT printf('%0200d', value) FROM generate_series(1, 40); COMMIT;
UPDATE t SET v = 'two' WHERE id = 1;
CREATE TABLE u(x BLOB);
INSERT INTO u VALUES (randomblob(3000));
DELETE FROM t WHERE id > 20;
BEGIN; INSERT INTO t(v) VALUES ('uncommitted-not-in-wal'); ROLLBACK;
.shell cp app.db-wal wal.bin
SQL
sqlite3 app.db 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
mv app.db final.db
rm -f app.db-wal app.db-shm
