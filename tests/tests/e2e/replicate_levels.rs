//! Replicas over time (docs/FORMAT.md §13.9–§13.10), with the real binary,
//! into a local directory and the S3 servers: compaction into levels while
//! replicating (merged segments written, covered level-0 ones deleted after
//! their grace, every restore point it promises still restorable), `prune`
//! of whole generations with their snapshots and segments, and zstd
//! segments.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_e2e::servers::S3Server;
use cairn_e2e::{Run, Scratch, count_rows};
use rusqlite::Connection;
use serde_json::Value;

type Env = [(String, String)];

struct Replicator(Option<Child>);

impl Replicator {
    fn start(s: &Scratch, dest: &str, extra: &[&str], env: &Env) -> Self {
        let mut args = vec!["replicate", "app.db", dest, "--interval", "20ms"];
        args.extend_from_slice(extra);
        let child = s
            .cmd(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairn replicate");
        Replicator(Some(child))
    }

    /// SIGTERM; the run must end cleanly. Returns its `--json` report.
    fn stop(mut self) -> Value {
        let child = self.0.take().expect("running");
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out: Run = child.wait_with_output().expect("wait").into();
        let out = out.ok();
        serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn run(s: &Scratch, args: &[&str], env: &Env) -> Run {
    s.cmd(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap()
        .into()
}

fn json(s: &Scratch, args: &[&str], env: &Env) -> Value {
    let r = run(s, args, env).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn segments(s: &Scratch, dest: &str, env: &Env) -> Vec<Value> {
    json(s, &["list", dest, "--segments", "--json"], env)
        .as_array()
        .cloned()
        .unwrap()
}

/// The generations listed; none while the destination is still empty.
fn generations(s: &Scratch, dest: &str, env: &Env) -> Vec<Value> {
    let out = s
        .cmd(&["list", dest, "--generations", "--json"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Whether a level-0 segment lies inside a merged one.
fn covered(l0: &Value, all: &[Value]) -> bool {
    all.iter().any(|h| {
        num(h, "level") > 0
            && num(h, "min_txid") <= num(l0, "min_txid")
            && num(l0, "max_txid") <= num(h, "max_txid")
    })
}

/// One transaction of `rows` rows.
fn commit_rows(c: &Connection, start: u32, rows: u32) {
    cairn_e2e::insert_rows(c, start, rows);
}

fn open(s: &Scratch) -> Connection {
    let c = Connection::open(s.path("app.db")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn live(s: &Scratch) -> Vec<u8> {
    let c = Connection::open(s.path("app.db")).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    std::fs::read(s.path("app.db")).unwrap()
}

/// Replicates with short levels (1 s, 3 s) and a 2 s grace; writes bursts
/// of one transaction each; waits until level-2 segments exist and every
/// covered level-0 segment is gone; then restores the newest state, every
/// merged segment's end by txid, and a time after each burst.
fn compaction_while_replicating(s: &Scratch, dest: &str, env: &Env, extra: &[&str]) {
    s.make_db("app.db", 50);
    let mut args = vec!["--compact", "1s,3s", "--keep-compacted", "2s", "--json"];
    args.extend_from_slice(extra);
    let rep = Replicator::start(s, dest, &args, env);
    let t0 = Instant::now();
    while generations(s, dest, env).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no generation");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = open(s);
    // (time after the commit was surely shipped, rows then)
    let mut marks: Vec<(i64, i64)> = Vec::new();
    let mut next = 1000;
    for burst in 0..12 {
        for _ in 0..3 {
            commit_rows(&c, next, 5);
            next += 5;
            std::thread::sleep(Duration::from_millis(60));
        }
        if burst % 4 == 3 {
            std::thread::sleep(Duration::from_millis(1200));
        }
        std::thread::sleep(Duration::from_millis(300));
        marks.push((now_ms(), count_rows(&s.path("app.db"))));
    }
    drop(c);
    // Compaction catches up: a level-2 segment, no covered level 0 left.
    let t0 = Instant::now();
    loop {
        let segs = segments(s, dest, env);
        let l2 = segs.iter().any(|x| num(x, "level") == 2);
        let left = segs
            .iter()
            .filter(|x| num(x, "level") == 0 && covered(x, &segs))
            .count();
        if l2 && left == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "compaction did not catch up: level 2 {l2}, covered level 0 left {left}: {segs:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = rep.stop();
    assert!(
        report["compaction"]["merged"].as_u64().unwrap_or(0) >= 2,
        "{report}"
    );
    assert!(
        report["compaction"]["deleted"].as_u64().unwrap_or(0) >= 2,
        "{report}"
    );

    // The newest state: the live database, page for page, from few objects.
    let segs = segments(s, dest, env);
    let r = json(s, &["restore", dest, "-o", "newest.db", "--json"], env);
    assert_eq!(std::fs::read(s.path("newest.db")).unwrap(), live(s));
    // Level 2 every ~3 s of ~10 s of writes, the level 1 after the last
    // one, perhaps a lone level 0: a handful, not one per poll.
    assert!(
        num(&r, "segments") <= 12,
        "the newest restore read {} segments of {}: {segs:?}",
        num(&r, "segments"),
        segs.len()
    );

    // Every merged segment's end is a restore point.
    let mut merged_ends: Vec<(i64, i64)> = Vec::new(); // (its upload time, rows)
    for (i, h) in segs.iter().filter(|x| num(x, "level") > 0).enumerate() {
        let out = format!("tx{i}.db");
        let end = num(h, "max_txid");
        let r = json(
            s,
            &[
                "restore",
                dest,
                "-o",
                &out,
                "--txid",
                &end.to_string(),
                "--json",
            ],
            env,
        );
        assert_eq!(num(&r, "txid"), end, "{r}");
        assert!(cairn_e2e::integrity_ok(&s.path(&out)));
        if let Some(t) = h["modified_ms"].as_i64() {
            merged_ends.push((t, count_rows(&s.path(&out))));
        }
    }
    // A time after each burst: a state that existed then (no newer), and
    // no older than a merged segment uploaded by then (its end, committed
    // before its upload, is a restore point before the time).
    for (i, (t, rows)) in marks.iter().enumerate() {
        let out = format!("t{i}.db");
        run(
            s,
            &[
                "restore",
                dest,
                "-o",
                &out,
                "--timestamp",
                &cairn_core::time::rfc3339(*t),
            ],
            env,
        )
        .ok();
        let got = count_rows(&s.path(&out));
        let floor = merged_ends
            .iter()
            .filter(|(m, _)| m <= t)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0);
        assert!(
            floor <= got && got <= *rows,
            "restore at mark {i}: {got} rows, {rows} then, at least {floor}"
        );
    }
    // The last mark is after everything: exact.
    assert_eq!(
        count_rows(&s.path(&format!("t{}.db", marks.len() - 1))),
        marks.last().unwrap().1
    );
}

#[test]
fn local_compaction_into_levels_keeps_restore_points() {
    let s = Scratch::new();
    compaction_while_replicating(&s, "replica", &[], &[]);
    // Merged segments are files of their level's directory, zstd like
    // every replica object by default (FORMAT §13.3).
    let gens = generations(&s, "replica", &[]);
    let g = gens[0]["id"].as_str().unwrap();
    let l1 = s.files(&format!("replica/generations/{g}/segments/01"));
    assert!(
        !l1.is_empty() && l1.iter().all(|f| f.ends_with(".seg.zst")),
        "{l1:?}"
    );
}

#[test]
fn s3_compaction_into_levels_with_zstd_segments() {
    let server = S3Server::s3s_fs();
    let s = Scratch::new();
    let dest = server.url("levels");
    compaction_while_replicating(&s, &dest, &server.env(), &["--codec", "zstd"]);
    let segs = segments(&s, &dest, &server.env());
    assert!(
        segs.iter()
            .all(|x| x["key"].as_str().unwrap().ends_with(".seg.zst")),
        "{segs:?}"
    );
}

/// Three runs of the replicator make three generations; prune with
/// keep-last 2 removes the oldest with its snapshot and every segment, and
/// keeps the others restorable; covered level-0 segments go with
/// `--keep-compacted`.
fn prune_generations(s: &Scratch, dest: &str, env: &Env) {
    s.make_db("app.db", 20);
    let mut ends = Vec::new();
    let mut next = 1000;
    for round in 0..3 {
        // Level 1 after 1 s; level-0 segments kept an hour (prune removes them).
        let rep = Replicator::start(s, dest, &["--compact", "1s", "--keep-compacted", "1h"], env);
        let t0 = Instant::now();
        while generations(s, dest, env).len() < round + 1 {
            assert!(t0.elapsed() < Duration::from_secs(60), "no generation");
            std::thread::sleep(Duration::from_millis(50));
        }
        let c = open(s);
        for _ in 0..6 {
            commit_rows(&c, next, 3);
            next += 3;
            std::thread::sleep(Duration::from_millis(80));
        }
        drop(c);
        // Wait for a level-1 segment in this generation.
        let g = generations(s, dest, env)[round]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let t0 = Instant::now();
        while !segments(s, dest, env)
            .iter()
            .any(|x| x["generation"] == g.as_str() && num(x, "level") == 1)
        {
            assert!(t0.elapsed() < Duration::from_secs(60), "no level 1 in {g}");
            std::thread::sleep(Duration::from_millis(200));
        }
        rep.stop();
        std::thread::sleep(Duration::from_millis(1100));
        ends.push((now_ms(), count_rows(&s.path("app.db"))));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let gens = generations(s, dest, env);
    assert_eq!(gens.len(), 3, "{gens:?}");
    let (old, old_snap) = (
        gens[0]["id"].as_str().unwrap().to_string(),
        gens[0]["snapshot"].as_str().unwrap().to_string(),
    );
    // A dry run says what would go: the oldest generation and its snapshot.
    let plan = json(
        s,
        &["prune", dest, "--keep-last", "2", "--dry-run", "--json"],
        env,
    );
    let decided = |id: &str| {
        plan["plan"][0]["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {plan}"))
    };
    assert_eq!(decided(&old)["keep"], false);
    assert_eq!(decided(&old_snap)["keep"], false);
    for g in &gens[1..] {
        assert_eq!(decided(g["id"].as_str().unwrap())["keep"], true);
        let snap = decided(g["snapshot"].as_str().unwrap());
        assert_eq!(snap["keep"], true, "{snap}");
        assert!(
            snap["reasons"][0]
                .as_str()
                .unwrap()
                .contains("snapshot of generation")
        );
    }
    let before = segments(s, dest, env);
    assert!(before.iter().any(|x| x["generation"] == old.as_str()));
    let covered_before = before
        .iter()
        .filter(|x| num(x, "level") == 0 && covered(x, &before))
        .count();
    assert!(covered_before > 0, "{before:?}");

    // Prune: the oldest generation goes, with its snapshot and segments;
    // covered level-0 segments of the others go too (grace 1 s).
    let r = json(
        s,
        &[
            "prune",
            dest,
            "--keep-last",
            "2",
            "--keep-compacted",
            "1s",
            "--json",
        ],
        env,
    );
    assert_eq!(num(&r, "removed"), 2, "{r}");
    assert!(num(&r, "segments_deleted") > 0, "{r}");
    let gens = generations(s, dest, env);
    assert_eq!(gens.len(), 2);
    assert!(gens.iter().all(|g| g["id"] != old.as_str()));
    let after = segments(s, dest, env);
    assert!(
        after.iter().all(|x| x["generation"] != old.as_str()),
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .all(|x| num(x, "level") > 0 || !covered(x, &after)),
        "covered level-0 segments remain: {after:?}"
    );
    let listed = json(s, &["list", dest, "--json"], env);
    assert!(!listed.to_string().contains(&old_snap), "{listed}");

    // What is kept restores: the newest state, and the end of round 2.
    run(s, &["restore", dest, "-o", "newest.db"], env).ok();
    assert_eq!(std::fs::read(s.path("newest.db")).unwrap(), live(s));
    let (t2, rows2) = ends[1];
    run(
        s,
        &[
            "restore",
            dest,
            "-o",
            "r2.db",
            "--timestamp",
            &cairn_core::time::rfc3339(t2),
        ],
        env,
    )
    .ok();
    assert_eq!(count_rows(&s.path("r2.db")), rows2);
    // The end of round 1 is gone with its generation.
    let (t1, _) = ends[0];
    run(
        s,
        &[
            "restore",
            dest,
            "-o",
            "r1.db",
            "--timestamp",
            &cairn_core::time::rfc3339(t1),
        ],
        env,
    )
    .fails_with(&["no generation", "reaches back"]);
    // A second prune finds nothing more to do.
    let r = json(s, &["prune", dest, "--keep-last", "2", "--json"], env);
    assert_eq!(num(&r, "removed"), 0, "{r}");
}

#[test]
fn local_prune_removes_whole_generations_and_compacted_segments() {
    let s = Scratch::new();
    prune_generations(&s, "replica", &[]);
    let gens = generations(&s, "replica", &[]);
    // On disk: only the kept generations' directories hold segments.
    let files = s.files("replica/generations");
    assert!(!files.is_empty());
    for f in &files {
        let g = f.split('/').next().unwrap();
        assert!(gens.iter().any(|x| x["id"] == g), "{f} is left over");
    }
}

#[test]
fn moto_prune_removes_whole_generations_and_compacted_segments() {
    let Some(server) = S3Server::moto() else {
        return;
    };
    let s = Scratch::new();
    prune_generations(&s, &server.url("pruned"), &server.env());
}
