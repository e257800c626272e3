//! Layout 2 on a local destination: the log, concurrent writers, the
//! upgrade of layout 1, prune, pull and repair, through the `cairn` binary.

use cairn_core::catalog::{Catalog, Entry};
use cairn_e2e::*;

fn ids(s: &Scratch, dest: &str) -> Vec<String> {
    s.catalog(dest)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup(s: &Scratch, dest: &str) -> serde_json::Value {
    let r = s.run(&["backup", "app.db", dest, "--json"]).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn each_backup_is_one_create_only_commit() {
    let s = Scratch::new();
    s.make_db("app.db", 300);
    let a = backup(&s, "backups");
    let b = backup(&s, "backups");
    assert_eq!(a["destinations"][0]["commit"], 1);
    assert_eq!(b["destinations"][0]["commit"], 2);
    let files = s.files("backups");
    for f in [
        "cairn.json",
        "log/00000000000000000001.json",
        "log/00000000000000000002.json",
        "latest.txt",
    ] {
        assert!(files.contains(&f.to_string()), "{f} missing: {files:?}");
    }
    assert!(!files.contains(&"catalog.json".to_string()));
    // Each commit alone describes its backup (self-describing objects).
    let rec: serde_json::Value =
        serde_json::from_slice(&s.read("backups/log/00000000000000000002.json")).unwrap();
    assert_eq!(rec["format"], "cairn-commit");
    assert_eq!(rec["body"]["add"][0]["id"], b["id"]);
    assert_eq!(rec["body"]["add"][0]["stored_sha256"], b["stored_sha256"]);
    assert_eq!(
        ids(&s, "backups"),
        [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()]
    );
    assert_eq!(s.latest_object("backups"), b["object"].as_str().unwrap());
}

#[test]
fn concurrent_backups_into_one_destination_are_all_listed() {
    let s = Scratch::new();
    s.make_db("app.db", 2000);
    let children: Vec<_> = (0..4)
        .map(|_| {
            s.cmd(&["backup", "app.db", "shared", "-q", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut made = Vec::new();
    for c in children {
        let r = Run::from(c.wait_with_output().unwrap()).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        made.push(v["id"].as_str().unwrap().to_string());
    }
    let mut listed = ids(&s, "shared");
    listed.sort();
    made.sort();
    assert_eq!(listed, made);
    let logs: Vec<String> = s.files("shared/log");
    assert_eq!(logs.len(), 4, "{logs:?}");
    for id in &made {
        s.run(&["restore", "shared", "--id", id, "-o", &format!("{id}.db")])
            .ok();
    }
}

/// Rewrites `dest` as cairn before layout 2 left it: catalog.json (rendered
/// by the same core code that wrote it then), latest.txt, the archives.
fn make_layout_1(s: &Scratch, dest: &str) -> Vec<Entry> {
    let entries: Vec<Entry> = serde_json::from_value(s.catalog(dest)["entries"].clone()).unwrap();
    let cat = Catalog {
        generation: entries.len() as u64,
        entries: entries.clone(),
    };
    for d in ["log", "checkpoints"] {
        let _ = std::fs::remove_dir_all(s.path(&format!("{dest}/{d}")));
    }
    std::fs::remove_file(s.path(&format!("{dest}/cairn.json"))).unwrap();
    std::fs::write(s.path(&format!("{dest}/catalog.json")), cat.render()).unwrap();
    entries
}

#[test]
fn a_layout_1_destination_is_read_then_upgraded_in_place() {
    let s = Scratch::new();
    s.make_db("app.db", 300);
    backup(&s, "old");
    backup(&s, "old");
    let before = make_layout_1(&s, "old");
    // Read as it is: list, restore, verify.
    assert_eq!(ids(&s, "old").len(), 2);
    s.run(&["restore", "old", "-o", "r1.db"]).ok();
    s.run(&["verify", "old", "--all"]).ok();
    assert!(
        !s.path("old/cairn.json").exists(),
        "reading must not upgrade"
    );
    // The first write upgrades: commit 1 imports, commit 2 is the new backup.
    let c = backup(&s, "old");
    assert_eq!(c["destinations"][0]["commit"], 2);
    let after = ids(&s, "old");
    assert_eq!(after.len(), 3);
    for e in &before {
        assert!(after.contains(&e.id));
    }
    let marker: serde_json::Value = serde_json::from_slice(&s.read("old/cairn.json")).unwrap();
    assert_eq!(marker["body"]["upgraded_from"], 1);
    // An older cairn finds a catalog it refuses with "upgrade cairn".
    let stub = s.read("old/catalog.json");
    let e = Catalog::parse(&stub).unwrap_err().to_string();
    assert!(e.contains("upgrade cairn"), "{e}");
    s.run(&["restore", "old", "-o", "r2.db"]).ok();
    // An unencrypted archive still opens with plain gunzip.
    let obj = c["object"].as_str().unwrap();
    let out = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(s.path(&format!("old/{obj}")))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, s.read("r2.db"));
}

#[test]
fn an_upgrade_stopped_after_its_import_is_finished_by_the_next_writer() {
    let s = Scratch::new();
    s.make_db("app.db", 200);
    backup(&s, "old");
    make_layout_1(&s, "old");
    backup(&s, "old");
    // Undo the last two steps of the upgrade (marker, stub) and the new
    // backup's commit: what a crash right after the import leaves.
    std::fs::remove_file(s.path("old/log/00000000000000000002.json")).unwrap();
    std::fs::remove_file(s.path("old/cairn.json")).unwrap();
    let entries: Vec<Entry> = {
        let rec: serde_json::Value =
            serde_json::from_slice(&s.read("old/log/00000000000000000001.json")).unwrap();
        serde_json::from_value(rec["body"]["add"].clone()).unwrap()
    };
    let cat = Catalog {
        generation: 1,
        entries,
    };
    std::fs::write(s.path("old/catalog.json"), cat.render()).unwrap();
    assert_eq!(ids(&s, "old").len(), 1, "still read as layout 1");
    backup(&s, "old");
    assert_eq!(ids(&s, "old").len(), 2);
}

#[test]
fn prune_keeps_by_policy_and_deletes_archives() {
    let s = Scratch::new();
    s.make_db("app.db", 200);
    let made: Vec<String> = (0..5)
        .map(|_| backup(&s, "backups")["id"].as_str().unwrap().to_string())
        .collect();
    let dry = s
        .run(&[
            "prune",
            "backups",
            "--keep-last",
            "2",
            "--dry-run",
            "--json",
        ])
        .ok();
    let plan: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(plan["kept"], 2);
    assert_eq!(plan["removed"], 3);
    assert_eq!(ids(&s, "backups").len(), 5, "a dry run changes nothing");
    let text = s.run(&["prune", "backups", "--keep-last", "2"]).ok();
    assert!(
        text.stdout.contains("keep  ") && text.stdout.contains("remove"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("last 2"),
        "a reason per backup: {}",
        text.stdout
    );
    assert_eq!(ids(&s, "backups"), made[3..].to_vec());
    assert_eq!(s.files("backups/snapshots").len(), 2);
    s.run(&["restore", "backups", "-o", "r.db"]).ok();
    // The newest backup is always kept, whatever the policy.
    s.run(&["prune", "backups", "--max-age", "1s"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.run(&["prune", "backups", "--max-age", "1s"]).ok();
    assert_eq!(ids(&s, "backups"), made[4..].to_vec());
    // Bad policies are refused with the flag named.
    s.run(&["prune", "backups"])
        .fails_with(&["retention policy", "empty"]);
    let bad = s.run(&["prune", "backups", "--keep-within", "soon"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--keep-within") && bad.stderr.contains("7d"),
        "{}",
        bad.stderr
    );
    s.run(&["backup", "app.db", "--keep-last", "1"])
        .fails_with(&["--prune"]);
    // backup --prune applies the policy after the backup.
    let r = s
        .run(&["backup", "app.db", "--prune", "--keep-last", "1", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(ids(&s, "backups"), [v["id"].as_str().unwrap()]);
}

#[test]
fn a_prune_racing_backups_never_loses_a_new_backup() {
    let s = Scratch::new();
    s.make_db("app.db", 500);
    backup(&s, "backups");
    let mut kids = Vec::new();
    for i in 0..6 {
        let args: &[&str] = if i % 2 == 0 {
            &["backup", "app.db", "backups", "-q", "--json"]
        } else {
            &["prune", "backups", "--keep-last", "1", "--json"]
        };
        kids.push((
            i % 2 == 0,
            s.cmd(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    let mut made = Vec::new();
    for (is_backup, k) in kids {
        let r = Run::from(k.wait_with_output().unwrap()).ok();
        if is_backup {
            let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
            made.push(v["id"].as_str().unwrap().to_string());
        }
    }
    // The newest backup survives every prune, and every listed backup restores.
    let listed = ids(&s, "backups");
    let newest = made.iter().max().unwrap();
    assert!(listed.contains(newest), "{listed:?} lacks {newest}");
    for id in &listed {
        s.run(&["restore", "backups", "--id", id, "-o", &format!("{id}.db")])
            .ok();
    }
}

#[test]
fn prune_sweeps_dead_temps_and_old_orphans_but_not_fresh_ones() {
    let s = Scratch::new();
    s.make_db("app.db", 200);
    backup(&s, "backups");
    let dead = "backups/snapshots/.x.db.gz.nosuchhost.1.abc.tmp";
    std::fs::write(s.path(dead), b"partial").unwrap();
    // A temp of this host whose process is gone: removed at once.
    let host = cairn::storage::hostname();
    let dead_here = format!("backups/snapshots/.y.db.gz.{host}.999999999.abc.tmp");
    std::fs::write(s.path(&dead_here), b"partial").unwrap();
    // An archive no commit names (a backup killed before its commit); its
    // key carries the time it was written, as every archive key does.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let orphan = format!(
        "backups/snapshots/{}-00000000.db.gz",
        cairn_core::time::compact(now_ms)
    );
    let orphan = orphan.as_str();
    std::fs::write(s.path(orphan), b"orphan").unwrap();
    let r = s
        .run(&["prune", "backups", "--keep-last", "5", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["temps_swept"], 1, "{v}");
    assert!(!s.path(&dead_here).exists());
    assert!(
        s.path(dead).exists(),
        "another host's fresh temp is left alone"
    );
    assert!(
        s.path(orphan).exists(),
        "a fresh orphan is in its grace period"
    );
    // Age them past the grace period.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    for f in [dead, orphan] {
        std::fs::File::options()
            .write(true)
            .open(s.path(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let r = s
        .run(&["prune", "backups", "--keep-last", "5", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["orphans_deleted"], 1, "{v}");
    assert!(!s.path(dead).exists() && !s.path(orphan).exists());
    assert_eq!(ids(&s, "backups").len(), 1);
}

#[test]
fn pull_copies_what_is_missing_verified_and_is_idempotent() {
    let s = Scratch::new();
    s.make_db("app.db", 300);
    s.make_db("other.db", 100);
    backup(&s, "remote");
    backup(&s, "remote");
    s.run(&["backup", "other.db", "remote", "-q"]).ok();
    let first = s.run(&["pull", "remote", "laptop", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(v["pulled"], 2, "the newest of each database: {v}");
    assert_eq!(ids(&s, "laptop").len(), 2);
    let again = s.run(&["pull", "remote", "laptop", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        (v["pulled"].clone(), v["skipped"].clone()),
        (0.into(), 2.into())
    );
    let all = s.run(&["pull", "remote", "laptop", "--all", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(v["pulled"], 1);
    assert_eq!(ids(&s, "laptop").len(), 3);
    s.run(&["restore", "laptop", "--db", "other.db", "-o", "o.db"])
        .ok();
    // A shared destination needs --db (or --id) to pick a database.
    s.run(&["restore", "laptop", "-o", "x.db"])
        .fails_with(&["2 databases", "--db"]);
    // A damaged source archive is never kept under its final name.
    let s2 = Scratch::new();
    s2.make_db("app.db", 300);
    let b = backup(&s2, "remote");
    let obj = format!("remote/{}", b["object"].as_str().unwrap());
    let mut bytes = s2.read(&obj);
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(s2.path(&obj), bytes).unwrap();
    s2.run(&["pull", "remote", "laptop"])
        .fails_with(&["could not be pulled", "nothing partial"]);
    assert!(
        s2.files("laptop/snapshots").is_empty(),
        "{:?}",
        s2.files("laptop")
    );
}

#[test]
fn repair_replays_the_log_and_adopts_orphans() {
    let s = Scratch::new();
    s.make_db("app.db", 200);
    let made: Vec<String> = (0..3)
        .map(|_| backup(&s, "backups")["id"].as_str().unwrap().to_string())
        .collect();
    // Lose the record of the second backup: its archive is now an orphan.
    std::fs::remove_file(s.path("backups/log/00000000000000000002.json")).unwrap();
    assert_eq!(ids(&s, "backups").len(), 2);
    let r = s.run(&["repair", "backups", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["orphans"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        v["problems"][0].as_str().unwrap().contains("missing"),
        "{v}"
    );
    s.run(&["repair", "backups", "--adopt"]).ok();
    let mut listed = ids(&s, "backups");
    listed.sort();
    let mut made = made;
    made.sort();
    assert_eq!(listed, made);
    for id in &made {
        s.run(&["restore", "backups", "--id", id, "-o", &format!("{id}.db")])
            .ok();
    }
}

#[test]
fn checkpoints_bound_what_a_reader_reads() {
    let s = Scratch::new();
    s.make_db("app.db", 50);
    for _ in 0..(cairn_core::layout::CHECKPOINT_EVERY + 2) {
        s.run(&["backup", "app.db", "-q"]).ok();
    }
    let cps = s.files("backups/checkpoints");
    assert_eq!(cps, ["00000000000000000016.json"]);
    // A damaged checkpoint is skipped: the log is read from the start.
    std::fs::write(
        s.path("backups/checkpoints/00000000000000000016.json"),
        b"x",
    )
    .unwrap();
    let r = s.run(&["list", "backups", "--json"]).ok();
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_eq!(ids(&s, "backups").len(), 18);
    s.run(&["repair", "backups"]).ok();
    let r = s.run(&["list", "backups", "--json"]).ok();
    assert!(!r.stderr.contains("damaged"), "{}", r.stderr);
}
