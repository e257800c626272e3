//! Faults and awkward input (issue 15 §3): a 0-byte database, a database
//! locked by another process, a full disk at the restore target and at a
//! local destination (a real 2 MiB tmpfs; where mounting is impossible, a
//! file-size limit on the child, which fails writes the same way).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_e2e::*;
use rusqlite::Connection;

#[test]
fn a_zero_byte_database_backs_up_and_restores() {
    let s = Scratch::new();
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    std::fs::File::create(s.path("empty.db")).unwrap();
    for (dest, key) in [("p", &[][..]), ("e", &["--key-file", "k.key"][..])] {
        let mut args = vec!["backup", "empty.db", dest, "--json", "-q"];
        args.extend_from_slice(key);
        s.run(&args).ok();
        let out = format!("{dest}.db");
        let mut args = vec!["restore", dest, "-o", &out, "-q"];
        args.extend_from_slice(key);
        s.run(&args).ok();
        // SQLite's backup API writes the empty database as one page: still
        // an empty, usable database.
        let c = Connection::open(s.path(&out)).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let mut args = vec!["verify", dest, "-q"];
        args.extend_from_slice(key);
        s.run(&args).ok();
    }
}

/// A connection in this process holding a lock that keeps readers out.
fn hold_lock(db: &Path, wal: bool) -> Connection {
    let c = Connection::open(db).unwrap();
    if wal {
        // WAL with locking_mode=EXCLUSIVE: the first write takes the lock
        // for good (no shared memory for readers).
        c.execute_batch(
            "PRAGMA locking_mode=EXCLUSIVE; BEGIN; INSERT INTO items(id, name) VALUES (1000000, 'x'); COMMIT;",
        )
        .unwrap();
    } else {
        // Rollback journal: a write transaction holding the EXCLUSIVE lock.
        c.execute_batch("PRAGMA journal_mode=DELETE; BEGIN EXCLUSIVE; INSERT INTO items(id, name) VALUES (1000000, 'x');")
            .unwrap();
    }
    c
}

#[test]
fn a_locked_database_is_announced_waited_for_then_refused() {
    for wal in [true, false] {
        let s = Scratch::new();
        s.make_db("app.db", 100);
        if !wal {
            Connection::open(s.path("app.db"))
                .unwrap()
                .execute_batch("PRAGMA journal_mode=DELETE;")
                .unwrap();
        }
        let lock = hold_lock(&s.path("app.db"), wal);
        let t = Instant::now();
        let r = s.run(&["backup", "app.db", "d", "--lock-timeout", "1500ms"]);
        let took = t.elapsed();
        assert_ne!(r.code, 0, "wal {wal}: {}", r.stderr);
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(20),
            "wal {wal}: took {took:?}"
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert!(
            lines[0].starts_with("waiting for the lock on ") && lines[0].contains("app.db"),
            "wal {wal}: {}",
            r.stderr
        );
        let last = lines.last().unwrap();
        for n in [
            "error: ",
            "app.db",
            "locked by another process",
            "--lock-timeout",
        ] {
            assert!(last.contains(n), "wal {wal}: {n:?} in {}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"));
        assert!(s.files("d").is_empty(), "wal {wal}: {:?}", s.files("d"));

        // Released while cairn waits: the backup goes on and succeeds.
        let child = s
            .cmd(&["backup", "app.db", "d", "--lock-timeout", "30s", "-q"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        if !wal {
            lock.execute_batch("COMMIT;").unwrap();
        }
        drop(lock);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "wal {wal}: {err}");
        assert!(err.contains("waiting for the lock on"), "wal {wal}: {err}");
        s.run(&["restore", "d", "-o", "r.db", "-q"]).ok();
        assert_eq!(count_rows(&s.path("r.db")), 101);
    }
}

#[test]
fn a_bad_lock_timeout_is_refused() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    let r = s.run(&["backup", "app.db", "d", "--lock-timeout", "soon"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--lock-timeout"), "{}", r.stderr);
}

/// A 2 MiB tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(p: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(p).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Tmpfs(p.to_path_buf()))
        } else {
            eprintln!(
                "cannot mount a tmpfs at {} (not root?): using a file-size limit instead",
                p.display()
            );
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `cmd`, limited to files of `bytes` when no tmpfs could be mounted.
fn limited(mut cmd: std::process::Command, mounted: bool, bytes: u64) -> Run {
    if !mounted {
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().unwrap().into()
}

/// Adds ~3 MB of incompressible rows to `db`.
fn grow(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS blobs(b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO blobs SELECT randomblob(3000) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
}

/// Files whose names mark them as temps (`.….tmp`), anywhere under `dir`.
fn temps(s: &Scratch, dir: &str) -> Vec<String> {
    s.files(dir)
        .into_iter()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap();
            name.starts_with('.') && name.ends_with(".tmp")
        })
        .collect()
}

#[test]
fn a_full_disk_at_the_restore_target_is_named_and_leaves_nothing() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    grow(&s.path("app.db"));
    s.run(&["backup", "app.db", "d", "-q"]).ok();
    let disk = Tmpfs::mount(&s.path("small"));
    let r = limited(
        s.cmd(&["restore", "d", "-o", "small/r.db", "-q"]),
        disk.is_some(),
        1 << 20,
    );
    let r = r.fails_with(&["small/r.db", "is full", "free space", "nothing was written"]);
    assert!(!r.stderr.contains("cannot read backup"), "{}", r.stderr);
    assert!(s.files("small").is_empty(), "left: {:?}", s.files("small"));
}

#[test]
fn a_full_local_destination_publishes_nothing_and_keeps_the_last_backup() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    let disk = Tmpfs::mount(&s.path("small"));
    s.run(&["backup", "app.db", "small/d", "-q"]).ok();
    let before = s.files("small/d");
    grow(&s.path("app.db"));
    let r = limited(
        s.cmd(&["backup", "app.db", "small/d", "--level", "0", "-q"]),
        disk.is_some(),
        1 << 20,
    );
    r.fails_with(&["small/d/snapshots/", "no space left", "free space"]);
    assert_eq!(
        s.files("small/d"),
        before,
        "something was published or left"
    );
    assert!(temps(&s, "small").is_empty());
    assert_eq!(s.catalog("small/d")["entries"].as_array().unwrap().len(), 1);
    s.run(&["restore", "small/d", "-o", "r.db", "-q"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 100);
}
