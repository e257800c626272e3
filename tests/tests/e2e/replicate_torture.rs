//! Replication, proven (issue 13 §5): a writer runs random transactions
//! (inserts, updates, deletes, blobs up to 1 MiB, schema changes, VACUUM,
//! its own PASSIVE and TRUNCATE checkpoints) and logs every commit; beside
//! it `cairn replicate` into the S3 server is SIGKILLed and restarted at
//! random moments, and a fault-injecting proxy in front of S3 fails segment
//! uploads for stretches of the run. Afterwards, restores at many moments
//! hold exactly the commits logged before each, with their content, and
//! the newest restore equals the live database page for page.
//!
//! Which moments: `T` with the last commit before it at least a margin
//! before `T` (it was seen by a poll well before), the next one begun after
//! `T`, inside a replicator run that started its generation before `T` and
//! lived on well past it, and away from fault stretches (a segment delayed
//! by retries is shipped with its seen time, but a run killed while it was
//! delayed never ships it: that is downtime, not a moment to restore to).
//!
//! `CAIRN_TORTURE_SECS` (default 25) sets the length (stretched up to three
//! times while fewer than three moments qualify), `CAIRN_TORTURE_SEED`
//! replays a run's choices, `CAIRN_TORTURE_POINTS` (default 12) the moments checked;
//! `tests/replicate-torture.sh` runs the long version.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::proxy::{Fault, FaultProxy};
use cairn_e2e::servers::S3Server;
use cairn_e2e::writer::{self, Commit, Rng, Writer, WriterOptions, last_commit, now_ms};
use cairn_e2e::{Scratch, integrity_ok};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Ctx {
    s: Scratch,
    dest: String,
    env: Vec<(String, String)>,
}

impl Ctx {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.s.cmd(args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn replicate(&self, log: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.s.path(log))
            .unwrap();
        self.cmd(&[
            "replicate",
            "app.db",
            &self.dest,
            "--interval",
            "50ms",
            "--wal-limit",
            "4MiB",
            "--level",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start cairn replicate")
    }

    fn generations(&self) -> Vec<serde_json::Value> {
        let out = self
            .cmd(&["list", &self.dest, "--generations", "--json"])
            .output()
            .unwrap();
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

/// A replicator run: from its start to its kill (or stop).
#[derive(Debug, Clone, Copy)]
struct Life {
    start: i64,
    end: i64,
}

/// The fewest moments a run must check to pass.
const MIN_MOMENTS: usize = 3;

/// The moments a restore can be checked at (see the top of this file),
/// each with the last commit before it.
fn moments(
    commits: &[Commit],
    lives: &[Life],
    faults: &[(i64, i64)],
    gens: &[serde_json::Value],
) -> Vec<(i64, Commit)> {
    let gen_start: Vec<(i64, &str)> = gens
        .iter()
        .map(|g| {
            let start = g["started_at_ms"].as_i64();
            let start = start.unwrap_or_else(|| panic!("a generation without started_at_ms: {g}"));
            (start, g["reason"].as_str().unwrap_or(""))
        })
        .collect();
    const MARGIN: i64 = 800;
    let mut candidates = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        let t = c.end_ms + MARGIN;
        if commits.get(i + 1).is_some_and(|n| n.begin_ms <= t) {
            continue;
        }
        let Some(life) = lives.iter().find(|l| l.start <= t && t + 1500 <= l.end) else {
            continue;
        };
        // The generation a restore at t uses must be this run's.
        let Some(g) = gen_start.iter().rfind(|(s, _)| *s <= t) else {
            continue;
        };
        if g.0 < life.start {
            continue;
        }
        // Not just before a mid-run generation (frames it found lost).
        if gen_start
            .iter()
            .any(|(s, why)| *why != "start" && *s > t && *s < t + 3000)
        {
            continue;
        }
        if faults.iter().any(|(a, b)| t >= a - MARGIN && t <= b + 3000) {
            continue;
        }
        candidates.push((t, c.clone()));
    }
    candidates
}

#[test]
fn restores_hold_exactly_the_commits_before_each_moment_despite_kills_and_faults() {
    let server = S3Server::s3s_fs();
    let secs = env_num("CAIRN_TORTURE_SECS", 25);
    let points = env_num("CAIRN_TORTURE_POINTS", 12) as usize;
    let seed = env_num("CAIRN_TORTURE_SEED", now_ms() as u64);
    eprintln!("torture: CAIRN_TORTURE_SEED={seed} CAIRN_TORTURE_SECS={secs}");
    let mut rng = Rng::new(seed);
    let proxy = FaultProxy::start(server.addr());
    let ctx = Ctx {
        s: Scratch::new(),
        dest: server.url_via(&proxy, "torture"),
        env: server.env(),
    };
    let db = ctx.s.path("app.db");
    writer::create(&db);
    let w = Writer::start(
        &db,
        WriterOptions {
            seed,
            long_pause: Duration::from_millis(2000),
            ..Default::default()
        },
    );
    let mut lives: Vec<Life> = Vec::new();
    let mut faults: Vec<(i64, i64)> = Vec::new();
    let mut exits = Vec::new();
    // The run lasts `secs`, and longer (up to three times) if by then too
    // few moments qualify to check: a seed's timings are not replayable
    // and a slow machine can leave long stretches unqualified.
    let t_end = Instant::now() + Duration::from_secs(secs);
    let t_cap = Instant::now() + Duration::from_secs(secs * 3);
    let wanted = MIN_MOMENTS.min(points);
    let go_on = |lives: &[Life], faults: &[(i64, i64)]| {
        if Instant::now() < t_end {
            return true;
        }
        let n = moments(&w.commits(), lives, faults, &ctx.generations()).len();
        if n >= wanted || Instant::now() >= t_cap {
            return false;
        }
        eprintln!("torture: {n} moments qualify so far, {wanted} wanted: going on");
        true
    };
    while go_on(&lives, &faults) {
        let start = now_ms();
        let mut child = ctx.replicate("replicate.log");
        let life = rng.ms(3000, 8000);
        let t = Instant::now();
        // In every third run (the second, fifth, …) segment uploads fail for
        // a stretch (5xx and dropped connections), starting once the
        // generation is likely up. Not at random: a run of faulted lives
        // would leave nothing to check.
        let fault_at = (lives.len() % 3 == 1).then(|| rng.ms(1200, 2500));
        let mut fault_on: Option<i64> = None;
        while t.elapsed() < life {
            if fault_on.is_none() && fault_at.is_some_and(|f| t.elapsed() >= f) {
                fault_on = Some(now_ms());
                proxy.inject(Some("PUT"), Some("generations/"), Fault::Status(503), 6);
                proxy.inject(None, Some("generations/"), Fault::Reset, 3);
            }
            if let Some(s) = fault_on
                && now_ms() - s > 1500
                && proxy.pending() > 0
            {
                proxy.clear();
            }
            if let Some(st) = child.try_wait().unwrap() {
                exits.push(format!("exited by itself with {st}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        proxy.clear();
        let end = now_ms();
        if let Some(s) = fault_on {
            faults.push((s, end));
        }
        lives.push(Life { start, end });
        std::thread::sleep(rng.ms(0, 800));
    }
    let (commits, tally) = w.stop();
    // The last run drains: everything committed is shipped on SIGTERM.
    let start = now_ms();
    let child = ctx.replicate("replicate.log");
    let n_before = ctx.generations().len();
    let t0 = Instant::now();
    while ctx.generations().len() <= n_before {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no final generation"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = std::fs::read_to_string(ctx.s.path("replicate.log")).unwrap_or_default();
    assert!(out.status.success(), "the final replicator failed: {log}");
    assert!(!log.contains("panicked"), "{log}");
    lives.push(Life {
        start,
        end: now_ms(),
    });

    // Newest: the live database, page for page.
    let r = ctx
        .cmd(&["restore", &ctx.dest, "-o", "newest.db"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let live = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        drop(c);
        std::fs::read(&db).unwrap()
    };
    let newest = std::fs::read(ctx.s.path("newest.db")).unwrap();
    if newest != live {
        let ps = 4096;
        let first = (0..live.len().max(newest.len()) / ps)
            .find(|p| live.get(p * ps..(p + 1) * ps) != newest.get(p * ps..(p + 1) * ps));
        panic!(
            "the newest restore ({} bytes) differs from the live database ({} bytes), first at page {first:?}",
            newest.len(),
            live.len()
        );
    }
    assert_eq!(
        last_commit(&ctx.s.path("newest.db")),
        Ok(commits.len() as u64)
    );

    // Moments to restore to.
    let gens = ctx.generations();
    let candidates = moments(&commits, &lives, &faults, &gens);
    let step = (candidates.len() / points.max(1)).max(1);
    let chosen: Vec<_> = candidates.iter().step_by(step).take(points).collect();
    eprintln!(
        "torture: {} commits ({} vacuums, {} schema changes, {} blobs; checkpoints: {} passive, TRUNCATE {} busy / {} ok), {} replicator runs ({} faulted, {} exited), {} generations, {} candidate moments, {} checked",
        commits.len(),
        tally.vacuums,
        tally.schema_changes,
        tally.blobs,
        tally.passive,
        tally.truncate_busy,
        tally.truncate_ok,
        lives.len(),
        faults.len(),
        exits.len(),
        gens.len(),
        candidates.len(),
        chosen.len()
    );
    assert!(
        chosen.len() >= MIN_MOMENTS.min(points),
        "too few moments to check: {} of {} commits qualified",
        candidates.len(),
        commits.len()
    );
    let mut wrong = Vec::new();
    for (i, (t, c)) in chosen.iter().enumerate() {
        let out = format!("t{i}.db");
        let r = ctx
            .cmd(&[
                "restore",
                &ctx.dest,
                "-o",
                &out,
                "--timestamp",
                &cairn_core::time::rfc3339(*t),
            ])
            .output()
            .unwrap();
        if !r.status.success() {
            wrong.push(format!(
                "restore at {}: {}",
                cairn_core::time::rfc3339(*t),
                String::from_utf8_lossy(&r.stderr).trim()
            ));
            continue;
        }
        let p = ctx.s.path(&out);
        let got = last_commit(&p);
        let fp = rusqlite::Connection::open(&p)
            .ok()
            .and_then(|c| writer::fingerprint(&c).ok());
        if got != Ok(c.id) || fp.as_deref() != Some(c.fingerprint.as_str()) || !integrity_ok(&p) {
            wrong.push(format!(
                "restore at {} (commit {} ended {} ms before): got {got:?}, fingerprint {fp:?}, want {}",
                cairn_core::time::rfc3339(*t),
                c.id,
                t - c.end_ms,
                c.fingerprint
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of {} moments wrong:\n{}\nruns: {lives:?}\nfaults: {faults:?}",
        wrong.len(),
        chosen.len(),
        wrong.join("\n")
    );
}
