//! An application writing to a SQLite database in WAL mode, for the
//! replication tests (issue 13 §5, the kill table's replicate rows): random
//! transactions (inserts, updates, deletes, blobs up to 1 MiB, schema
//! changes), VACUUM now and then, and checkpoints from its own connection
//! (PASSIVE, and sometimes TRUNCATE, which fails busy while a replicator
//! holds its read transaction). Every transaction also inserts its number
//! into `commits`, and the writer logs each commit: its number, when it
//! began and when COMMIT returned, and a fingerprint of the database's
//! content as of that commit. So a restored database can be checked to hold
//! exactly commits `1..=k`, and the content they made.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// xorshift64*: the writer's (and the tests') reproducible randomness.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// One committed transaction of the writer.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Its number: `commits` holds `1..=id` after it.
    pub id: u64,
    /// Before BEGIN (Unix ms): it was not committed before this.
    pub begin_ms: i64,
    /// After COMMIT returned: it was committed by then.
    pub end_ms: i64,
    /// [`fingerprint`] of the database right after it.
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub seed: u64,
    /// The largest blob written (bytes); blobs are rare.
    pub max_blob: usize,
    /// Pause between transactions: uniform in 0..=this…
    pub max_pause: Duration,
    /// …and now and then a long one (so that some moments are well clear
    /// of any commit: the point-in-time checks need such moments).
    pub long_pause: Duration,
    /// Run checkpoints (PASSIVE; one in five TRUNCATE) and VACUUM now and then.
    pub checkpoints: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            seed: 1,
            max_blob: 1 << 20,
            max_pause: Duration::from_millis(30),
            long_pause: Duration::from_millis(600),
            checkpoints: true,
        }
    }
}

/// What the writer counted besides its commits.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub vacuums: u64,
    pub passive: u64,
    pub truncate_ok: u64,
    pub truncate_busy: u64,
    pub schema_changes: u64,
    pub blobs: u64,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Commit>>>,
    tally: Arc<Mutex<Tally>>,
    thread: Option<JoinHandle<()>>,
}

/// A summary of the content the writer's checks compare: every table's
/// name and a digest of its rows (blobs by length and a few bytes).
pub fn fingerprint(c: &Connection) -> rusqlite::Result<String> {
    let items: String = c.query_row(
        "SELECT count(*) || ':' || coalesce(sum(n), 0) || ':' || coalesce(sum(length(v)), 0) || ':' || coalesce(max(id), 0) FROM items",
        [],
        |r| r.get(0),
    )?;
    let blobs: String = c.query_row(
        "SELECT count(*) || ':' || coalesce(sum(length(b)), 0) || ':' || coalesce(sum(unicode(substr(b, 1 + length(b) / 2, 1))), 0) FROM blobs",
        [],
        |r| r.get(0),
    )?;
    let schema: String = c.query_row(
        "SELECT coalesce(group_concat(name || '=' || sql, ';'), '') FROM (SELECT name, sql FROM sqlite_schema WHERE name LIKE 'x\\_%' ESCAPE '\\' ORDER BY name)",
        [],
        |r| r.get(0),
    )?;
    let commits: String = c.query_row(
        "SELECT count(*) || ':' || coalesce(max(id), 0) FROM commits",
        [],
        |r| r.get(0),
    )?;
    Ok(format!(
        "commits {commits} items {items} blobs {blobs} schema {schema}"
    ))
}

/// The number of the last commit in a database (`commits` holds exactly
/// `1..=k`), or an error saying how it does not.
pub fn last_commit(db: &Path) -> Result<u64, String> {
    let c = Connection::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    let (n, max): (i64, i64) = c
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM commits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| format!("{}: {e}", db.display()))?;
    if n != max {
        return Err(format!(
            "{}: commits holds {n} rows up to {max}: not a prefix",
            db.display()
        ));
    }
    Ok(max as u64)
}

/// Creates the database in WAL mode with the writer's tables.
pub fn create(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS commits(id INTEGER PRIMARY KEY, t INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
    )
    .unwrap();
}

impl Writer {
    /// Starts writing to `db` (made with [`create`]) on a thread.
    pub fn start(db: &Path, opts: WriterOptions) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let thread = {
            let (stop, log, tally) = (stop.clone(), log.clone(), tally.clone());
            let db = db.to_path_buf();
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || write_loop(&db, &opts, &stop, &log, &tally))
                .unwrap()
        };
        Writer {
            stop,
            log,
            tally,
            thread: Some(thread),
        }
    }

    /// The commits so far.
    pub fn commits(&self) -> Vec<Commit> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Stops after the transaction under way; every commit, and the tally.
    pub fn stop(mut self) -> (Vec<Commit>, Tally) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer panicked");
        }
        (self.commits(), self.tally.lock().unwrap().clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    db: &Path,
    o: &WriterOptions,
    stop: &AtomicBool,
    log: &Mutex<Vec<Commit>>,
    tally: &Mutex<Tally>,
) {
    let mut rng = Rng::new(o.seed);
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut id: u64 = c
        .query_row("SELECT coalesce(max(id), 0) FROM commits", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64;
    let mut next_item: i64 = c
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM items", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut tables = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let begin_ms = now_ms();
        let tx = c.unchecked_transaction().unwrap();
        for _ in 0..1 + rng.below(4) {
            match rng.below(20) {
                0..=7 => {
                    for _ in 0..1 + rng.below(20) {
                        let len = 10 + rng.below(900) as usize;
                        tx.execute(
                            "INSERT INTO items(id, v, n) VALUES (?1, ?2, ?3)",
                            params![next_item, "v".repeat(len), rng.below(1000) as i64],
                        )
                        .unwrap();
                        next_item += 1;
                    }
                }
                8..=11 => {
                    let m = 2 + rng.below(9) as i64;
                    tx.execute(
                        "UPDATE items SET n = n + 1, v = v || 'u' WHERE id % ?1 = ?2",
                        params![m, rng.below(m as u64) as i64],
                    )
                    .unwrap();
                }
                12..=14 => {
                    let m = 3 + rng.below(20) as i64;
                    tx.execute(
                        "DELETE FROM items WHERE id % ?1 = ?2",
                        params![m, rng.below(m as u64) as i64],
                    )
                    .unwrap();
                }
                15 => {
                    // Blobs are rare and mostly small; some up to max_blob.
                    let len = if rng.chance(4) {
                        rng.below(o.max_blob as u64 + 1)
                    } else {
                        rng.below(20_000)
                    };
                    tx.execute(
                        "INSERT INTO blobs(b) VALUES (randomblob(?1))",
                        params![len as i64],
                    )
                    .unwrap();
                    tally.lock().unwrap().blobs += 1;
                }
                16 => {
                    tx.execute("DELETE FROM blobs WHERE id IN (SELECT id FROM blobs ORDER BY random() LIMIT 1)", [])
                        .unwrap();
                }
                17 => {
                    tables += 1;
                    tx.execute_batch(&format!(
                        "CREATE TABLE x_{tables}(a INTEGER, b TEXT); INSERT INTO x_{tables} VALUES (1, 'one');"
                    ))
                    .unwrap();
                    tally.lock().unwrap().schema_changes += 1;
                }
                18 => {
                    let have: Vec<String> = {
                        let mut st = tx
                            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'x\\_%' ESCAPE '\\'")
                            .unwrap();
                        st.query_map([], |r| r.get(0))
                            .unwrap()
                            .map(|r| r.unwrap())
                            .collect()
                    };
                    if let Some(t) = have.get(rng.below(have.len().max(1) as u64) as usize) {
                        if rng.chance(2) {
                            tx.execute_batch(&format!("DROP TABLE {t}")).unwrap();
                        } else {
                            tables += 1;
                            tx.execute_batch(&format!("ALTER TABLE {t} ADD COLUMN c{tables} TEXT"))
                                .unwrap();
                        }
                        tally.lock().unwrap().schema_changes += 1;
                    }
                }
                _ => {
                    tx.execute("UPDATE items SET v = substr(v, 1, 20) WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 5)", [])
                        .unwrap();
                }
            }
        }
        tx.execute(
            "INSERT INTO commits(id, t) VALUES (?1, ?2)",
            params![id as i64, begin_ms],
        )
        .unwrap();
        let fingerprint = fingerprint(&tx).unwrap();
        tx.commit().unwrap();
        log.lock().unwrap().push(Commit {
            id,
            begin_ms,
            end_ms: now_ms(),
            fingerprint,
        });
        if o.checkpoints {
            if rng.chance(60) {
                c.execute_batch("VACUUM").unwrap();
                tally.lock().unwrap().vacuums += 1;
            }
            if rng.chance(10) {
                let truncate = rng.chance(5);
                // A short wait: TRUNCATE waits for the replicator's reader,
                // which never lets go; the application carries on.
                c.busy_timeout(Duration::from_millis(50)).unwrap();
                let busy: i64 = c
                    .query_row(
                        if truncate {
                            "PRAGMA wal_checkpoint(TRUNCATE)"
                        } else {
                            "PRAGMA wal_checkpoint(PASSIVE)"
                        },
                        [],
                        |r| r.get(0),
                    )
                    .unwrap_or(1);
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut t = tally.lock().unwrap();
                match (truncate, busy) {
                    (false, _) => t.passive += 1,
                    (true, 0) => t.truncate_ok += 1,
                    (true, _) => t.truncate_busy += 1,
                }
            }
        }
        let pause = if rng.chance(8) {
            o.long_pause
        } else {
            Duration::from_millis(rng.below(o.max_pause.as_millis() as u64 + 1))
        };
        std::thread::sleep(pause);
    }
}
