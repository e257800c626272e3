//! Every kind of bad input gets a one-line error that names the file and
//! what to do, a non-zero exit, and leaves nothing half-written behind.

use cairn_e2e::*;
use std::os::unix::process::CommandExt;

/// A small backup with 4 KiB chunks, so archives have many frames to damage.
fn small_backup(s: &Scratch, encrypted: bool) -> (String, String) {
    s.make_db("app.db", 2_000);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let mut args = vec!["backup", "app.db", "--chunk-size", "4K", "--json"];
    if encrypted {
        args.extend(["--key-file", "k.key"]);
    }
    let r = s.run(&args).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let object = v["object"].as_str().unwrap().to_string();
    let entry = &s.catalog("backups")["entries"][0];
    (object, entry["archive_id"].as_str().unwrap().to_string())
}

fn key_args(encrypted: bool) -> Vec<&'static str> {
    if encrypted {
        vec!["--key-file", "k.key"]
    } else {
        vec![]
    }
}

fn restore_fails(s: &Scratch, encrypted: bool, needles: &[&str]) {
    for engine in ["native", "wasm"] {
        let mut args = vec!["restore", "backups", "-o", "out.db", "--engine", engine];
        args.extend(key_args(encrypted));
        s.run(&args).fails_with(needles);
        assert!(
            !s.path("out.db").exists(),
            "nothing may be written on failure"
        );
        let leftovers: Vec<_> = s
            .files(".")
            .into_iter()
            .filter(|f| f.contains("cairn-restore"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temp files left behind: {leftovers:?}"
        );
    }
    let mut args = vec!["verify"];
    args.extend(key_args(encrypted));
    s.run(&args).fails_with(needles);
}

#[test]
fn missing_database() {
    let s = Scratch::new();
    s.run(&["backup", "nope.db"])
        .fails_with(&["nope.db", "not found", "check the path"]);
    assert!(!s.path("backups").exists());
}

#[test]
fn a_file_that_is_not_sqlite() {
    let s = Scratch::new();
    std::fs::write(s.path("notes.txt"), "hello, these are my notes\n").unwrap();
    s.run(&["backup", "notes.txt"])
        .fails_with(&["notes.txt", "is not a SQLite database"]);
    std::fs::write(
        s.path("dump.sql"),
        "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n",
    )
    .unwrap();
    s.run(&["backup", "dump.sql"])
        .fails_with(&["dump.sql", "SQL text"]);
    // A 0-byte file is a valid, empty SQLite database (issue 15):
    // faults::a_zero_byte_database_backs_up_and_restores.
}

#[test]
fn destination_not_writable() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    std::fs::create_dir(s.path("ro")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let perm = |p: &str, m: u32| {
        std::fs::set_permissions(s.path(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    perm("ro", 0o555);
    let mut cmd = s.cmd(&["backup", "app.db", "ro"]);
    if unsafe { libc::geteuid() } == 0 {
        // Root ignores permissions: run as nobody, who can read the database
        // and a copy of the binary (the build directory may be private).
        std::fs::copy(cairn_bin(), s.path("cairn")).unwrap();
        let mut as_nobody = std::process::Command::new(s.path("cairn"));
        as_nobody
            .args(["backup", "app.db", "ro"])
            .current_dir(s.dir.path())
            .env("TMPDIR", s.path(".tmp"));
        cmd = as_nobody;
        perm("cairn", 0o755);
        perm(".", 0o755);
        perm("app.db", 0o644);
        perm(".tmp", 0o777);
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Run::from(cmd.output().unwrap()).fails_with(&[
        "ro",
        "not writable",
        "choose another destination",
    ]);
    assert!(s.files("ro").is_empty());
}

#[test]
fn disk_full() {
    let s = Scratch::new();
    // Incompressible rows, stored uncompressed in 4 KiB chunks: the archive
    // is a little larger than the snapshot, so a file-size limit just above
    // the database lets the snapshot through and stops the archive.
    let db = s.path("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE blobs(b BLOB); INSERT INTO blobs SELECT randomblob(3000) FROM generate_series(1, 600);").unwrap_or_else(|_| {
        c.execute_batch("CREATE TABLE IF NOT EXISTS blobs(b BLOB);").unwrap();
        for _ in 0..600 {
            c.execute("INSERT INTO blobs VALUES (randomblob(3000))", []).unwrap();
        }
    });
    drop(c);
    let limit = std::fs::metadata(&db).unwrap().len() + 8192;
    let mut cmd = s.cmd(&["backup", "app.db", "--level", "0", "--chunk-size", "4K"]);
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Run::from(cmd.output().unwrap()).fails_with(&[
        "backups/snapshots/",
        "no space left",
        "free space",
    ]);
    assert!(
        s.files("backups/snapshots").is_empty(),
        "partial archive left: {:?}",
        s.files("backups/snapshots")
    );
    assert!(!s.path("backups/catalog.json").exists() && !s.path("backups/latest.txt").exists());
    assert!(
        s.files(".tmp").is_empty(),
        "snapshot temp left: {:?}",
        s.files(".tmp")
    );
}

#[test]
fn wrong_key_is_reported_as_wrong_key_and_never_echoed() {
    let s = Scratch::new();
    small_backup(&s, true);
    let other = "1111111111111111111111111111111111111111111111111111111111111111";
    std::fs::write(s.path("k.key"), other).unwrap();
    restore_fails(&s, true, &["wrong key", "--key-file"]);
    let r = s.run(&["restore", "backups", "-o", "x.db", "--key-file", "k.key"]);
    assert!(
        !r.stderr.contains(other) && !r.stderr.contains(TEST_KEY),
        "key in message: {}",
        r.stderr
    );
    std::fs::write(s.path("bad.key"), "secret-but-not-a-key").unwrap();
    let r = s
        .run(&["restore", "backups", "-o", "x.db", "--key-file", "bad.key"])
        .fails_with(&["bad.key", "64 hex digits"]);
    assert!(!r.stderr.contains("secret-but-not-a-key"));
    s.run(&["restore", "backups", "-o", "x.db"])
        .fails_with(&["encrypted", "--key-file"]);
    s.run(&[
        "restore",
        "backups",
        "-o",
        "x.db",
        "--key-env",
        "NO_SUCH_VAR",
    ])
    .fails_with(&["NO_SUCH_VAR", "not set"]);
    s.run(&["backup", "app.db", "--encrypt"])
        .fails_with(&["--encrypt needs a key", "keygen"]);
}

fn damage(s: &Scratch, encrypted: bool, f: impl Fn(&[u8], &[usize]) -> Vec<u8>) {
    let (object, id) = small_backup(s, encrypted);
    let path = s.path(&format!("backups/{object}"));
    let bytes = std::fs::read(&path).unwrap();
    let offs = frame_offsets(&bytes, &id, encrypted);
    assert!(offs.len() > 8, "expected many frames, got {}", offs.len());
    std::fs::write(&path, f(&bytes, &offs)).unwrap();
}

#[test]
fn truncated_archive() {
    for enc in [false, true] {
        let s = Scratch::new();
        damage(&s, enc, |b, offs| b[..offs[offs.len() - 1]].to_vec());
        restore_fails(
            &s,
            enc,
            &[
                "is truncated",
                "before the end-of-archive trailer",
                "damaged",
            ],
        );
        let s = Scratch::new();
        damage(&s, enc, |b, offs| b[..offs[3] + 100].to_vec());
        restore_fails(&s, enc, &["is truncated", "inside chunk 3"]);
    }
}

#[test]
fn one_flipped_byte_in_a_chunk() {
    for enc in [false, true] {
        let s = Scratch::new();
        damage(&s, enc, |b, offs| {
            let mut v = b.to_vec();
            v[offs[4] + 200] ^= 0x10;
            v
        });
        restore_fails(&s, enc, &["chunk 4 is corrupted", "--id", "cairn list"]);
    }
}

#[test]
fn two_chunks_swapped() {
    for enc in [false, true] {
        let s = Scratch::new();
        damage(&s, enc, |b, offs| swap_frames(b, offs, 2, 5));
        restore_fails(&s, enc, &["out of order", "found chunk 5 at position 2"]);
    }
}

#[test]
fn a_chunk_from_another_archive() {
    for enc in [false, true] {
        let s = Scratch::new();
        let (first, _) = small_backup(&s, enc);
        let mut args = vec!["backup", "app.db", "--chunk-size", "4K", "-q"];
        args.extend(key_args(enc));
        s.run(&args).ok();
        let second = s.latest_object("backups");
        let cat = s.catalog("backups");
        let (id_a, id_b) = (
            cat["entries"][0]["archive_id"].as_str().unwrap(),
            cat["entries"][1]["archive_id"].as_str().unwrap(),
        );
        let a = s.read(&format!("backups/{first}"));
        let b = s.read(&format!("backups/{second}"));
        let (oa, ob) = (frame_offsets(&a, id_a, enc), frame_offsets(&b, id_b, enc));
        let mut mixed = a[..oa[3]].to_vec();
        mixed.extend_from_slice(&b[ob[3]..ob[4]]);
        mixed.extend_from_slice(&a[oa[4]..]);
        std::fs::write(s.path(&format!("backups/{second}")), &mixed).unwrap();
        // latest.txt names the second object, which now holds the first's frames and one foreign one.
        restore_fails(&s, enc, &["belongs to another archive", "position 3"]);
    }
}

#[test]
fn empty_or_damaged_catalog() {
    let s = Scratch::new();
    s.run(&["list", "nowhere"])
        .fails_with(&["nowhere", "no backups"]);
    s.run(&["restore", "nowhere", "-o", "x.db"])
        .fails_with(&["nowhere", "no backups"]);
    small_backup(&s, false);
    // A damaged log record: every reader names it and says how to repair.
    let log1 = "backups/log/00000000000000000001.json";
    let good = s.read(log1);
    std::fs::write(s.path(log1), b"").unwrap();
    s.run(&["list"])
        .fails_with(&[log1, "damaged", "cairn repair"]);
    s.run(&["verify"]).fails_with(&[log1, "damaged"]);
    s.run(&["restore", "backups", "-o", "x.db"])
        .fails_with(&[log1, "damaged"]);
    // The next backup refuses too, and never writes over it.
    s.run(&["backup", "app.db"]).fails_with(&[log1, "damaged"]);
    assert_eq!(s.read(log1), b"");
    std::fs::write(s.path(log1), &good).unwrap();
    // A damaged marker.
    let marker = s.read("backups/cairn.json");
    std::fs::write(s.path("backups/cairn.json"), b"{}").unwrap();
    s.run(&["list"])
        .fails_with(&["backups/cairn.json", "damaged"]);
    std::fs::write(s.path("backups/cairn.json"), &marker).unwrap();
    s.run(&["list"]).ok();
    // Layout 1: an empty or damaged catalog.json.
    std::fs::create_dir_all(s.path("old")).unwrap();
    std::fs::write(s.path("old/catalog.json"), b"").unwrap();
    s.run(&["list", "old"])
        .fails_with(&["old/catalog.json", "is empty"]);
    std::fs::write(s.path("old/catalog.json"), b"{\"format\": 1}").unwrap();
    s.run(&["restore", "old", "-o", "x.db"])
        .fails_with(&["old/catalog.json", "damaged"]);
}

#[test]
fn a_missing_object_and_unknown_id() {
    let s = Scratch::new();
    let (object, _) = small_backup(&s, false);
    s.run(&["restore", "backups", "-o", "x.db", "--id", "nope"])
        .fails_with(&["no backup with id nope", "cairn list"]);
    std::fs::remove_file(s.path(&format!("backups/{object}"))).unwrap();
    s.run(&["restore", "backups", "-o", "x.db"])
        .fails_with(&[&object, "missing"]);
}

/// Replaces the latest backup with a hostile archive whose header asks for
/// Argon2id with `m_cost_kib` of memory and `t_cost` passes; returns its key.
fn plant_hostile_kdf_archive(s: &Scratch, m_cost_kib: u32, t_cost: u32) -> String {
    use cairn_core::encoder::EncryptionParams;
    use cairn_core::{Kdf, MasterKey};
    small_backup(s, false);
    let encryption = EncryptionParams {
        master: MasterKey([1; 32]),
        kdf: Kdf::Argon2id {
            m_cost_kib,
            t_cost,
            p_cost: 1,
            salt: [2; 16],
        },
        salt: [3; 32],
    };
    let db = s.read("app.db");
    plant_archive(s, "evil.db", 1, Some(encryption), [db.as_slice()])
}

#[test]
fn an_archive_that_drives_the_sandbox_past_its_memory_limit() {
    // 1 GiB of Argon2id memory: the largest a reader accepts natively.
    let s = Scratch::new();
    let object = plant_hostile_kdf_archive(&s, 1 << 20, 1);
    let r = s
        .cmd(&["verify", "--passphrase-env", "PW"])
        .env("PW", "x")
        .output()
        .unwrap();
    Run::from(r).fails_with(&["memory limit of 256 MiB", "--sandbox-memory", &object]);
    let r = s
        .cmd(&[
            "verify",
            "--passphrase-env",
            "PW",
            "--sandbox-memory",
            "64M",
        ])
        .env("PW", "x")
        .output()
        .unwrap();
    Run::from(r).fails_with(&["memory limit of 64 MiB"]);
}

#[test]
fn an_archive_that_runs_too_long_is_stopped_by_the_deadline() {
    // 128 MiB (under the memory cap) and 16 passes: seconds of work per call.
    let s = Scratch::new();
    let object = plant_hostile_kdf_archive(&s, 128 << 10, 16);
    let started = std::time::Instant::now();
    let r = s
        .cmd(&["verify", "--passphrase-env", "PW", "--sandbox-timeout", "1"])
        .env("PW", "x")
        .output()
        .unwrap();
    Run::from(r).fails_with(&["longer than 1 s", "--sandbox-timeout", &object]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the deadline did not stop it promptly"
    );
}

#[test]
fn bad_options() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    s.run(&["backup", "app.db", "--level", "12"])
        .fails_with(&["--level 12", "0 (store) to 9"]);
    s.run(&["backup", "app.db", "--chunk-size", "1K"])
        .fails_with(&["--chunk-size", "4K to 16M"]);
    let r = s.run(&["backup", "app.db", "--chunk-size", "lots"]);
    assert_eq!(r.code, 2, "usage errors exit 2: {}", r.stderr);
    assert!(r.stderr.contains("is not a size"), "{}", r.stderr);
}

#[test]
fn a_tampered_trailer_is_reported_as_such_by_both_engines() {
    for enc in [false, true] {
        let s = Scratch::new();
        damage(&s, enc, |b, offs| {
            let mut v = b.to_vec();
            let t = offs[offs.len() - 1];
            // Inside the trailer record: sealed bytes (encrypted) or the sums behind the CT id.
            v[t + 40] ^= 0x02;
            v
        });
        restore_fails(&s, enc, &["trailer is corrupted", "damaged"]);
    }
}
