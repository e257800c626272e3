//! `cairn replicate` and restores from a replica (docs/FORMAT.md §13),
//! with the real binary: into a local directory and into the S3 server.
//! The replicator runs as a child process beside a writer in the test;
//! restores are compared with the live database page for page.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_e2e::servers::S3Server;
use cairn_e2e::{Run, Scratch, count_rows, insert_rows};
use rusqlite::Connection;

struct Replicator {
    child: Option<Child>,
}

impl Replicator {
    fn start(s: &Scratch, db: &str, dest: &str, extra: &[&str], env: &[(String, String)]) -> Self {
        let mut args = vec!["replicate", db, dest, "--interval", "20ms"];
        args.extend_from_slice(extra);
        let child = s
            .cmd(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairn replicate");
        Replicator { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> Run {
        let child = self.child.take().expect("running");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().expect("wait for cairn replicate");
        out.into()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    cairn_core::time::rfc3339(ms)
}

/// `cairn list DEST --generations --json`.
fn generations(s: &Scratch, dest: &str, env: &[(String, String)]) -> Vec<serde_json::Value> {
    let out = s
        .cmd(&["list", dest, "--generations", "--json"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn wait_for_generations(s: &Scratch, dest: &str, n: usize, env: &[(String, String)]) {
    let t0 = Instant::now();
    while generations(s, dest, env).len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no generation {n} appeared in {dest}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The live database checkpointed into its file, as bytes.
fn checkpointed(db: &Path) -> Vec<u8> {
    let c = Connection::open(db).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    std::fs::read(db).unwrap()
}

fn restore(s: &Scratch, args: &[&str], env: &[(String, String)]) -> Run {
    s.cmd(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap()
        .into()
}

/// Writes while replicating, then restores the newest state, a point in
/// time and a transaction id.
fn replicate_and_restore(s: &Scratch, dest: &str, env: &[(String, String)]) {
    let db = s.make_db("app.db", 200);
    let rep = Replicator::start(s, "app.db", dest, &[], env);
    wait_for_generations(s, dest, 1, env);
    let c = Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    for i in 0..20 {
        insert_rows(&c, 1000 + i * 10, 10);
    }
    let rows_at_t1 = count_rows(&db);
    // Commits older than a few intervals are shipped by then; the margin is
    // wide because CI runs many tests at once on 2 cores (400 ms was not).
    std::thread::sleep(Duration::from_millis(2000));
    let t1 = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..20 {
        insert_rows(&c, 5000 + i * 10, 10);
    }
    c.execute("UPDATE items SET note = 'changed' WHERE id % 3 = 0", [])
        .unwrap();
    c.execute("DELETE FROM items WHERE id % 7 = 0", []).unwrap();
    c.execute_batch("CREATE TABLE blobs(b BLOB); INSERT INTO blobs VALUES (randomblob(300000));")
        .unwrap();
    drop(c);
    let live_rows = count_rows(&db);
    let r = rep.stop().ok();
    assert!(r.stderr.contains("stopped"), "{}", r.stderr);

    // Newest: the live database, page for page.
    restore(s, &["restore", dest, "-o", "newest.db"], env).ok();
    assert_eq!(count_rows(&s.path("newest.db")), live_rows);
    assert!(
        std::fs::read(s.path("newest.db")).unwrap() == checkpointed(&db),
        "the newest restore differs from the live database"
    );

    // At t1: exactly the commits before it.
    let r = restore(
        s,
        &[
            "restore",
            dest,
            "-o",
            "t1.db",
            "--timestamp",
            &rfc3339(t1),
            "--json",
        ],
        env,
    )
    .ok();
    assert_eq!(count_rows(&s.path("t1.db")), rows_at_t1, "{}", r.stdout);

    // A transaction id: the restore says which one it reached.
    let segs = restore(s, &["list", dest, "--segments", "--json"], env).ok();
    let segs: serde_json::Value = serde_json::from_str(&segs.stdout).unwrap();
    let segs = segs.as_array().unwrap();
    // Two writing bursts a pause apart ship as two segments at least (a
    // loaded machine batches each burst into one); the first one's last
    // transaction is a point before the newest.
    assert!(segs.len() >= 2, "{segs:?}");
    let mid = segs[0]["max_txid"].as_u64().unwrap();
    let r = restore(
        s,
        &[
            "restore",
            dest,
            "-o",
            "tx.db",
            "--txid",
            &mid.to_string(),
            "--json",
        ],
        env,
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["txid"].as_u64(), Some(mid), "{v}");

    // Restore-on-boot flags.
    let r = restore(
        s,
        &[
            "restore",
            dest,
            "-o",
            "newest.db",
            "--if-db-not-exists",
            "--if-replica-exists",
        ],
        env,
    )
    .ok();
    assert!(r.stderr.contains("nothing to do"), "{}", r.stderr);
    restore(s, &["restore", dest, "-o", "newest.db"], env).fails_with(&["already exists"]);
}

#[test]
fn local_replicate_restore_newest_and_point_in_time() {
    let s = Scratch::new();
    replicate_and_restore(&s, "replica", &[]);
    // A destination without a replica: --if-replica-exists does nothing.
    s.make_db("other.db", 5);
    s.run(&["backup", "other.db", "plain"]).ok();
    let r = s
        .run(&["restore", "plain", "-o", "x.db", "--if-replica-exists"])
        .ok();
    assert!(!s.path("x.db").exists(), "{}", r.stderr);
    s.run(&[
        "restore",
        "plain",
        "-o",
        "x.db",
        "--timestamp",
        "2026-01-01T00:00:00Z",
    ])
    .fails_with(&["holds no replication"]);
    s.run(&[
        "restore",
        "replica",
        "-o",
        "y.db",
        "--timestamp",
        "yesterday",
    ])
    .fails_with(&["--timestamp", "RFC 3339"]);
}

#[test]
fn s3_replicate_restore_and_fence() {
    let server = S3Server::s3s_fs();
    let s = Scratch::new();
    let env = server.env();
    let dest = server.url("repl");
    replicate_and_restore(&s, &dest, &env);
    // Fencing on S3 too.
    let first = Replicator::start(&s, "app.db", &dest, &[], &env);
    wait_for_generations(&s, &dest, 2, &env);
    let second = restore(&s, &["replicate", "app.db", &dest], &env);
    second.fails_with(&["held by", "pid", "lease"]);
    first.stop().ok();
}

#[test]
fn a_second_replicator_is_refused_until_the_first_stops() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    let first = Replicator::start(&s, "app.db", "replica", &[], &[]);
    wait_for_generations(&s, "replica", 1, &[]);
    let pid = first.pid().to_string();
    s.run(&["replicate", "app.db", "replica"]).fails_with(&[
        "held by",
        &format!("pid {pid}"),
        "replication/app.db/lease/",
    ]);
    first.stop().ok();
    // Released on a clean stop: the next one starts at once.
    let again = Replicator::start(&s, "app.db", "replica", &[], &[]);
    wait_for_generations(&s, "replica", 2, &[]);
    again.stop().ok();
}

#[test]
fn a_replica_with_a_key_fails_cleanly_with_the_wrong_key() {
    let s = Scratch::new();
    s.make_db("app.db", 50);
    s.run(&["keygen", "-o", "k1"]).ok();
    s.run(&["keygen", "-o", "k2"]).ok();
    let rep = Replicator::start(&s, "app.db", "replica", &["--key-file", "k1"], &[]);
    wait_for_generations(&s, "replica", 1, &[]);
    let c = Connection::open(s.path("app.db")).unwrap();
    insert_rows(&c, 100, 50);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    rep.stop().ok();
    s.run(&["restore", "replica", "-o", "bad.db", "--key-file", "k2"])
        .fails_with(&["wrong key"]);
    assert!(!s.path("bad.db").exists());
    s.run(&["restore", "replica", "-o", "good.db", "--key-file", "k1"])
        .ok();
    assert_eq!(count_rows(&s.path("good.db")), 100);
    // Segments are sealed: no page text in them.
    let files = s.files("replica/generations");
    assert!(files.iter().any(|f| f.ends_with(".seg.cairn")), "{files:?}");
}

#[test]
fn a_replaced_database_starts_a_new_generation() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 30);
    let rep = Replicator::start(&s, "app.db", "replica", &[], &[]);
    wait_for_generations(&s, "replica", 1, &[]);
    // Another program replaces the file (a restore, a copy from elsewhere).
    let c = Connection::open(&db).unwrap();
    let new = s.path("new.db");
    c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
        .unwrap();
    drop(c);
    let n = Connection::open(s.path("new.db")).unwrap();
    n.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    insert_rows(&n, 500, 7);
    n.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(n);
    for side in ["app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(s.path(side));
    }
    std::fs::rename(s.path("new.db"), &db).unwrap();
    wait_for_generations(&s, "replica", 2, &[]);
    let c = Connection::open(&db).unwrap();
    insert_rows(&c, 900, 5);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let r = rep.stop().ok();
    assert!(r.stderr.contains("was replaced"), "{}", r.stderr);
    let gens = generations(&s, "replica", &[]);
    assert_eq!(gens.last().unwrap()["reason"], "db-replaced", "{gens:?}");
    s.run(&["restore", "replica", "-o", "r.db"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 42);
}

/// An application that opens its database, writes and closes it again (a
/// script, a request handler) must not force a new generation: the
/// replicator's read transaction holds a SHARED lock, so the app's last
/// close cannot checkpoint the WAL away and delete it. cairn once read the
/// database header with a descriptor of its own; closing it dropped every
/// POSIX lock the process held on the file, SQLite's too, and from then on
/// each close of the app deleted the WAL under the replicator, which then
/// shipped a full snapshot as a new generation.
#[test]
fn an_app_closing_its_database_keeps_the_generation() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 30);
    let rep = Replicator::start(&s, "app.db", "replica", &[], &[]);
    wait_for_generations(&s, "replica", 1, &[]);
    for round in 0..3 {
        let c = Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        insert_rows(&c, 100 + round * 10, 10);
        drop(c);
        assert!(
            s.path("app.db-wal").exists(),
            "the app's close deleted the WAL under the replicator (round {round})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = rep.stop().ok();
    assert!(!r.stderr.contains("emptied or removed"), "{}", r.stderr);
    let gens = generations(&s, "replica", &[]);
    assert_eq!(gens.len(), 1, "{gens:?}");
    s.run(&["restore", "replica", "-o", "r.db"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 60);
}

#[test]
fn replicate_refuses_a_database_not_in_wal_mode() {
    let s = Scratch::new();
    let c = Connection::open(s.path("rollback.db")).unwrap();
    c.execute_batch("CREATE TABLE t(x);").unwrap();
    drop(c);
    s.run(&["replicate", "rollback.db", "replica"])
        .fails_with(&["not in WAL mode", "journal_mode=WAL"]);
    s.run(&["replicate", "missing.db", "replica"])
        .fails_with(&["missing.db"]);
}

/// `list DEST --segments --json`.
fn segment_list(s: &Scratch, dest: &str) -> Vec<serde_json::Value> {
    let r = s.run(&["list", dest, "--segments", "--json"]).ok();
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// A replica begun with deflate segments (`--codec gzip`, the default of
/// cairns before zstd became the replicas' default) and continued at the
/// default (zstd): both generations restore, and the old one also after
/// compaction merged its gzip segments into zstd ones (one generation
/// holding both).
#[test]
fn a_replica_mixing_gzip_and_zstd_segments_restores() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 100);
    let c = Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let write = |from: u32| {
        for i in 0..6 {
            insert_rows(&c, from + i * 10, 10);
            std::thread::sleep(Duration::from_millis(60));
        }
    };
    let rep = Replicator::start(
        &s,
        "app.db",
        "r",
        &["--codec", "gzip", "--compact", "off"],
        &[],
    );
    wait_for_generations(&s, "r", 1, &[]);
    write(1000);
    std::thread::sleep(Duration::from_millis(300));
    rep.stop().ok();
    let rows1 = count_rows(&db);
    let old = segment_list(&s, "r");
    assert!(old.len() >= 2, "{old:?}");
    assert!(
        old.iter()
            .all(|x| x["key"].as_str().unwrap().ends_with(".seg.gz")),
        "{old:?}"
    );
    let gen1 = old[0]["generation"].as_str().unwrap().to_string();
    let end1 = old
        .iter()
        .map(|x| x["max_txid"].as_u64().unwrap())
        .max()
        .unwrap();

    // The default now: zstd segments and snapshot; compaction merges the
    // first generation's gzip segments into a zstd one beside them.
    let rep = Replicator::start(
        &s,
        "app.db",
        "r",
        &["--compact", "1s", "--keep-compacted", "1h"],
        &[],
    );
    wait_for_generations(&s, "r", 2, &[]);
    write(5000);
    let t0 = Instant::now();
    while !segment_list(&s, "r").iter().any(|x| {
        x["generation"] == gen1.as_str()
            && x["level"] == 1
            && x["key"].as_str().unwrap().ends_with(".seg.zst")
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first generation was never compacted: {:?}",
            segment_list(&s, "r")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    rep.stop().ok();
    drop(c);
    let all = segment_list(&s, "r");
    let gen2: Vec<_> = all
        .iter()
        .filter(|x| x["generation"] != gen1.as_str())
        .collect();
    assert!(!gen2.is_empty(), "{all:?}");
    assert!(
        gen2.iter()
            .all(|x| x["key"].as_str().unwrap().ends_with(".seg.zst")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|x| x["generation"] == gen1.as_str()
                && x["key"].as_str().unwrap().ends_with(".seg.gz")),
        "{all:?}"
    );
    assert!(
        s.files("r/snapshots")
            .iter()
            .any(|f| f.ends_with(".db.zst"))
            && s.files("r/snapshots").iter().any(|f| f.ends_with(".db.gz")),
        "{:?}",
        s.files("r/snapshots")
    );

    // Newest (zstd): the live database, page for page.
    s.run(&["restore", "r", "-o", "newest.db"]).ok();
    assert!(
        std::fs::read(s.path("newest.db")).unwrap() == checkpointed(&db),
        "the newest restore differs from the live database"
    );
    // The end of the first generation: through its merged zstd segment.
    let end = end1.to_string();
    let r = s
        .run(&["restore", "r", "-o", "old.db", "--txid", &end, "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["txid"].as_u64(), Some(end1), "{v}");
    assert_eq!(count_rows(&s.path("old.db")), rows1);
    // A point inside it that only its level-0 gzip segments reach.
    let mid = old[0]["max_txid"].as_u64().unwrap();
    if mid < end1 {
        let r = s
            .run(&[
                "restore",
                "r",
                "-o",
                "mid.db",
                "--txid",
                &mid.to_string(),
                "--json",
            ])
            .ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["txid"].as_u64(), Some(mid), "{v}");
    }
}
