//! A replicator embedded in an application (`cairn::replicate::embed`):
//! the example app `host-native/examples/replicating_app.rs` writes rows
//! while it replicates in-process, shuts down gracefully, and every row it
//! committed is in a restore of the replica; errors reach the app.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::{Run, Scratch, cairn_bin};
use rusqlite::Connection;

/// The example binary, built beside `cairn` (`cargo build --release --examples`).
fn app_bin() -> PathBuf {
    let p = cairn_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join("replicating_app");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace --bins --examples`",
        p.display()
    );
    p
}

fn app(s: &Scratch, args: &[&str]) -> Command {
    let mut c = Command::new(app_bin());
    c.args(args)
        .current_dir(s.dir.path())
        .env("TMPDIR", s.path(".tmp"))
        .env_remove("RUST_LOG");
    std::fs::create_dir_all(s.path(".tmp")).unwrap();
    c
}

fn ids(db: &std::path::Path) -> Vec<i64> {
    let c = Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id FROM events ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn app_replicates_in_process_and_every_committed_row_is_restored() {
    let s = Scratch::new();
    s.run(&["keygen", "-o", "cairn.key"]).ok();
    let out: Run = app(
        &s,
        &[
            "app.db",
            "replica",
            "--rows",
            "600",
            "--key-file",
            "cairn.key",
        ],
    )
    .output()
    .unwrap()
    .into();
    let out = out.ok();
    assert!(out.stdout.contains("committed 600 rows"), "{}", out.stdout);
    // cairn's messages went through the app's tracing subscriber.
    assert!(
        out.stderr.contains("INFO") && out.stderr.contains("replication started"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("replicator stopped"), "{}", out.stderr);

    s.run(&[
        "restore",
        "replica",
        "-o",
        "restored.db",
        "--key-file",
        "cairn.key",
    ])
    .ok();
    let got = ids(&s.path("restored.db"));
    assert_eq!(got, (1..=600).collect::<Vec<i64>>());
    assert_eq!(got, ids(&s.path("app.db")));
    assert!(cairn_e2e::integrity_ok(&s.path("restored.db")));
    // One generation: with the app's autocheckpoint off and cairn doing
    // the checkpoints, no frame was missed.
    let gens = s
        .run(&["list", "replica", "--generations", "--json"])
        .ok()
        .stdout;
    let gens: serde_json::Value = serde_json::from_str(&gens).unwrap();
    assert_eq!(gens.as_array().map(Vec::len), Some(1), "{gens}");

    // A second run appends to the same replica (the lease was released).
    let out: Run = app(
        &s,
        &[
            "app.db",
            "replica",
            "--rows",
            "50",
            "--key-file",
            "cairn.key",
        ],
    )
    .output()
    .unwrap()
    .into();
    out.ok();
    s.run(&[
        "restore",
        "replica",
        "-o",
        "again.db",
        "--key-file",
        "cairn.key",
    ])
    .ok();
    assert_eq!(ids(&s.path("again.db")), (1..=650).collect::<Vec<i64>>());
}

#[test]
fn the_app_gets_the_replicators_errors() {
    let s = Scratch::new();
    // A replica held by another replicator: start() fails naming the holder.
    s.make_db("app.db", 10);
    let mut holder = s
        .cmd(&["replicate", "app.db", "replica", "--interval", "20ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !s.path("replica/replication").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no lease appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out: Run = app(&s, &["app.db", "replica", "--rows", "5"])
        .output()
        .unwrap()
        .into();
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(holder.id() as libc::pid_t, libc::SIGTERM) };
    holder.wait().unwrap();
    out.fails_with(&["held by", &format!("pid {}", holder.id()), "lease"]);

    // A destination that cannot be used: the error names it.
    std::fs::write(s.path("file-not-dir"), b"x").unwrap();
    let out: Run = app(&s, &["app.db", "file-not-dir/sub", "--rows", "5"])
        .output()
        .unwrap()
        .into();
    out.fails_with(&["file-not-dir"]);

    // A malformed config reaches the app as an error naming the field.
    let out: Run = app(&s, &["app.db", "ftp://host/x", "--rows", "5"])
        .output()
        .unwrap()
        .into();
    out.fails_with(&["destinations[0]"]);
}
