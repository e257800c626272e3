//! Directory mode: `cairn replicate --dir DIR --pattern GLOB DEST…`
//! replicates every SQLite database in WAL mode in `DIR` whose file name
//! matches `GLOB`, each with its own replicator (lease, generations,
//! transaction ids, all keyed by its file name in the shared destinations,
//! docs/FORMAT.md §13). The directory is looked at every `--scan-interval`:
//! a database that appears is picked up once it is a SQLite file in WAL
//! mode (one that is not gets one warning, not a retry loop); one that is
//! removed (or renamed away, or leaves WAL mode) has its replicator
//! stopped cleanly: what it read is shipped and its lease released. A
//! replicator that fails is started again with a back-off, like the
//! daemon's. [`scan`] is also what the daemon's `[[directories]]` use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::lease::lease_prefix;
use super::{ReplicateOptions, Report, Status};
use crate::storage::Dest;

#[derive(Args, Debug, Clone)]
pub struct DirArgs {
    /// Replicate every SQLite database (in WAL mode) in this directory
    /// whose file name matches --pattern, picking up new ones and stopping
    /// for removed ones. Then every positional argument is a destination,
    /// shared by the databases (each keyed by its file name).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// With --dir: the file names to replicate, a glob (`*`, `?`, `[a-z]`,
    /// `[!x]`); not recursive.
    #[arg(long, alias = "glob", value_name = "GLOB", default_value = "*.db")]
    pub pattern: String,
    /// With --dir: how often the directory is looked at for new and
    /// removed databases.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub scan_interval: Duration,
}

/// What a file in the directory is, by its first 100 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A SQLite database in WAL mode: replicate it.
    Wal,
    /// A SQLite database in another journal mode: warn, do not replicate.
    NotWal,
    /// Not (yet) a SQLite database: empty, being written, or something
    /// else that matches the pattern. Skipped silently.
    Other,
}

/// One matching file of the directory.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its file name: the database's name in the destinations.
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
}

/// Reads the header: bytes 18 and 19 are 2 in WAL mode. Through SQLite's
/// file handle, as every read of a database this process may be replicating
/// (see `sources::sqlite::read_head`).
pub fn kind_of(path: &Path) -> Kind {
    let Ok(h) = crate::sources::sqlite::read_head(path) else {
        return Kind::Other;
    };
    if h.len() < 100 || !h.starts_with(b"SQLite format 3\0") {
        return Kind::Other;
    }
    if h[18] == 2 && h[19] == 2 {
        Kind::Wal
    } else {
        Kind::NotWal
    }
}

/// The regular files of `dir` matching `pattern`, by name. SQLite's own
/// side files (`-wal`, `-shm`, `-journal`) and cairn's temps never count.
pub fn scan(dir: &Path, pattern: &str) -> Result<Vec<Found>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot read the directory {}", dir.display()))?;
        let Ok(name) = e.file_name().into_string() else {
            continue; // not UTF-8: cannot be a database name in a catalog
        };
        if ["-wal", "-shm", "-journal"]
            .iter()
            .any(|s| name.ends_with(s))
            || (name.starts_with('.') && name.ends_with(".tmp"))
            || !cairn_core::glob::matches(pattern, &name)
        {
            continue;
        }
        let path = e.path();
        // Follows symlinks: a link to a database is replicated under the
        // link's name.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let kind = kind_of(&path);
        out.push(Found { name, path, kind });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The databases to replicate from a scan, and the problems to report
/// once each: files not in WAL mode, and names whose lease key (§13.6)
/// would be another's (e.g. `a b.db` and `a_b.db`: the first by name wins).
pub fn wanted(found: &[Found]) -> (Vec<Found>, Vec<(PathBuf, String)>) {
    let mut ok: Vec<Found> = Vec::new();
    let mut problems = Vec::new();
    let mut prefixes: BTreeMap<String, String> = BTreeMap::new();
    for f in found {
        match f.kind {
            Kind::Other => {}
            Kind::NotWal => problems.push((
                f.path.clone(),
                format!(
                    "{} is not in WAL mode: not replicated (run `sqlite3 {} 'PRAGMA journal_mode=WAL'` once; it is picked up then)",
                    f.path.display(),
                    f.path.display()
                ),
            )),
            Kind::Wal => {
                let p = lease_prefix(&f.name);
                if let Some(other) = prefixes.get(&p) {
                    problems.push((
                        f.path.clone(),
                        format!(
                            "{} is not replicated: its name maps to the same lease key ({p}) as {other}; rename one of them",
                            f.path.display()
                        ),
                    ));
                } else {
                    prefixes.insert(p, f.name.clone());
                    ok.push(f.clone());
                }
            }
        }
    }
    (ok, problems)
}

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

struct Worker {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
    thread: JoinHandle<Result<Report>>,
    started: Instant,
}

/// What one database's replication did, for `--json`.
#[derive(Debug, Default, Serialize)]
pub struct DbReport {
    pub database: String,
    pub path: String,
    pub transactions: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub generations: usize,
    /// Runs that failed (each started again after a back-off).
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The replicators of one directory.
pub struct DirReplicator<'a> {
    dir: PathBuf,
    pattern: String,
    dests: Arc<Vec<Dest>>,
    /// Builds the options of the database at a path.
    options: Box<dyn Fn(&Path) -> ReplicateOptions + 'a>,
    workers: BTreeMap<String, Worker>,
    /// Databases whose replicator failed: when to try again, the back-off.
    retry: BTreeMap<String, (Instant, Duration)>,
    /// Problems already reported, so that each is reported once.
    warned: BTreeMap<PathBuf, String>,
    reports: BTreeMap<String, DbReport>,
}

impl<'a> DirReplicator<'a> {
    pub fn new(
        dir: PathBuf,
        pattern: String,
        dests: Vec<Dest>,
        options: impl Fn(&Path) -> ReplicateOptions + 'a,
    ) -> Result<Self> {
        cairn_core::glob::check(&pattern).map_err(|e| anyhow::anyhow!("--pattern: {e}"))?;
        if !dir.is_dir() {
            bail!(
                "{} is not a directory: give --dir the directory that holds the databases",
                dir.display()
            );
        }
        Ok(DirReplicator {
            dir,
            pattern,
            dests: Arc::new(dests),
            options: Box::new(options),
            workers: BTreeMap::new(),
            retry: BTreeMap::new(),
            warned: BTreeMap::new(),
            reports: BTreeMap::new(),
        })
    }

    /// One look at the directory: reaps finished replicators, stops those
    /// whose database is gone, starts those of new databases.
    pub fn step(&mut self) -> Result<()> {
        let found = scan(&self.dir, &self.pattern)?;
        let (ok, problems) = wanted(&found);
        // Report each problem once (again only if it changes).
        let mut still = BTreeMap::new();
        for (p, msg) in problems {
            if self.warned.get(&p) != Some(&msg) {
                tracing::warn!("{msg}");
            }
            still.insert(p, msg);
        }
        self.warned = still;
        // Replicators that ended by themselves failed.
        let done: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.thread.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        let mut vanished = Vec::new();
        for name in done {
            let w = self.workers.remove(&name).expect("listed");
            let res = join(w.thread);
            let backoff = match self.retry.get(&name) {
                // It ran well for a while: start again from the first back-off.
                Some((_, b)) if w.started.elapsed() < MAX_BACKOFF => (*b * 2).min(MAX_BACKOFF),
                _ => FIRST_BACKOFF,
            };
            let err = match res {
                Ok(r) => {
                    self.add(&name, &w.path, &r);
                    "it stopped by itself".to_string()
                }
                Err(e) => format!("{e:#}"),
            };
            if !ok.iter().any(|f| f.name == name) || kind_of(&w.path) != Kind::Wal {
                // Its database went away under it: that is a stop.
                tracing::info!(database = %name, "replication stopped: its database is gone from the directory ({err})");
                vanished.push(name);
                continue;
            }
            let rep = self.reports.entry(name.clone()).or_default();
            rep.database = name.clone();
            rep.path = w.path.display().to_string();
            rep.failures += 1;
            rep.last_error = Some(err.clone());
            tracing::error!(
                database = %name,
                "replication failed: {err}; starting again in {}",
                humantime::format_duration(backoff)
            );
            self.retry.insert(name, (Instant::now() + backoff, backoff));
        }
        // Gone (removed, renamed, no longer WAL): stop cleanly.
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|n| !ok.iter().any(|f| &f.name == *n))
            .cloned()
            .collect();
        for name in gone {
            let w = self.workers.remove(&name).expect("listed");
            self.stop_one(&name, w, "its database is gone from the directory");
        }
        self.retry.retain(|n, _| ok.iter().any(|f| &f.name == n));
        // New ones (and failed ones whose back-off is over).
        for f in ok {
            if self.workers.contains_key(&f.name)
                || vanished.contains(&f.name)
                || self
                    .retry
                    .get(&f.name)
                    .is_some_and(|(t, _)| Instant::now() < *t)
            {
                continue;
            }
            self.start(&f);
        }
        Ok(())
    }

    fn start(&mut self, f: &Found) {
        let opts = (self.options)(&f.path);
        let status = opts.status.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let dests = self.dests.clone();
        let name = f.name.clone();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("replicate {name}"))
                .spawn(move || {
                    let _span = tracing::info_span!("replicate", db = %name).entered();
                    super::run(&dests, &opts, &stop)
                })
        };
        match thread {
            Ok(thread) => {
                tracing::info!(database = %f.name, path = %f.path.display(), "found: replicating it");
                self.workers.insert(
                    f.name.clone(),
                    Worker {
                        path: f.path.clone(),
                        stop,
                        status,
                        thread,
                        started: Instant::now(),
                    },
                );
            }
            Err(e) => tracing::error!(database = %f.name, "cannot start a thread: {e}"),
        }
    }

    fn stop_one(&mut self, name: &str, w: Worker, why: &str) {
        w.stop.store(true, Ordering::Relaxed);
        let state = w.status.lock().unwrap().state;
        match join(w.thread) {
            Ok(r) => {
                tracing::info!(
                    database = %name,
                    transactions = r.transactions,
                    "replication stopped ({why}): what was read is shipped, the lease released"
                );
                self.add(name, &w.path, &r);
            }
            Err(e) => {
                // A database removed under its replicator may end it with
                // an error (the file it follows is gone): that is the stop.
                tracing::info!(database = %name, "replication stopped ({why}; it said: {e:#}; was {})", state.as_str());
                let rep = self.reports.entry(name.to_string()).or_default();
                rep.database = name.to_string();
                rep.path = w.path.display().to_string();
            }
        }
    }

    fn add(&mut self, name: &str, path: &Path, r: &Report) {
        let rep = self.reports.entry(name.to_string()).or_default();
        rep.database = name.to_string();
        rep.path = path.display().to_string();
        rep.transactions += r.transactions;
        rep.segments += r.segments;
        rep.segment_bytes += r.segment_bytes;
        rep.generations += r.generations.len();
    }

    /// The databases being replicated now, by name.
    pub fn running(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }

    /// Stops every replicator (each ships what it read and releases its
    /// lease) and returns what each did.
    pub fn shutdown(mut self) -> Vec<DbReport> {
        for w in self.workers.values() {
            w.stop.store(true, Ordering::Relaxed);
        }
        let workers = std::mem::take(&mut self.workers);
        for (name, w) in workers {
            self.stop_one(&name, w, "shutting down");
        }
        self.reports.into_values().collect()
    }
}

fn join(t: JoinHandle<Result<Report>>) -> Result<Report> {
    t.join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the replicator's thread panicked")))
}

/// `cairn replicate --dir DIR [--pattern GLOB] DEST…`: runs until SIGTERM
/// or SIGINT.
pub fn cli(
    d: &DirArgs,
    dests: Vec<Dest>,
    options: impl Fn(&Path) -> ReplicateOptions,
    stop: &AtomicBool,
    json: bool,
) -> Result<()> {
    let dir = d.dir.clone().expect("dir mode");
    crate::daemon::logging::init("info", crate::daemon::config::LogFormat::Text);
    let to = dests
        .iter()
        .map(|d| d.describe(""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = DirReplicator::new(dir.clone(), d.pattern.clone(), dests, options)?;
    eprintln!(
        "cairn replicate: every {:?} database in WAL mode in {} → {to} (looked at every {:?}; Ctrl-C or SIGTERM to stop)",
        d.pattern,
        dir.display(),
        d.scan_interval
    );
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        match r.step() {
            Ok(()) => last_error = None,
            // The directory itself unreadable for a moment (an unmounted
            // volume): keep the replicators, say it once, look again.
            Err(e) => {
                let m = format!("{e:#}");
                if last_error.as_deref() != Some(&m) {
                    tracing::error!("{m}; looking again every {:?}", d.scan_interval);
                }
                last_error = Some(m);
            }
        }
        let t = Instant::now();
        while t.elapsed() < d.scan_interval && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(d.scan_interval));
        }
    }
    let reports = r.shutdown();
    if json {
        crate::cli::print_json(&reports)?;
    } else {
        let tx: u64 = reports.iter().map(|r| r.transactions).sum();
        eprintln!(
            "cairn replicate: stopped; {} databases, {tx} transactions",
            reports.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, name: &str, wal: bool) {
        let c = rusqlite::Connection::open(dir.join(name)).unwrap();
        if wal {
            c.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
        }
        c.execute_batch("CREATE TABLE t(x);").unwrap();
    }

    #[test]
    fn scan_sorts_out_what_to_replicate() {
        let t = tempfile::tempdir().unwrap();
        db(t.path(), "a.db", true);
        db(t.path(), "b.db", false);
        db(t.path(), "c.sqlite", true);
        db(t.path(), "a b.db", true);
        db(t.path(), "a_b.db", true);
        std::fs::write(t.path().join("empty.db"), b"").unwrap();
        std::fs::write(t.path().join("notes.db"), b"hello").unwrap();
        std::fs::create_dir(t.path().join("sub.db")).unwrap();
        let found = scan(t.path(), "*.db").unwrap();
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        // a.db's -wal/-shm are not listed; the directory is not.
        assert_eq!(
            names,
            ["a b.db", "a.db", "a_b.db", "b.db", "empty.db", "notes.db"]
        );
        let (ok, problems) = wanted(&found);
        let ok: Vec<&str> = ok.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(ok, ["a b.db", "a.db"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].1.contains("a_b.db") && problems[0].1.contains("same lease key"));
        assert!(problems[1].1.contains("b.db is not in WAL mode"));
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let e = scan(Path::new("/nonexistent/dir"), "*.db").unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/dir"));
    }
}
