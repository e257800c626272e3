//! Backups under load (issue 15 §3): live writers committing while backups
//! run, in WAL and in rollback-journal mode, and several backups, restores
//! and verifies of different databases running at once in one destination.
//! Every restored backup must hold exactly a prefix of the commits, and
//! every successful backup must be listed and restorable.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_e2e::servers::S3Server;
use cairn_e2e::{Run, Scratch, count_rows, integrity_ok};
use rusqlite::Connection;

/// A database with tables `a` and `b` (one row of each per commit, same
/// `seq`: a torn transaction shows as a difference) and ~4 MiB of filler so
/// that a backup takes long enough for commits to land during it.
fn make_db(path: &Path, journal_mode: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={journal_mode};
         CREATE TABLE a(seq INTEGER PRIMARY KEY, pad BLOB NOT NULL);
         CREATE TABLE b(seq INTEGER PRIMARY KEY);
         CREATE TABLE filler(id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
         INSERT INTO filler(data) SELECT randomblob(1000) FROM n;"
    ))
    .unwrap();
}

struct Writer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(i64, Duration)>,
}

impl Writer {
    /// Commits transactions numbered 1, 2, 3, … at about 500 per second
    /// until stopped.
    fn start(db: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(60)).unwrap();
            let period = Duration::from_micros(2000);
            let (t0, mut seq, mut worst) = (Instant::now(), 0i64, Duration::ZERO);
            while !flag.load(Ordering::Relaxed) {
                seq += 1;
                let t = Instant::now();
                let tx = c.unchecked_transaction().unwrap();
                tx.execute(
                    "INSERT INTO a(seq, pad) VALUES (?1, randomblob(200))",
                    [seq],
                )
                .unwrap();
                tx.execute("INSERT INTO b(seq) VALUES (?1)", [seq]).unwrap();
                tx.commit().unwrap();
                worst = worst.max(t.elapsed());
                let due = t0 + period.mul_f64(seq as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            (seq, worst)
        });
        Writer { stop, thread }
    }

    /// Stops the writer: (commits, worst commit latency).
    fn stop(self) -> (i64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer thread failed")
    }
}

/// (rows of a, max seq of a, rows of b, max seq of b, min seq of a).
fn seqs(db: &Path) -> (i64, i64, i64, i64, i64) {
    let c = Connection::open(db).unwrap();
    let q = |t: &str| -> (i64, i64, i64) {
        c.query_row(
            &format!("SELECT count(*), coalesce(max(seq), 0), coalesce(min(seq), 0) FROM {t}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let (na, ma, mina) = q("a");
    let (nb, mb, _) = q("b");
    (na, ma, nb, mb, mina)
}

fn backup_id(s: &Scratch, db: &str, dest: &str) -> String {
    let r = s.run(&["backup", db, dest, "-q", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn backups_under_live_writers_hold_exactly_a_prefix_of_the_commits() {
    let s = Scratch::new();
    let modes = [("wal.db", "WAL", "dw"), ("rollback.db", "DELETE", "dr")];
    for (db, mode, _) in modes {
        make_db(&s.path(db), mode);
    }
    let writers: Vec<Writer> = modes
        .iter()
        .map(|(db, _, _)| Writer::start(s.path(db)))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let mut ids: Vec<(usize, String)> = Vec::new();
    for _ in 0..4 {
        for (i, (db, _, dest)) in modes.iter().enumerate() {
            ids.push((i, backup_id(&s, db, dest)));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let stopped: Vec<(i64, Duration)> = writers.into_iter().map(Writer::stop).collect();
    for (i, (_, mode, _)) in modes.iter().enumerate() {
        let (commits, worst) = stopped[i];
        eprintln!(
            "live writer ({mode} mode): {commits} commits in {secs:.1} s ({:.0}/s) \
             during 4 backups; worst commit latency {:.1} ms",
            commits as f64 / secs,
            worst.as_secs_f64() * 1000.0
        );
    }
    let mut last_max = vec![0i64; modes.len()];
    let mut distinct = vec![std::collections::BTreeSet::new(); modes.len()];
    for (i, id) in &ids {
        let (_, mode, dest) = modes[*i];
        let out = format!("r-{id}.db");
        s.run(&["restore", dest, "--id", id, "-o", &out]).ok();
        let p = s.path(&out);
        assert!(
            integrity_ok(&p),
            "{mode}: backup {id} fails integrity_check"
        );
        let (na, ma, nb, mb, mina) = seqs(&p);
        assert_eq!(
            (na, nb),
            (ma, mb),
            "{mode}: backup {id} is not a prefix of the commits: a has {na} rows up to {ma}, b has {nb} up to {mb}"
        );
        assert_eq!(ma, mb, "{mode}: backup {id} holds a torn transaction");
        assert!(na == 0 || mina == 1, "{mode}: backup {id} starts at {mina}");
        assert!(
            ma <= stopped[*i].0,
            "{mode}: backup {id} holds {ma} commits, more than the writer made"
        );
        assert!(
            ma >= last_max[*i],
            "{mode}: backup {id} holds fewer commits ({ma}) than the backup before it ({})",
            last_max[*i]
        );
        last_max[*i] = ma;
        distinct[*i].insert(ma);
    }
    for (i, (_, mode, _)) in modes.iter().enumerate() {
        assert!(
            distinct[i].len() > 1,
            "{mode}: every backup held the same {:?} commits: the writer was not live during them",
            distinct[i]
        );
    }
}

fn spawn(s: &Scratch, env: &[(String, String)], args: &[&str]) -> Child {
    s.cmd(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn")
}

fn run(s: &Scratch, env: &[(String, String)], args: &[&str]) -> Run {
    spawn(s, env, args).wait_with_output().unwrap().into()
}

fn listed(s: &Scratch, env: &[(String, String)], dest: &str) -> Vec<String> {
    let r = run(s, env, &["list", dest, "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// Three backups each of two databases into `dest` at once, with restores
/// and a verify of the earlier backups running during them.
fn everything_at_once(s: &Scratch, env: &[(String, String)], dest: &str) {
    let rows = [
        ("a.db", count_rows(&s.path("a.db"))),
        ("b.db", count_rows(&s.path("b.db"))),
    ];
    let first: Vec<String> = rows
        .iter()
        .map(|(db, _)| {
            let r = run(s, env, &["backup", db, dest, "-q", "--json"]).ok();
            serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let tag = dest.replace(['/', ':'], "_");
    let mut backups = Vec::new();
    let mut others = Vec::new();
    for round in 0..3 {
        for (db, _) in rows {
            backups.push((db, spawn(s, env, &["backup", db, dest, "-q", "--json"])));
            let out = format!("{tag}-{round}-{db}");
            others.push((
                format!("restore of {db}"),
                spawn(s, env, &["restore", dest, "--db", db, "-o", &out, "-q"]),
            ));
        }
    }
    others.push((
        "verify --all".into(),
        spawn(s, env, &["verify", dest, "--all", "-q"]),
    ));
    let mut made = first.clone();
    let mut made_db: Vec<(String, &str)> = first
        .iter()
        .cloned()
        .zip(rows.iter().map(|(db, _)| *db))
        .collect();
    for (db, child) in backups {
        let r = Run::from(child.wait_with_output().unwrap()).ok();
        let id = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        made.push(id.clone());
        made_db.push((id, db));
    }
    for (what, child) in others {
        let r = Run::from(child.wait_with_output().unwrap());
        assert_eq!(
            r.code, 0,
            "{dest}: {what} during the backups failed: {}",
            r.stderr
        );
    }
    let mut got = listed(s, env, dest);
    got.sort();
    made.sort();
    assert_eq!(got, made, "{dest}: not every successful backup is listed");
    for (id, db) in made_db {
        let out = format!("{tag}-{id}.db");
        run(s, env, &["restore", dest, "--id", &id, "-o", &out, "-q"]).ok();
        let want = rows.iter().find(|(d, _)| *d == db).unwrap().1;
        assert_eq!(
            count_rows(&s.path(&out)),
            want,
            "{dest}: backup {id} of {db}"
        );
    }
}

#[test]
fn concurrent_backups_restores_and_verifies_of_two_databases_all_hold() {
    let s = Scratch::new();
    s.make_db("a.db", 20_000);
    s.make_db("b.db", 8_000);
    everything_at_once(&s, &[], "shared");
    // On S3, where nothing can lock: conditional writes only.
    if let Some(srv) = S3Server::moto() {
        everything_at_once(&s, &srv.env(), &srv.url("shared"));
    }
}
