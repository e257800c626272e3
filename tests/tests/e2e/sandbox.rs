//! The sandboxed verifier: `cairn verify` (sandboxed by default), `cairn
//! restore --verify-sandboxed`, and cairn-wasi.wasm under the wasmtime CLI.
//! A hostile archive must be stopped by a check or a limit, and the guest
//! must see nothing but the directory it is given.

use cairn_e2e::*;
use std::path::{Path, PathBuf};

const ROWS: u32 = 3_000;

/// A backup of a 3,000-row database: plain, with a key file, or with a passphrase.
fn backup(s: &Scratch, how: &str) -> Vec<&'static str> {
    if !s.path("app.db").exists() {
        s.make_db("app.db", ROWS);
    }
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let key: Vec<&str> = match how {
        "plain" => vec![],
        "key" => vec!["--key-file", "k.key"],
        "passphrase" => vec!["--passphrase-env", "PW"],
        _ => unreachable!(),
    };
    let mut args = vec!["backup", "app.db"];
    args.extend(&key);
    Run::from(s.cmd(&args).env("PW", "correct horse").output().unwrap()).ok();
    key
}

fn verify_json(s: &Scratch, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["verify", "--json"];
    args.extend(extra);
    let r = Run::from(s.cmd(&args).env("PW", "correct horse").output().unwrap()).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v[0].clone()
}

#[test]
fn a_good_archive_passes_in_the_sandbox_plain_with_key_and_with_passphrase() {
    for how in ["plain", "key", "passphrase"] {
        let s = Scratch::new();
        let key = backup(&s, how);
        let v = verify_json(&s, &key);
        assert_eq!(v["ok"], true, "{how}: {v}");
        assert_eq!(
            v["sandboxed"], true,
            "verify runs in the sandbox by default"
        );
        assert_eq!(v["tables"][0]["name"], "items", "{v}");
        assert_eq!(v["tables"][0]["rows"], ROWS as u64, "{v}");
        let pages = v["page_count"].as_u64().unwrap();
        assert_eq!(
            pages * 4096,
            std::fs::metadata(s.path("app.db")).unwrap().len()
        );

        // AES-GCM in wasm instead of the host's, and no sandbox at all: the
        // same findings.
        for extra in [&["--no-host-crypto"][..], &["--no-sandbox"][..]] {
            let w = verify_json(&s, &[&key[..], extra].concat());
            assert_eq!(w["ok"], true, "{how} {extra:?}: {w}");
            assert_eq!(w["tables"], v["tables"], "{how} {extra:?}");
            assert_eq!(w["page_count"], v["page_count"], "{how} {extra:?}");
            assert_eq!(w["sandboxed"], extra[0] != "--no-sandbox");
        }
    }
}

/// A database whose index no longer matches its table, so that only
/// `integrity_check` can tell: SQLite opens and reads it without complaint.
fn make_corrupt_db(s: &Scratch) {
    let db = s.make_db("app.db", ROWS);
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=DELETE;
         PRAGMA writable_schema=ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX items_name ON items(note)'
          WHERE name = 'items_name';
         PRAGMA writable_schema=OFF;",
    )
    .unwrap();
    drop(c);
    assert!(!integrity_ok(&db), "the planted damage must be real");
    assert_eq!(count_rows(&db), ROWS as i64, "and the database still reads");
}

#[test]
fn a_corrupt_database_in_a_sound_encrypted_archive_is_caught_by_integrity_check_in_the_sandbox() {
    let s = Scratch::new();
    make_corrupt_db(&s);
    let key = backup(&s, "key");
    let object = s.latest_object("backups");
    let mut args = vec!["verify"];
    args.extend(&key);
    s.run(&args).fails_with(&[
        &object,
        "the archive decodes, but the database in it is not sound",
        "integrity_check",
        "items_name",
        "use another backup",
    ]);
    // Natively the same verdict, from the same checks.
    args.push("--no-sandbox");
    s.run(&args)
        .fails_with(&[&object, "not sound", "items_name"]);
}

#[test]
fn restore_verify_sandboxed_checks_before_writing_anything() {
    let s = Scratch::new();
    make_corrupt_db(&s);
    let key = backup(&s, "key");
    let mut args = vec!["restore", "backups", "-o", "out.db", "--verify-sandboxed"];
    args.extend(&key);
    s.run(&args).fails_with(&["not sound", "items_name"]);
    assert!(!s.path("out.db").exists(), "nothing may be written");
    let leftovers: Vec<_> = s
        .files(".")
        .into_iter()
        .filter(|f| f.contains("cairn-restore") || f.contains("cairn-verify"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );

    // A sound backup restores, and the report says it was checked first.
    let s = Scratch::new();
    let key = backup(&s, "key");
    let mut args = vec![
        "restore",
        "backups",
        "-o",
        "out.db",
        "--verify-sandboxed",
        "--json",
    ];
    args.extend(&key);
    let r = s.run(&args).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verified_in_sandbox"], true, "{v}");
    assert_eq!(count_rows(&s.path("out.db")), ROWS as i64);
}

/// Replaces the latest backup's object with one that decodes to `len` zero
/// bytes (a few hundred KiB stored) while the catalog still promises a small
/// database: a decompression bomb.
fn plant_bomb(s: &Scratch, len: usize) -> String {
    backup(s, "plain");
    let zeros = vec![0u8; 1 << 20];
    let pieces = std::iter::repeat_n(zeros.as_slice(), len >> 20);
    plant_archive(s, "bomb.db", 9, None, pieces)
}

/// The temporary files cairn left in the scratch's TMPDIR (`Scratch::cmd`).
fn temp_leftovers(s: &Scratch) -> Vec<String> {
    s.files(".tmp")
}

#[test]
fn a_decompression_bomb_is_stopped_at_the_size_the_catalog_promises() {
    let s = Scratch::new();
    let object = plant_bomb(&s, 512 << 20);
    s.run(&["verify"]).fails_with(&[
        &object,
        "decodes to more than",
        "bytes expected",
        "use another backup",
    ]);
    s.run(&["restore", "backups", "-o", "out.db", "--verify-sandboxed"])
        .fails_with(&[&object, "decodes to more than"]);
    assert!(!s.path("out.db").exists());
    assert_eq!(
        temp_leftovers(&s),
        Vec::<String>::new(),
        "scratch left behind"
    );
}

/// Runs the verifier on `archive` (a path under `/backup`, mapped to `dir`)
/// with the library API, so that the guest's own size check can be left out.
fn guest_run(
    dir: &Path,
    archive: &str,
    temp_dir: &Path,
    limits: cairn::sandbox::Limits,
    scratch_limit: u64,
) -> Result<cairn::verifier::Report, String> {
    cairn::verifier::run(cairn::verifier::Request {
        source: cairn::verifier::Source::File { dir, archive },
        key: &cairn_core::KeyMaterial::None,
        expect_size: None,
        limits,
        temp_dir,
        scratch_limit,
        portable: false,
    })
    .map_err(|e| format!("{e:#}"))
}

fn guest_read(dir: &Path, archive: &str) -> cairn::verifier::Report {
    guest_run(
        dir,
        archive,
        &std::env::temp_dir(),
        cairn::sandbox::Limits::default(),
        1 << 30,
    )
    .expect("the verifier runs and reports")
}

#[test]
fn the_host_stops_a_guest_whose_scratch_file_outgrows_its_limit() {
    // The guest is not told the expected size, so only the host's watch on
    // the scratch directory stands between the bomb and the disk.
    let s = Scratch::new();
    let object = plant_bomb(&s, 1 << 30);
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let limits = cairn::sandbox::Limits {
        memory: 256 << 20,
        call_timeout: std::time::Duration::from_secs(120),
    };
    let err = guest_run(
        &s.path("backups"),
        &format!("/backup/{object}"),
        &tmp,
        limits,
        16 << 20,
    )
    .expect_err("the watch must stop it");
    let msg = err;
    assert!(
        msg.contains("scratch directory grew past 16777216 bytes")
            && msg.contains("use another backup"),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(
        left.is_empty(),
        "the scratch directory must be removed: {left:?}"
    );
}

#[test]
fn a_slow_archive_is_stopped_by_the_sandbox_deadline() {
    // 1 GiB does not decode, hash and land on disk in 1 s of wasm (and the
    // scratch limit is high enough that the deadline, not the watch, stops it).
    let s = Scratch::new();
    let object = plant_bomb(&s, 1 << 30);
    let started = std::time::Instant::now();
    let limits = cairn::sandbox::Limits {
        memory: 256 << 20,
        call_timeout: std::time::Duration::from_secs(1),
    };
    let err = guest_run(
        &s.path("backups"),
        &format!("/backup/{object}"),
        &s.path(".tmp"),
        limits,
        2 << 30,
    )
    .expect_err("the deadline must stop it");
    let msg = err;
    assert!(
        msg.contains("longer than 1 s") && msg.contains("--sandbox-timeout"),
        "{msg}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(
        temp_leftovers(&s),
        Vec::<String>::new(),
        "scratch left behind"
    );
}

/// Plants `db` (bytes of a crafted database) as the latest backup's object,
/// stored at the size the catalog promises.
fn plant_database(s: &Scratch, db: &[u8]) -> String {
    plant_archive(s, "app.db", 6, None, [db])
}

#[test]
fn crafted_databases_fail_cleanly_inside_the_sandbox() {
    let s = Scratch::new();
    backup(&s, "plain");
    // The database exactly as the backup holds it, so that the crafted ones
    // below have the size the catalog promises.
    s.run(&["restore", "backups", "-o", "good.db"]).ok();
    let good = s.read("good.db");
    let page = 4096;
    assert_eq!(good.len() % page, 0);
    let root: i64 = rusqlite::Connection::open(s.path("good.db"))
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    // A b-tree page of the table overwritten with garbage.
    let mut garbage = good.clone();
    let at = (root as usize - 1) * page;
    for (i, b) in garbage[at..at + page].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    // The header's page count raised to 2^31 - 1 (and marked valid): a
    // database that claims 8 TiB.
    let mut huge = good.clone();
    huge[28..32].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    huge[92..96].copy_from_slice(&good[24..28]);
    // A page size of 3 bytes: no such thing.
    let mut page_size = good.clone();
    page_size[16..18].copy_from_slice(&3u16.to_be_bytes());

    for (what, db) in [
        ("garbage b-tree page", garbage),
        ("huge page count", huge),
        ("bad page size", page_size),
    ] {
        let object = plant_database(&s, &db);
        let r = s.run(&["verify", "--json", "--sandbox-memory", "256M"]);
        assert_ne!(r.code, 0, "{what}: {}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}{}", r.stdout, r.stderr));
        let err = v[0]["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(v[0]["ok"], false, "{what}: {v}");
        assert!(
            err.contains(&object) && (err.contains("not sound") || err.contains("memory limit")),
            "{what}: a clean verdict from the sandbox, not a crash: {err}"
        );
        assert!(
            !err.contains("crashed") && !err.contains("panic"),
            "{what}: {err}"
        );
        assert_eq!(
            temp_leftovers(&s),
            Vec::<String>::new(),
            "{what}: scratch left behind"
        );
    }
}

/// A database over 4 GiB (the most wasm32 memory could ever hold), made of
/// 1 MiB zeroblobs in 64 KiB pages: backed up, then verified in the sandbox
/// with the guest's memory capped at 256 MiB.
#[test]
fn a_database_over_4_gib_verifies_in_the_sandbox_with_256_mib_of_memory() {
    let s = Scratch::new();
    let db = s.path("big.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size = 65536; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE blobs(id INTEGER PRIMARY KEY, tag TEXT NOT NULL, body BLOB NOT NULL);
         CREATE INDEX blobs_tag ON blobs(tag);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4160)
         INSERT INTO blobs(tag, body) SELECT 'blob-' || i, zeroblob(1048576) FROM n;",
    )
    .unwrap();
    drop(c);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 4 << 30, "the database must be over 4 GiB: {size}");

    Run::from(
        s.cmd(&["backup", "big.db", "--codec", "zstd", "--level", "1", "-q"])
            .output()
            .unwrap(),
    )
    .ok();
    let r = s
        .run(&["verify", "--json", "-q", "--sandbox-memory", "256M"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let v = &v[0];
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sandboxed"], true, "{v}");
    assert_eq!(v["page_count"].as_u64().unwrap() * 65536, size, "{v}");
    assert_eq!(v["tables"][0]["name"], "blobs", "{v}");
    assert_eq!(v["tables"][0]["rows"], 4160, "{v}");
    assert_eq!(
        temp_leftovers(&s),
        Vec::<String>::new(),
        "scratch left behind"
    );
    // Free the disk now rather than at the end of the test binary.
    std::fs::remove_file(&db).unwrap();
}

#[test]
fn the_guest_cannot_read_outside_its_preopened_directory() {
    let s = Scratch::new();
    backup(&s, "plain");
    let object = s.latest_object("backups");
    let dir = s.path("backups");
    // A secret beside the preopen, a symlink out of it, and host paths.
    std::fs::write(s.path("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(s.path("secret.txt"), dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let host_path = s.path("secret.txt").display().to_string();
    for path in [
        "/backup/../secret.txt",
        "/backup/link",
        "/backup/passwd",
        "/etc/passwd",
        host_path.as_str(),
        "../secret.txt",
    ] {
        let r = guest_read(&dir, path);
        assert!(!r.ok, "{path} must be unreadable: {r:?}");
        let e = r.error.expect("a failure");
        assert_eq!(e.stage, "read", "{path}: {e:?}");
        assert!(e.message.contains(path), "{path}: {}", e.message);
    }
    // The archive inside it is readable, so the failures above are the sandbox's.
    let r = guest_read(&dir, &format!("/backup/{object}"));
    assert!(r.ok, "{r:?}");
}

/// The wasmtime CLI: `$CAIRN_WASMTIME`, else `wasmtime` on PATH, else where
/// .ci/setup.sh installs it. Under CI=true its absence fails the test.
fn wasmtime_cli() -> Option<PathBuf> {
    let found = std::env::var_os("CAIRN_WASMTIME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("wasmtime"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| {
            let p = PathBuf::from(std::env::var_os("HOME")?).join(".cache/cairn-bin/wasmtime");
            p.is_file().then_some(p)
        });
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the wasmtime CLI is missing: run `bash .ci/setup.sh`"
        );
        eprintln!("skipped: the wasmtime CLI is missing (bash .ci/setup.sh installs it)");
    }
    found
}

#[test]
fn cairn_wasi_runs_under_the_wasmtime_cli() {
    let Some(wasmtime) = wasmtime_cli() else {
        return;
    };
    let s = Scratch::new();
    backup(&s, "key");
    std::fs::copy(s.path("k.key"), s.path("backups/k.key")).unwrap();
    let object = s.latest_object("backups");
    s.run(&["verifier", "-o", "cairn-wasi.wasm"]).ok();
    s.run(&["verifier", "-o", "cairn-wasi.wasm"]).fails_with(&[
        "cairn-wasi.wasm",
        "exists",
        "--force",
    ]);
    s.run(&["verifier", "-o", "cairn-wasi.wasm", "--force"])
        .ok();

    let wasmtime_run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut c = std::process::Command::new(&wasmtime)
            .args([
                "run",
                "--dir",
                "backups::/backup",
                "--dir",
                "scratch::/scratch",
            ])
            .arg("cairn-wasi.wasm")
            .args(args)
            .current_dir(s.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        Run::from(c.wait_with_output().unwrap())
    };
    let archive = format!("/backup/{object}");
    std::fs::create_dir(s.path("scratch")).unwrap();

    // The key from a file inside the preopened directory, a JSON report.
    let r = wasmtime_run(
        &["verify", &archive, "--key-file", "/backup/k.key", "--json"],
        "",
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["integrity"][0], "ok", "{v}");
    assert_eq!(v["foreign_key_violations"], 0, "{v}");
    assert_eq!(v["tables"][0]["rows"], ROWS as u64, "{v}");

    // With a scratch directory: decoded to a file there, read by SQLite
    // through the read-only VFS, the same findings; the file is removed.
    let r = wasmtime_run(
        &[
            "verify",
            &archive,
            "--key-file",
            "/backup/k.key",
            "--json",
            "--scratch",
            "/scratch",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let w: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(w["tables"], v["tables"], "{w}");
    assert_eq!(w["page_count"], v["page_count"], "{w}");
    assert_eq!(
        s.files("scratch"),
        Vec::<String>::new(),
        "the scratch file is removed"
    );

    // The key on stdin, the text report.
    let r = wasmtime_run(&["verify", &archive, "--key-stdin"], TEST_KEY);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("items"), "{}", r.stdout);

    // A wrong key, and a damaged archive: exit 1 and say so.
    let r = wasmtime_run(&["verify", &archive, "--key-stdin"], &"11".repeat(32));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("wrong key"), "{}{}", r.stdout, r.stderr);
    let mut bytes = s.read(&format!("backups/{object}"));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(s.path(&format!("backups/{object}")), &bytes).unwrap();
    let r = wasmtime_run(&["verify", &archive, "--key-file", "/backup/k.key"], "");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("is corrupted"),
        "{}{}",
        r.stdout,
        r.stderr
    );

    // Nothing outside the --dir is visible to it.
    let r = wasmtime_run(&["verify", "/backup/../app.db"], "");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
}
