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

#[test]
fn a_decompression_bomb_is_stopped_by_the_sandbox_memory_limit() {
    let s = Scratch::new();
    let object = plant_bomb(&s, 512 << 20);
    s.run(&["verify"])
        .fails_with(&[&object, "memory limit of 256 MiB", "--sandbox-memory"]);
    s.run(&["restore", "backups", "-o", "out.db", "--verify-sandboxed"])
        .fails_with(&[&object, "memory limit"]);
    assert!(!s.path("out.db").exists());
}

#[test]
fn a_slow_archive_is_stopped_by_the_sandbox_deadline() {
    // 512 MiB does not fit in 1 s of wasm decoding (and the memory cap is
    // raised so that the deadline, not memory, is what stops it).
    let s = Scratch::new();
    let object = plant_bomb(&s, 512 << 20);
    let started = std::time::Instant::now();
    s.run(&["verify", "--sandbox-timeout", "1", "--sandbox-memory", "1G"])
        .fails_with(&[&object, "longer than 1 s", "--sandbox-timeout"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

fn guest_read(dir: &Path, archive: &str) -> cairn::verifier::Report {
    cairn::verifier::run(cairn::verifier::Request {
        source: cairn::verifier::Source::File { dir, archive },
        key: &cairn_core::KeyMaterial::None,
        expect_size: None,
        limits: cairn::sandbox::Limits::default(),
        portable: false,
    })
    .expect("the verifier runs and reports")
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
            .args(["run", "--dir", "backups::/backup", "cairn-wasi.wasm"])
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
