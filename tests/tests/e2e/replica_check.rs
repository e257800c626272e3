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
