//! The main job end to end: backup, list, verify, restore, with both engines,
//! encrypted and not, and the promises around them.

use cairn_e2e::*;
use rusqlite::Connection;
use std::process::Command;

#[test]
fn backup_list_verify_restore_round_trip() {
    let s = Scratch::new();
    s.make_db("app.db", 20_000);
    let r = s.run(&["backup", "app.db", "--json"]).ok();
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let object = report["object"].as_str().unwrap().to_string();
    assert!(
        object.starts_with("snapshots/") && object.ends_with(".db.gz"),
        "{object}"
    );
    assert_eq!(s.latest_object("backups"), object);
    assert!(report["stored_size"].as_u64().unwrap() < report["plain_size"].as_u64().unwrap() / 2);

    let list = s.run(&["list", "--json"]).ok();
    let l: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(l["backups"].as_array().unwrap().len(), 1);
    assert_eq!(l["latest"], report["id"]);
    let table = s.run(&["list"]).ok();
    assert!(
        table.stdout.contains("(latest)") && table.stdout.contains("app.db"),
        "{}",
        table.stdout
    );

    let v = s.run(&["verify"]).ok();
    assert!(v.stdout.starts_with("ok "), "{}", v.stdout);

    for engine in ["native", "wasm"] {
        let out = format!("restored-{engine}.db");
        s.run(&["restore", "backups", "-o", &out, "--engine", engine])
            .ok();
        assert_eq!(count_rows(&s.path(&out)), 20_000);
        assert!(integrity_ok(&s.path(&out)));
    }
    assert_eq!(s.read("restored-native.db"), s.read("restored-wasm.db"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.path("restored-native.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn an_unencrypted_backup_is_a_gzip_file() {
    let s = Scratch::new();
    s.make_db("app.db", 5_000);
    s.run(&["backup", "app.db", "-q"]).ok();
    s.run(&["restore", "backups", "-o", "restored.db"]).ok();
    let object = s.latest_object("backups");
    let out = Command::new("gunzip")
        .arg("-c")
        .arg(s.path(&format!("backups/{object}")))
        .output()
        .expect("gunzip is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, s.read("restored.db"));
    std::fs::write(s.path("gunzipped.db"), &out.stdout).unwrap();
    assert_eq!(count_rows(&s.path("gunzipped.db")), 5_000);
}

#[test]
fn encrypted_backups_with_key_file_key_env_and_passphrase() {
    let s = Scratch::new();
    s.make_db("app.db", 3_000);
    s.run(&["keygen", "-o", "k.key"]).ok();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.path("k.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    s.run(&["keygen", "-o", "k.key"])
        .fails_with(&["k.key", "must not exist"]);

    let r = s
        .run(&["backup", "app.db", "--key-file", "k.key", "--json"])
        .ok();
    let object = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["object"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(object.ends_with(".db.cairn"));
    let archive = s.read(&format!("backups/{object}"));
    assert_eq!(
        cairn_core::sniff(&archive),
        cairn_core::Kind::CairnEncrypted
    );
    assert!(
        !archive.windows(12).any(|w| w == b"ordered by c"),
        "plaintext leaked into the archive"
    );

    s.run(&["restore", "backups", "-o", "a.db", "--key-file", "k.key"])
        .ok();
    s.run(&["verify", "--key-file", "k.key"]).ok();
    let key_text = String::from_utf8(s.read("k.key")).unwrap();
    let r = s
        .cmd(&[
            "restore",
            "backups",
            "-o",
            "b.db",
            "--key-env",
            "MY_KEY",
            "--engine",
            "wasm",
        ])
        .env("MY_KEY", key_text.trim())
        .output()
        .unwrap();
    Run::from(r).ok();
    assert_eq!(s.read("a.db"), s.read("b.db"));

    let pw = |args: &[&str]| {
        Run::from(
            s.cmd(args)
                .env("PW", "correct horse battery staple")
                .output()
                .unwrap(),
        )
    };
    pw(&["backup", "app.db", "--passphrase-env", "PW", "-q"]).ok();
    pw(&["restore", "backups", "-o", "c.db", "--passphrase-env", "PW"]).ok();
    pw(&["verify", "--passphrase-env", "PW"]).ok();
    assert_eq!(count_rows(&s.path("c.db")), 3_000);
    let c = s.catalog("backups");
    assert_eq!(c["entries"][1]["encryption"], "aes-256-gcm (passphrase)");
    // The catalog is plaintext: it must not hold a digest of an encrypted database.
    assert!(
        c["entries"][0].get("plain_sha256").is_none()
            && c["entries"][1].get("plain_sha256").is_none()
    );
    assert!(c["entries"][0]["key_id"].is_string());
}

#[test]
fn restore_never_overwrites_without_force() {
    let s = Scratch::new();
    s.make_db("app.db", 1_000);
    s.run(&["backup", "app.db", "-q"]).ok();
    std::fs::write(s.path("live.db"), b"precious").unwrap();
    s.run(&["restore", "backups", "-o", "live.db"])
        .fails_with(&["live.db", "already exists", "--force"]);
    assert_eq!(s.read("live.db"), b"precious");

    let r = s
        .run(&["restore", "backups", "-o", "live.db", "--if-db-not-exists"])
        .ok();
    assert!(r.stderr.contains("nothing to do"), "{}", r.stderr);
    assert_eq!(s.read("live.db"), b"precious");

    std::fs::write(s.path("live.db-wal"), b"stale wal").unwrap();
    s.run(&["restore", "backups", "-o", "live.db", "--force"])
        .ok();
    assert!(
        !s.path("live.db-wal").exists(),
        "a stale WAL must not survive a forced restore"
    );
    assert_eq!(count_rows(&s.path("live.db")), 1_000);

    s.run(&[
        "restore",
        "backups",
        "-o",
        "new/dir/app.db",
        "--if-db-not-exists",
    ])
    .ok();
    assert_eq!(count_rows(&s.path("new/dir/app.db")), 1_000);
    assert!(
        s.files("new/dir").iter().all(|f| f == "app.db"),
        "{:?}",
        s.files("new/dir")
    );
}

#[test]
fn committed_content_still_in_the_wal_is_included() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 1_000);
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    insert_rows(&c, 1_000, 500);
    let wal = std::fs::metadata(s.path("app.db-wal")).unwrap().len();
    assert!(wal > 0, "the new rows should be in the WAL only");
    s.run(&["backup", "app.db", "-q"]).ok();
    s.run(&["restore", "backups", "-o", "r.db"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 1_500);
    drop(c);
}

#[test]
fn backup_is_consistent_while_another_writer_keeps_writing() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 100_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut next = 100_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                insert_rows(&c, next, 200);
                next += 200;
            }
            next
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    s.run(&["backup", "app.db", "-q", "--level", "1"]).ok();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    s.run(&["restore", "backups", "-o", "r.db"]).ok();
    let n = count_rows(&s.path("r.db"));
    assert!(integrity_ok(&s.path("r.db")));
    assert!(
        (100_000..=written as i64).contains(&n) && n % 200 == 0,
        "a snapshot holds whole transactions: {n}"
    );
}

#[test]
fn help_reads_like_docs() {
    let s = Scratch::new();
    let r = s.run(&["--help"]).ok();
    for word in ["backup", "restore", "list", "verify", "keygen", "Examples:"] {
        assert!(r.stdout.contains(word), "{word}: {}", r.stdout);
    }
    let r = s.run(&["backup", "--help"]).ok();
    assert!(
        r.stdout.contains("--key-file") && r.stdout.contains("online backup API"),
        "{}",
        r.stdout
    );
}

/// Reads a snapshot's bytes into `out` and returns the row count there.
fn materialize(snap: &cairn::snapshot::Snapshot, out: &std::path::Path) -> i64 {
    let mut f = std::fs::File::create(out).unwrap();
    let n = std::io::copy(&mut snap.reader().unwrap(), &mut f).unwrap();
    assert_eq!(n, snap.size);
    drop(f);
    assert!(integrity_ok(out), "the snapshot is a sound database");
    count_rows(out)
}

#[test]
fn a_pinned_snapshot_stays_the_snapshot_while_writers_commit_and_checkpoint() {
    // Both ways a reader can pin: with the WAL empty (SQLite then reads the
    // file only), and with committed frames still in the WAL.
    for frames_in_wal in [false, true] {
        let s = Scratch::new();
        let db = s.make_db("app.db", 2_000);
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
        let before = if frames_in_wal {
            insert_rows(&c, 2_000, 300);
            assert!(std::fs::metadata(s.path("app.db-wal")).unwrap().len() > 0);
            2_300
        } else {
            2_000
        };
        let snap = cairn::snapshot::take(&db, s.dir.path(), cairn::snapshot::DEFAULT_LOCK_TIMEOUT)
            .unwrap();
        assert_eq!(snap.method(), "pinned");
        // Writers carry on and try every kind of checkpoint meanwhile.
        for round in 0..5 {
            insert_rows(&c, 10_000 + round * 1_000, 500);
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .unwrap();
        }
        c.busy_timeout(std::time::Duration::from_millis(50))
            .unwrap();
        let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        assert_eq!(count_rows(&db), before + 2_500);
        assert_eq!(
            materialize(&snap, &s.path("snap.db")),
            before,
            "frames_in_wal={frames_in_wal}: the snapshot must not see later commits"
        );
        drop(snap);
        // Once it is gone, checkpoints complete again.
        let (busy, log, done): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log), (0, done));
    }
}

#[test]
fn a_rollback_journal_database_is_copied_with_the_backup_api() {
    let s = Scratch::new();
    let db = s.path("app.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=DELETE;
         CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, note TEXT);",
    )
    .unwrap();
    insert_rows(&c, 0, 1_000);
    drop(c);
    let r = s.run(&["backup", "app.db", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["snapshot"], "copy", "{v}");
    let wal = s.make_db("wal.db", 1_000);
    let r = s
        .run(&["backup", wal.to_str().unwrap(), "w", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["snapshot"], "pinned", "{v}");
    s.run(&["restore", "backups", "-o", "r.db"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 1_000);
    assert!(
        s.files(".").iter().all(|f| !f.contains("cairn-snapshot")),
        "no temp copy left behind"
    );
}

/// `verify` records a passed integrity_check in the log; a restore of those
/// very bytes skips the check (`--check full` runs it anyway), and a backup
/// nobody verified is checked by its restore.
#[test]
fn a_verified_backup_restores_without_checking_twice() {
    let s = Scratch::new();
    s.make_db("app.db", 5_000);
    s.run(&["backup", "app.db", "-q"]).ok();
    let logs = || std::fs::read_dir(s.path("backups/log")).unwrap().count();
    let restore = |out: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["restore", "backups", "-o", out, "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&s.run(&args).ok().stdout).unwrap()
    };
    let r = restore("a.db", &[]);
    assert_eq!(r["integrity_check"], "ran", "{r}");

    // --no-record writes nothing; a plain verify writes one commit, once.
    let before = logs();
    s.run(&["verify", "--no-record"]).ok();
    assert_eq!(logs(), before);
    s.run(&["verify"]).ok();
    assert_eq!(logs(), before + 1);
    s.run(&["verify"]).ok();
    assert_eq!(
        logs(),
        before + 1,
        "an existing record is not written again"
    );

    let r = restore("b.db", &[]);
    assert_eq!(r["integrity_check"], "recorded", "{r}");
    assert!(r["integrity_checked_at"].as_str().is_some(), "{r}");
    assert!(integrity_ok(&s.path("b.db")));
    assert_eq!(s.read("a.db"), s.read("b.db"));
    let r = restore("c.db", &["--check", "full"]);
    assert_eq!(r["integrity_check"], "ran", "{r}");
    let text = s.run(&["restore", "backups", "-o", "d.db"]).ok();
    assert!(
        text.stderr.contains("integrity_check passed at") && text.stderr.contains("(cairn verify)"),
        "{}",
        text.stderr
    );

    // A newer backup is not covered by the older one's record.
    s.run(&["backup", "app.db", "-q"]).ok();
    let r = restore("e.db", &[]);
    assert_eq!(r["integrity_check"], "ran", "{r}");
}
