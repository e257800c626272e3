//! The kill table (issue 15 §2): run an operation, SIGKILL cairn at a random
//! moment, then check what a crash may never do. After every kill:
//! - the destination still lists, and its newest backup restores and passes
//!   `integrity_check` with the database's rows;
//! - every object a listed entry names exists (no name points at nothing);
//! - a restore target is absent or a whole, checked database, never half-written;
//! - the next, uninterrupted run succeeds, and afterwards no temp file of
//!   the killed process is left (locally: `.<name>.<host>.<pid>.<rand>.tmp`).
//!
//! `CAIRN_KILL_RUNS` sets the runs per operation (default 4 here;
//! `tests/kill-table.sh` runs 100 and prints the table for docs/RELIABILITY.md),
//! `CAIRN_KILL_SEED` the random seed (printed, so a failure can be replayed).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_e2e::servers::S3Server;
use cairn_e2e::*;

/// A small deterministic generator (xorshift64*): the kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A delay in [0, max).
    fn delay(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.next() % micros)
    }
}

#[derive(Default, Debug)]
struct Row {
    runs: usize,
    /// Runs the kill landed in (the process had not exited yet).
    kills: usize,
    held: usize,
    broke: Vec<String>,
}

struct Setup {
    s: Scratch,
    env: Vec<(String, String)>,
    rows: i64,
}

impl Setup {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.s.cmd(args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run cairn").into()
    }

    /// Starts `args`, kills it after `after`; true if the kill landed.
    fn kill_after(&self, args: &[&str], after: Duration) -> bool {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cairn");
        let t = Instant::now();
        while t.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2).min(after - t.elapsed().min(after)));
        }
        let landed = child.try_wait().unwrap().is_none();
        child.kill().ok();
        child.wait().unwrap();
        landed
    }

    /// What must hold of `dest` after any kill; the problems found.
    fn check_dest(&self, dest: &str, local: Option<&Path>) -> Vec<String> {
        let mut bad = Vec::new();
        let r = self.run(&["list", dest, "--json"]);
        if r.code != 0 {
            return vec![format!("list {dest} failed: {}", r.stderr.trim())];
        }
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let backups = v["backups"].as_array().cloned().unwrap_or_default();
        if backups.is_empty() {
            bad.push(format!("{dest} lists no backup"));
        }
        if let Some(dir) = local {
            for b in &backups {
                let o = b["object"].as_str().unwrap_or_default();
                if !dir.join(o).is_file() {
                    bad.push(format!("{dest}: listed object {o} is missing"));
                }
            }
        }
        let out = self.s.path("check.db");
        let _ = std::fs::remove_file(&out);
        let r = self.run(&["restore", dest, "-o", "check.db", "-q"]);
        if r.code != 0 {
            bad.push(format!("restore of {dest} failed: {}", r.stderr.trim()));
        } else if !integrity_ok(&out) || count_rows(&out) != self.rows {
            bad.push(format!("the restore of {dest} is not the database"));
        }
        bad
    }
}

/// Temp files left in a local directory tree (names `.….tmp`).
fn temps(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            // cairn's scratch space (TMPDIR), not a destination
            if name != ".tmp" {
                out.extend(temps(&p));
            }
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            out.push(p.display().to_string());
        }
    }
    out
}

fn runs() -> usize {
    std::env::var("CAIRN_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn seed() -> u64 {
    let s = std::env::var("CAIRN_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill table: CAIRN_KILL_SEED={s}");
    s | 1
}

/// One operation of the table: how to run it, and what to check after.
struct Op<'a> {
    name: &'a str,
    args: Vec<String>,
    /// Destinations to check, with their local directory when they have one.
    dests: Vec<(String, Option<std::path::PathBuf>)>,
    /// Local directories whose temps the next run must have removed.
    temp_dirs: Vec<std::path::PathBuf>,
    /// The restore target that must never be half-written.
    target: Option<&'a str>,
    /// Run before each kill (e.g. a backup so that prune has work).
    before: Option<Vec<String>>,
}

fn table(setup: &Setup, ops: &[Op], rng: &mut Rng) -> Vec<(String, Row)> {
    let mut out = Vec::new();
    for op in ops {
        let args: Vec<&str> = op.args.iter().map(String::as_str).collect();
        // How long one run takes: kills land anywhere in [0, 0.9 x that).
        let t = Instant::now();
        setup.run(&args).ok();
        let mut span = t.elapsed().mul_f64(0.9);
        let mut row = Row::default();
        for i in 0..runs() {
            if let Some(b) = &op.before {
                let b: Vec<&str> = b.iter().map(String::as_str).collect();
                setup.run(&b).ok();
            }
            row.runs += 1;
            if setup.kill_after(&args, rng.delay(span)) {
                row.kills += 1;
            } else {
                // It finished first: the timed run was slower than this
                // one (a loaded machine), so aim earlier from now on.
                span /= 2;
            }
            let mut bad = Vec::new();
            if let Some(target) = op.target {
                let p = setup.s.path(target);
                if p.exists() && (!integrity_ok(&p) || count_rows(&p) != setup.rows) {
                    bad.push(format!("{target} is half-written under its final name"));
                }
            }
            for (d, local) in &op.dests {
                bad.extend(setup.check_dest(d, local.as_deref()));
            }
            let next = setup.run(&args);
            if next.code != 0 {
                bad.push(format!("the next run failed: {}", next.stderr.trim()));
            }
            // Beside a restore target nothing may stay but the target,
            // whatever a killed run named its temps.
            if let Some(target) = op.target {
                let p = setup.s.path(target);
                let dir = p.parent().expect("a target in a directory");
                let name = p.file_name().expect("a file name");
                let other: Vec<String> = std::fs::read_dir(dir)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_name() != name)
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if !other.is_empty() {
                    bad.push(format!(
                        "left beside {target} after the next run: {other:?}"
                    ));
                }
            }
            for d in &op.temp_dirs {
                let left = temps(d);
                if !left.is_empty() {
                    bad.push(format!("temp files left after the next run: {left:?}"));
                }
            }
            if bad.is_empty() {
                row.held += 1;
            } else {
                row.broke.push(format!("run {i}: {}", bad.join("; ")));
            }
        }
        out.push((op.name.to_string(), row));
    }
    out
}

/// A replica of a WAL-mode copy of app.db (same rows) in `rep`: replicated
/// until its first generation is listed, then stopped with SIGTERM.
fn replica(setup: &Setup) {
    let s = &setup.s;
    std::fs::copy(s.path("app.db"), s.path("wal.db")).unwrap();
    rusqlite::Connection::open(s.path("wal.db"))
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL;")
        .unwrap();
    let child = setup
        .cmd(&["replicate", "wal.db", "rep", "--interval", "20ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn replicate");
    let t0 = Instant::now();
    loop {
        let listed = setup.run(&["list", "rep", "--generations", "--json"]);
        if listed.code == 0 && listed.stdout.contains("first_txid") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the replica in rep has no generation after 60 s: {}",
            listed.stderr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait for cairn replicate");
    assert!(
        out.status.success(),
        "cairn replicate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sigkill_at_random_moments_never_breaks_a_destination() {
    let s3 = S3Server::s3s_fs();
    let s = Scratch::new();
    s.make_db("app.db", 60_000);
    let rows = count_rows(&s.path("app.db"));
    let env = s3.env();
    let setup = Setup { s, env, rows };
    let p = |r: &str| setup.s.path(r);
    let mut rng = Rng(seed());
    for d in ["d", "f"] {
        setup.run(&["backup", "app.db", d]).ok();
    }
    let mut ops = vec![
        Op {
            name: "backup (local)",
            args: strings(&["backup", "app.db", "d", "-q"]),
            dests: vec![("d".into(), Some(p("d")))],
            temp_dirs: vec![p("d")],
            target: None,
            before: None,
        },
        Op {
            name: "restore (local)",
            args: strings(&["restore", "d", "-o", "rt/r.db", "-q", "--force"]),
            dests: vec![("d".into(), Some(p("d")))],
            // The next restore removes a killed one's temp beside the target.
            temp_dirs: vec![p("d"), p("rt")],
            target: Some("rt/r.db"),
            before: None,
        },
        Op {
            name: "verify (local, sandboxed)",
            args: strings(&["verify", "d", "-q"]),
            dests: vec![("d".into(), Some(p("d")))],
            temp_dirs: vec![p("d")],
            target: None,
            before: None,
        },
        Op {
            name: "prune (local)",
            args: strings(&["prune", "d", "--keep-last", "2"]),
            dests: vec![("d".into(), Some(p("d")))],
            temp_dirs: vec![p("d")],
            target: None,
            before: Some(strings(&["backup", "app.db", "d", "-q"])),
        },
        Op {
            name: "pull (local to local)",
            args: strings(&["pull", "d", "pulled", "--all"]),
            dests: vec![("pulled".into(), Some(p("pulled")))],
            // The next pull removes a killed download's temp.
            temp_dirs: vec![p("pulled")],
            target: None,
            before: Some(strings(&["backup", "app.db", "d", "-q"])),
        },
    ];
    replica(&setup);
    ops.push(Op {
        name: "restore (local replica)",
        args: strings(&["restore", "rep", "-o", "rr/r.db", "-q", "--force"]),
        dests: vec![],
        // The next restore removes a killed one's temps beside the target.
        temp_dirs: vec![p("rr")],
        target: Some("rr/r.db"),
        before: None,
    });
    let url = s3.url("kill");
    setup.run(&["backup", "app.db", &url]).ok();
    ops.push(Op {
        name: "backup (S3)",
        args: vec!["backup".into(), "app.db".into(), url.clone(), "-q".into()],
        dests: vec![(url.clone(), None)],
        temp_dirs: vec![],
        target: None,
        before: None,
    });
    ops.push(Op {
        name: "fan-out backup (local + S3)",
        args: vec![
            "backup".into(),
            "app.db".into(),
            "f".into(),
            url.clone(),
            "-q".into(),
        ],
        dests: vec![("f".into(), Some(p("f"))), (url.clone(), None)],
        temp_dirs: vec![p("f")],
        target: None,
        before: None,
    });
    ops.push(Op {
        name: "prune (S3)",
        args: vec![
            "prune".into(),
            url.clone(),
            "--keep-last".into(),
            "2".into(),
        ],
        dests: vec![(url.clone(), None)],
        temp_dirs: vec![],
        target: None,
        before: Some(vec![
            "backup".into(),
            "app.db".into(),
            url.clone(),
            "-q".into(),
        ]),
    });
    let results = table(&setup, &ops, &mut rng);
    eprintln!("| operation | runs | kills | held | broke |");
    eprintln!("|---|---|---|---|---|");
    for (name, r) in &results {
        eprintln!(
            "| {name} | {} | {} | {} | {} |",
            r.runs,
            r.kills,
            r.held,
            r.broke.len()
        );
    }
    let broke: Vec<String> = results
        .iter()
        .flat_map(|(n, r)| r.broke.iter().map(move |b| format!("{n}: {b}")))
        .collect();
    assert!(
        broke.is_empty(),
        "kills broke something:\n{}",
        broke.join("\n")
    );
    // Kills must land mid-run, or the table proves nothing.
    for (name, r) in &results {
        assert!(
            r.kills > 0,
            "{name}: none of {} kills landed before the process exited",
            r.runs
        );
    }
}

/// The newest state of a replica restored: a prefix of the writer's
/// commits with their content, passing integrity_check; the problems found.
fn check_replica(setup: &Setup, dest: &str, commits: &[writer::Commit]) -> Vec<String> {
    let mut bad = Vec::new();
    for args in [
        vec!["list", dest, "--json"],
        vec!["list", dest, "--generations", "--json"],
        vec!["list", dest, "--segments", "--json"],
    ] {
        let r = setup.run(&args);
        if r.code != 0 {
            bad.push(format!("{} failed: {}", args.join(" "), r.stderr.trim()));
        }
    }
    let out = setup.s.path("check-rep.db");
    let _ = std::fs::remove_file(&out);
    let r = setup.run(&["restore", dest, "-o", "check-rep.db", "-q"]);
    if r.code != 0 {
        bad.push(format!("restore of {dest} failed: {}", r.stderr.trim()));
        return bad;
    }
    if !integrity_ok(&out) {
        bad.push(format!("the restore of {dest} fails integrity_check"));
    }
    match writer::last_commit(&out) {
        Err(e) => bad.push(e),
        Ok(0) => {}
        Ok(k) => {
            let fp = rusqlite::Connection::open(&out)
                .ok()
                .and_then(|c| writer::fingerprint(&c).ok());
            match commits.get(k as usize - 1) {
                None => bad.push(format!("restored commit {k}, never committed")),
                Some(c) if fp.as_deref() != Some(c.fingerprint.as_str()) => {
                    bad.push(format!("restored commit {k} with other content: {fp:?}"))
                }
                Some(_) => {}
            }
        }
    }
    bad
}

/// Every segment a reader can find in a local replica is a whole gzip
/// container (an unencrypted segment is one, FORMAT §13.3).
fn partial_segments(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.join("generations")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".seg.gz") && !name.starts_with('.') {
                let ok = std::process::Command::new("gzip")
                    .arg("-t")
                    .arg(&p)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    bad.push(format!("{} is not a whole segment", p.display()));
                }
            }
        }
    }
    bad
}

/// The kill table's replication rows: `cairn replicate` SIGKILLed at a
/// random moment while an application commits; after each kill the replica
/// lists and restores a prefix of the commits, every segment a reader can
/// find is whole, and the next run takes over, starts its generation, stops
/// cleanly and leaves no temp file of the killed one.
#[test]
fn sigkill_during_replication_never_breaks_a_replica() {
    let s3 = S3Server::s3s_fs();
    let s = Scratch::new();
    let db = s.path("app.db");
    writer::create(&db);
    let env = s3.env();
    let setup = Setup { s, env, rows: 0 };
    let seed = seed();
    let mut rng = Rng(seed);
    let w = writer::Writer::start(
        &db,
        writer::WriterOptions {
            seed,
            max_blob: 256 << 10,
            ..Default::default()
        },
    );
    let mut dests: Vec<(&str, String, Option<std::path::PathBuf>)> =
        vec![("replicate (local)", "rep".into(), Some(setup.s.path("rep")))];
    dests.push(("replicate (S3)", s3.url("krep"), None));
    let generations = |dest: &str| -> usize {
        let r = setup.run(&["list", dest, "--generations", "--json"]);
        serde_json::from_str::<serde_json::Value>(&r.stdout)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    let replicate = |dest: &str| {
        setup
            .cmd(&["replicate", "app.db", dest, "--interval", "20ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cairn replicate")
    };
    // One clean run that ends once its generation is listed: Err(why) if not.
    let clean_run = |dest: &str| -> Result<(), String> {
        let n = generations(dest);
        let child = replicate(dest);
        let t0 = Instant::now();
        while generations(dest) <= n {
            if t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        if out.status.success() && generations(dest) > n {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let mut results = Vec::new();
    for (name, dest, local) in &dests {
        clean_run(dest).expect("the first replication run");
        let mut row = Row::default();
        for i in 0..runs() {
            row.runs += 1;
            let mut child = replicate(dest);
            let after = rng.delay(Duration::from_millis(2500));
            let t = Instant::now();
            while t.elapsed() < after && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            if child.try_wait().unwrap().is_none() {
                row.kills += 1;
            }
            let _ = child.kill();
            let _ = child.wait();
            let commits = w.commits();
            let mut bad = check_replica(&setup, dest, &commits);
            if let Some(dir) = local {
                bad.extend(partial_segments(dir));
            }
            if let Err(e) = clean_run(dest) {
                bad.push(format!("the next run failed: {e}"));
            }
            if let Some(dir) = local {
                let left = temps(dir);
                if !left.is_empty() {
                    bad.push(format!("temp files left after the next run: {left:?}"));
                }
            }
            if bad.is_empty() {
                row.held += 1;
            } else {
                row.broke.push(format!("run {i}: {}", bad.join("; ")));
            }
        }
        results.push((name.to_string(), row));
    }
    let (commits, _) = w.stop();
    eprintln!(
        "replication kill table ({} commits by the writer):",
        commits.len()
    );
    eprintln!("| operation | runs | kills | held | broke |");
    eprintln!("|---|---|---|---|---|");
    for (name, r) in &results {
        eprintln!(
            "| {name} | {} | {} | {} | {} |",
            r.runs,
            r.kills,
            r.held,
            r.broke.len()
        );
    }
    let broke: Vec<String> = results
        .iter()
        .flat_map(|(n, r)| r.broke.iter().map(move |b| format!("{n}: {b}")))
        .collect();
    assert!(
        broke.is_empty(),
        "kills broke something:\n{}",
        broke.join("\n")
    );
    for (name, r) in &results {
        assert!(r.kills > 0, "{name}: none of {} kills landed", r.runs);
    }
}
