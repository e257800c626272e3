//! `cairn replicate --dir DIR --pattern GLOB DEST`: every WAL-mode database
//! of a directory into one destination, each with its own lease and
//! generations; new databases picked up, removed ones stopped cleanly.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{Scratch, count_rows, insert_rows, integrity_ok};

fn generation_dbs(s: &Scratch, dest: &str) -> Vec<String> {
    let out = s
        .cmd(&["list", dest, "--generations", "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g["db_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "waited 60 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The newest lease record of `db` in a local destination, if any.
fn lease(dest: &Path, db: &str) -> Option<serde_json::Value> {
    let dir = dest.join("replication").join(db).join("lease");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    serde_json::from_slice(&std::fs::read(names.last()?).ok()?).ok()
}

fn released(dest: &Path, db: &str) -> bool {
    lease(dest, db).is_some_and(|l| {
        l["expires_at_ms"].as_i64().unwrap() <= l["written_at_ms"].as_i64().unwrap()
    })
}

fn sigterm(mut child: Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().unwrap()
}

#[test]
fn a_directory_of_databases_is_replicated_as_it_changes() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("dbs")).unwrap();
    let a = s.make_db("dbs/a.db", 20);
    let b = s.make_db("dbs/b.db", 30);
    // Matches the pattern but is not in WAL mode: one warning, no replicator.
    let r = rusqlite::Connection::open(s.path("dbs/rollback.db")).unwrap();
    r.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(r);
    // Does not match: ignored.
    s.make_db("dbs/other.sqlite", 3);
    let log = std::fs::File::create(s.path("replicate.log")).unwrap();
    let child = s
        .cmd(&[
            "replicate",
            "--dir",
            "dbs",
            "--pattern",
            "*.db",
            "replica",
            "--interval",
            "20ms",
            "--scan-interval",
            "200ms",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let dest = s.path("replica");
    let has = |db: &str| generation_dbs(&s, "replica").iter().any(|d| d == db);
    wait_until("generations of a.db and b.db", || {
        has("a.db") && has("b.db")
    });
    assert!(!has("other.sqlite") && !has("rollback.db"));
    for p in [&a, &b] {
        let c = rusqlite::Connection::open(p).unwrap();
        insert_rows(&c, 1000, 15);
    }
    // A third database appears (first as an empty file, then a database).
    std::fs::write(s.path("dbs/c.db"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(s.path("dbs/c.db")).unwrap();
    let c_db = s.make_db("dbs/c.db", 7);
    wait_until("a generation of c.db", || has("c.db"));
    let c = rusqlite::Connection::open(&c_db).unwrap();
    insert_rows(&c, 500, 4);
    drop(c);
    // One is removed: its replicator stops and releases its lease.
    std::thread::sleep(Duration::from_millis(300));
    let b_rows = count_rows(&b);
    for f in ["b.db", "b.db-wal", "b.db-shm"] {
        let _ = std::fs::remove_file(s.path(&format!("dbs/{f}")));
    }
    wait_until("b.db's lease released", || released(&dest, "b.db"));
    assert!(!released(&dest, "a.db") && !released(&dest, "c.db"));
    // The others go on.
    let c = rusqlite::Connection::open(&a).unwrap();
    insert_rows(&c, 3000, 9);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let status = sigterm(child);
    let log = std::fs::read_to_string(s.path("replicate.log")).unwrap();
    assert!(status.success(), "{log}");
    for db in ["a.db", "c.db"] {
        assert!(released(&dest, db), "{db}: {log}");
    }
    // The rollback-mode database was named once, with the fix.
    assert_eq!(
        log.matches("rollback.db is not in WAL mode").count(),
        1,
        "{log}"
    );
    assert!(log.contains("journal_mode=WAL"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Each restores to its own newest state.
    for (db, rows) in [
        ("a.db", count_rows(&a)),
        ("b.db", b_rows),
        ("c.db", count_rows(&c_db)),
    ] {
        let out = format!("r-{db}");
        s.run(&["restore", "replica", "--db", db, "-o", &out]).ok();
        assert!(integrity_ok(&s.path(&out)), "{db}");
        assert_eq!(count_rows(&s.path(&out)), rows, "{db}");
    }
    assert_eq!(count_rows(&s.path("r-a.db")), 20 + 15 + 9);
    // Without --db, a destination shared by several says which to name.
    s.run(&["restore", "replica", "-o", "x.db"])
        .fails_with(&["several databases", "--db"]);
}

#[test]
fn directory_mode_errors_are_named() {
    let s = Scratch::new();
    s.run(&["replicate", "--dir", "nowhere", "replica"])
        .fails_with(&["nowhere", "not a directory"]);
    std::fs::create_dir(s.path("dbs")).unwrap();
    s.run(&[
        "replicate",
        "--dir",
        "dbs",
        "--pattern",
        "x/*.db",
        "replica",
    ])
    .fails_with(&["--pattern", "'/'"]);
    s.run(&["replicate", "--dir", "dbs", "--pattern", "[ab", "replica"])
        .fails_with(&["--pattern", "']'"]);
}
