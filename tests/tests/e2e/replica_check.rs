//! The replicator checks each generation's snapshot in the background and
//! records the pass (docs/FORMAT.md §13.4); a restore from the replica then
//! skips the whole-database integrity_check (`"integrity_check": "recorded"`)
//! unless `--check full` asks for it, and both restore the same database.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_e2e::{Scratch, count_rows, insert_rows};

fn restore_json(s: &Scratch, out: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["restore", "r", "-o", out, "--force", "--json"];
    args.extend_from_slice(extra);
    let r = s.run(&args).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn a_replica_restore_uses_the_recorded_check_of_its_snapshot() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 300);
    let mut rep = s
        .cmd(&["replicate", "app.db", "r", "--interval", "20ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    // Until the generation exists and its snapshot's pass is in the log.
    let mut n = 300;
    let got = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the replicator never recorded its snapshot's check"
        );
        insert_rows(&c, n, 3);
        n += 3;
        std::thread::sleep(Duration::from_millis(200));
        let list = s.run(&["list", "r", "--generations", "--json"]);
        if !list.stdout.contains("first_txid") {
            continue;
        }
        let v = restore_json(&s, "auto.db", &[]);
        if v["integrity_check"] == "recorded" {
            break v;
        }
        assert_eq!(v["integrity_check"], "ran", "{v}");
    };
    assert!(got["segments"].as_u64().unwrap() >= 1, "{got}");
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(rep.id() as libc::pid_t, libc::SIGTERM) };
    assert!(rep.wait().unwrap().success());

    let auto = restore_json(&s, "auto.db", &[]);
    assert_eq!(auto["integrity_check"], "recorded", "{auto}");
    let full = restore_json(&s, "full.db", &["--check", "full"]);
    assert_eq!(full["integrity_check"], "ran", "{full}");
    assert_eq!(s.read("auto.db"), s.read("full.db"));
    assert_eq!(count_rows(&s.path("auto.db")), count_rows(&db));
}

/// When the background check of a generation's snapshot fails, the
/// replicator says so (and keeps replicating), and records no pass: a
/// restore then runs `integrity_check` itself and refuses the result.
/// The database is damaged in a way the snapshot copies faithfully and only
/// `integrity_check` sees: an index whose definition no longer matches its
/// entries (quick_check passes).
#[test]
fn a_failed_snapshot_check_is_reported_and_not_recorded() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 0);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE n(a INTEGER); CREATE INDEX n_a ON n(a);
             WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < 50)
             INSERT INTO n SELECT x FROM k;
             PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = 'CREATE INDEX n_a ON n(a + 1)' WHERE name = 'n_a';",
        )
        .unwrap();
    }
    let log = s.path("replicate.log");
    let mut rep = s
        .cmd(&["replicate", "app.db", "r", "--interval", "20ms"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("the check of snapshot")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no warning about the snapshot's check: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It keeps replicating.
    let c = rusqlite::Connection::open(&db).unwrap();
    insert_rows(&c, 0, 5);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(rep.id() as libc::pid_t, libc::SIGTERM) };
    assert!(rep.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("the check of snapshot"))
        .unwrap();
    assert!(
        line.starts_with("cairn replicate: the check of snapshot ")
            && line.contains(" failed: ")
            && line.contains("integrity_check"),
        "{line}"
    );
    // No pass recorded: the restore checks, and refuses the damage.
    let r = s.run(&["restore", "r", "-o", "out.db", "--json"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("integrity_check"), "{}", r.stderr);
    assert!(!s.path("out.db").exists());
}
