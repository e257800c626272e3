//! `cairn replicate`: continuous replication of a SQLite database in WAL
//! mode (docs/FORMAT.md §13). Every committed transaction is shipped, within
//! a poll interval, as a segment; a new generation (a fresh snapshot) starts
//! at start-up, on the snapshot interval, and whenever frames may have been
//! missed. The room holds one concept per file: [`wal_tail`] follows the
//! WAL, [`shipper`] encodes and uploads segments, [`generation`] the log
//! entries and listings, [`snapshot_check`] checks each generation's snapshot
//! in the background, [`lease`] the fencing, [`restore`] and [`list`]
//! the reading side; [`embed`] and [`config`] run a replicator inside an
//! application's own tokio runtime; [`status`] is what a running one reports.

pub mod compact;
pub mod config;
pub mod dir;
pub mod embed;
pub mod generation;
pub mod lease;
pub mod list;
pub mod restore;
pub mod shipper;
pub mod snapshot_check;
pub mod status;
pub mod wal_tail;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use cairn_core::segment::{GENERATION_KIND, generation_id};
use cairn_core::wal::Txn;
use cairn_core::{Compression, KeyMaterial};
use clap::Args;
use serde::Serialize;

use crate::backup::{self, BackupOptions, Seeds};
use crate::engine::EngineKind;
use crate::keys::KeyArgs;
use crate::storage::{Dest, now_ms};
use generation::GenerationEntry;
use lease::Lease;
use shipper::{Ready, Shipper};
pub use status::{LogTo, State, Status};
use wal_tail::{Poll, WalTail};

#[derive(Args, Debug)]
pub struct ReplicateArgs {
    /// The SQLite database to replicate (in WAL mode); with --dir, the
    /// first destination.
    pub db: PathBuf,
    /// Destinations: directories, s3://… or sftp://….
    #[arg(required_unless_present = "dir")]
    pub dests: Vec<String>,
    #[command(flatten)]
    pub dir: dir::DirArgs,
    /// How often to look at the WAL. Each look that finds commits ships one
    /// segment (one PUT per destination): shorter means less lag, more
    /// requests and more bytes. The default keeps the p99 lag under 100 ms
    /// at 200 commits/s (bench/README.md); `1s`, Litestream's default, makes
    /// at most 3,600 segments an hour.
    // Keep the default equal to config::DEFAULT_INTERVAL (the embedded and
    // daemon replicators' default).
    #[arg(long, default_value = "75ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Start a new generation (a fresh snapshot) this often.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,
    /// How long the replication lease lasts without renewal (it is renewed
    /// at half-time; a crashed replicator's lease is taken over after it
    /// expires, at once by a new replicator on the same host).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Restart the WAL (checkpoint RESTART) once it is this large.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    pub wal_limit: u64,
    /// Segment and snapshot codec [default: zstd, with or without a key;
    /// replica objects are read by `cairn restore`, not by gunzip].
    #[arg(long, value_enum)]
    pub codec: Option<backup::Codec>,
    /// Compression level: gzip 0 (store) to 9, default 6; zstd 1 to 19,
    /// default 3, and 19 for level-0 segments up to 64 KiB (cheap at
    /// that size).
    #[arg(long)]
    pub level: Option<u8>,
    /// Compaction levels: level 1 merges level-0 segments every 30 s, level
    /// 2 level 1 hourly, level 3 level 2 daily (docs/FORMAT.md §13.9), so a
    /// restore reads few objects; `off` for none.
    #[arg(long, value_name = "INTERVALS", default_value = "30s,1h,24h")]
    pub compact: String,
    /// How long a level-0 segment stays once a merged one covers it (restore
    /// points between merged segments' ends are kept that long).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub keep_compacted: Duration,
    /// Directory for the snapshots' temporary copies [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// Encrypt with this key (segments and snapshots alike).
    #[command(flatten)]
    pub key: KeyArgs,
    /// On exit, print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = [
        ("GiB", 1u64 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim(), *m)))
    .expect("the empty suffix matches");
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size like 64MiB"))
}

pub struct ReplicateOptions {
    pub db: PathBuf,
    pub key: KeyMaterial,
    /// Snapshots, merged segments and big level-0 segments.
    pub compression: Compression,
    /// Level-0 segments up to [`shipper::SMALL_BODY`] bytes.
    pub small_segments: Compression,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub lease_ttl: Duration,
    pub wal_limit: u64,
    pub temp_dir: PathBuf,
    /// Compaction into levels (§13.9); `None`: off.
    pub compaction: Option<cairn_core::compact::Policy>,
    /// Where its messages go: stderr for the CLI, `tracing` events when it
    /// runs inside an application or the daemon.
    pub log: LogTo,
    /// Kept up to date while it runs, for whoever started it.
    pub status: Arc<Mutex<Status>>,
}

/// What a run did, for `--json` and the request-count figures.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub generations: Vec<String>,
    pub transactions: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub segment_requests: u64,
    pub checkpoints: u64,
    pub compaction: compact::CompactStats,
    pub seconds: f64,
}

struct Replicator<'a> {
    opts: &'a ReplicateOptions,
    dests: &'a [Dest],
    db_name: String,
    tail: WalTail,
    shipper: Shipper,
    leases: Vec<Lease>,
    generation: Option<GenerationEntry>,
    started: Instant,
    next_txid: u64,
    queued: Vec<Txn>,
    ready: Option<Ready>,
    report: Report,
    /// The last RESTART checkpoint tried: readers of the application can
    /// hold one off, so it is tried again only after a while.
    last_restart: Option<Instant>,
}

const RESTART_EVERY: Duration = Duration::from_secs(10);

/// Replicates until `stop` is set, then ships what is committed, releases
/// the leases and returns. The outcome is also left in `opts.status`.
pub fn run(dests: &[Dest], opts: &ReplicateOptions, stop: &AtomicBool) -> Result<Report> {
    let res = run_inner(dests, opts, stop);
    opts.status
        .lock()
        .unwrap()
        .finished(res.as_ref().err().map(|e| format!("{e:#}")));
    res
}

fn run_inner(dests: &[Dest], opts: &ReplicateOptions, stop: &AtomicBool) -> Result<Report> {
    let t0 = Instant::now();
    let source = crate::sources::Source::Sqlite(opts.db.clone());
    let db_name = source.catalog_name();
    let tail = WalTail::open(&opts.db)?;
    let encryption = backup::encryption_params(&opts.key, &Seeds::fresh()?)?;
    let mut leases = Vec::new();
    for d in dests {
        match Lease::acquire(d, &db_name, opts.lease_ttl.as_millis() as i64) {
            Ok(l) => leases.push(l),
            Err(e) => {
                for (l, d) in leases.into_iter().zip(dests) {
                    let _ = l.release(d);
                }
                return Err(e);
            }
        }
    }
    let to = dests
        .iter()
        .map(|d| d.describe(""))
        .collect::<Vec<_>>()
        .join(", ");
    match opts.log {
        LogTo::Stderr => eprintln!(
            "cairn replicate: {} → {to} (every {:?}; Ctrl-C or SIGTERM to stop)",
            opts.db.display(),
            opts.interval
        ),
        LogTo::Tracing => tracing::info!(
            database = %opts.db.display(),
            destinations = %to,
            "replication started (every {:?})",
            opts.interval
        ),
    }
    let mut next_txid = 1;
    for d in dests {
        let state = crate::repo::load(d)?.state;
        if let Some(g) = generation::generations(&state, Some(&db_name)).last() {
            next_txid = next_txid.max(generation::last_txid(d, g)? + 1);
        }
    }
    let sealing = encryption.clone();
    let mut r = Replicator {
        opts,
        dests,
        db_name: db_name.clone(),
        tail,
        shipper: Shipper {
            db_name,
            compression: opts.compression,
            small: opts.small_segments,
            encryption,
            segments: 0,
            bytes: 0,
            requests: 0,
        },
        leases,
        generation: None,
        started: Instant::now(),
        next_txid,
        queued: Vec::new(),
        ready: None,
        report: Report::default(),
        last_restart: None,
    };
    let name = r.db_name.clone();
    let (res, compacted) = compact::alongside(dests, opts, &name, sealing, || r.main_loop(stop));
    r.report.compaction = compacted;
    // Whatever happened, give the leases up so a restart need not wait.
    for (l, d) in r.leases.drain(..).zip(dests) {
        let _ = l.release(d);
    }
    res?;
    r.report.segments = r.shipper.segments;
    r.report.segment_bytes = r.shipper.bytes;
    r.report.segment_requests = r.shipper.requests;
    r.report.seconds = t0.elapsed().as_secs_f64();
    Ok(r.report)
}

impl Replicator<'_> {
    fn main_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        self.start_generation("start")?;
        let mut last_ship_error: Option<String> = None;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.opts.interval);
            for (l, d) in self.leases.iter_mut().zip(self.dests) {
                l.keep(d)?;
            }
            let got;
            match self.tail.poll()? {
                Poll::Txns(t) => {
                    got = !t.is_empty();
                    self.queue(t)
                }
                Poll::Lost(why) => {
                    self.flush_best_effort();
                    self.opts
                        .log
                        .warn(&format!("{why}; starting a new generation"));
                    self.start_generation(if why.contains("replaced") {
                        "db-replaced"
                    } else {
                        "wal-reset"
                    })?;
                    continue;
                }
            }
            match self.flush() {
                Ok(()) => {
                    if last_ship_error.take().is_some() {
                        self.opts.log.info("shipping again");
                    }
                    self.opts.status.lock().unwrap().retrying(None);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if last_ship_error.as_deref() != Some(&msg) {
                        self.opts.log.warn(&format!("{msg}; retrying"));
                    }
                    self.opts.status.lock().unwrap().retrying(Some(&msg));
                    last_ship_error = Some(msg);
                }
            }
            if self.tail.log_bytes() > self.opts.wal_limit
                && self.ready.is_none()
                && self
                    .last_restart
                    .is_none_or(|t| t.elapsed() >= RESTART_EVERY)
            {
                self.last_restart = Some(Instant::now());
                self.report.checkpoints += 1;
                match self.tail.checkpoint_restart()? {
                    Poll::Txns(t) => self.queue(t),
                    Poll::Lost(why) => {
                        self.flush_best_effort();
                        self.opts
                            .log
                            .warn(&format!("{why}; starting a new generation"));
                        self.start_generation("wal-reset")?;
                        continue;
                    }
                }
                self.flush_best_effort();
            } else if got {
                // Copy what is shipped into the database file, so the WAL
                // can restart (SQLite does so when it is all copied).
                self.tail.checkpoint_passive()?;
            }
            if self.started.elapsed() >= self.opts.snapshot_interval {
                self.flush_best_effort();
                self.start_generation("snapshot-interval")?;
            }
        }
        // Shut down: what is committed now goes out.
        self.opts.status.lock().unwrap().state = State::Stopping;
        if let Poll::Txns(t) = self.tail.poll()? {
            self.queue(t);
        }
        self.flush()?;
        if self.ready.is_some() || !self.queued.is_empty() {
            bail!("stopped with transactions not yet shipped");
        }
        Ok(())
    }

    fn queue(&mut self, t: Vec<Txn>) {
        if !t.is_empty() {
            self.opts.status.lock().unwrap().pending(true);
        }
        self.report.transactions += t.len() as u64;
        self.queued.extend(t);
    }

    /// Ships the pending segment, then one of everything queued.
    fn flush(&mut self) -> Result<()> {
        for _ in 0..2 {
            if self.ready.is_none() && !self.queued.is_empty() {
                let g = self.generation.as_ref().expect("a generation");
                let txns = std::mem::take(&mut self.queued);
                self.ready = Some(self.shipper.encode(
                    &g.id,
                    self.next_txid,
                    self.tail.page_size,
                    &txns,
                    self.dests.len(),
                )?);
            }
            let Some(r) = self.ready.as_mut() else {
                self.opts.status.lock().unwrap().pending(false);
                return Ok(());
            };
            self.shipper.ship(self.dests, r)?;
            self.next_txid = r.max_txid + 1;
            self.opts.status.lock().unwrap().shipped(
                r.max_txid,
                self.report.transactions,
                self.shipper.segments,
                self.shipper.bytes,
            );
            self.ready = None;
        }
        Ok(())
    }

    fn flush_best_effort(&mut self) {
        if let Err(e) = self.flush() {
            self.opts.log.warn(&format!(
                "{e:#}; these transactions stay in the new generation's snapshot only"
            ));
        }
        self.ready = None;
        self.queued.clear();
    }

    /// A snapshot, then the WAL's transactions from its first frame as the
    /// first segment, then the commit that makes the generation visible.
    fn start_generation(&mut self, reason: &str) -> Result<()> {
        let bopts = BackupOptions {
            source: crate::sources::Source::Sqlite(self.opts.db.clone()),
            key: self.opts.key.clone(),
            compression: self.opts.compression,
            chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
            engine: EngineKind::Native,
            temp_dir: self.opts.temp_dir.clone(),
            progress: false,
            prune: None,
            lock_timeout: crate::sources::sqlite::DEFAULT_LOCK_TIMEOUT,
        };
        if reason != "start" {
            // The file may be another one now: follow it with new connections.
            self.tail.close()?;
            self.tail = WalTail::open(&self.opts.db)?;
        }
        for _ in 0..5 {
            let before = self.tail.restart_from_scratch()?;
            let report = backup::run(self.dests, &bopts)?;
            if report.failed > 0 {
                let errs: Vec<String> = report
                    .destinations
                    .iter()
                    .filter_map(|d| d.error.clone())
                    .collect();
                bail!("the generation's snapshot failed: {}", errs.join("; "));
            }
            // The snapshot lies within the log we hold only if the log did
            // not restart meanwhile.
            if self.tail.header_now()? != before {
                continue;
            }
            let txns = match self.tail.poll()? {
                Poll::Txns(t) => t,
                Poll::Lost(_) => continue,
            };
            let mut r = [0u8; 4];
            getrandom::fill(&mut r).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
            let started_at_ms = now_ms();
            let id = generation_id(started_at_ms, r);
            let first_txid = self.next_txid;
            self.report.transactions += txns.len() as u64;
            if !txns.is_empty() {
                let mut ready = self.shipper.encode(
                    &id,
                    first_txid,
                    self.tail.page_size,
                    &txns,
                    self.dests.len(),
                )?;
                self.shipper.ship(self.dests, &mut ready)?;
                self.next_txid = ready.max_txid + 1;
                self.opts.status.lock().unwrap().shipped(
                    ready.max_txid,
                    self.report.transactions,
                    self.shipper.segments,
                    self.shipper.bytes,
                );
            }
            let entry = GenerationEntry {
                id: id.clone(),
                kind: GENERATION_KIND.into(),
                db_name: self.db_name.clone(),
                started_at: cairn_core::time::rfc3339(started_at_ms),
                started_at_ms,
                snapshot: report.id.clone(),
                snapshot_object: report.object.clone(),
                page_size: self.tail.page_size,
                first_txid,
                base_txid: self.next_txid - 1,
                reason: reason.into(),
                writer: crate::repo::write::writer_id(),
            };
            for d in self.dests {
                let mut loaded = crate::repo::load(d)?;
                let mut c = crate::repo::write::new_commit();
                c.add.push(serde_json::to_value(&entry)?);
                c.note = Some(format!("replication: generation {id} ({reason})"));
                crate::repo::write::append(d, &mut loaded, c)?;
            }
            self.opts.status.lock().unwrap().generation(&id);
            snapshot_check::spawn(
                self.dests.to_vec(),
                report.id.clone(),
                self.opts.key.clone(),
                self.opts.temp_dir.clone(),
                self.opts.log,
            );
            self.generation = Some(entry);
            self.started = Instant::now();
            self.report.generations.push(id);
            return Ok(());
        }
        bail!(
            "the WAL of {} kept being reset while a snapshot was taken; is another program checkpointing it with TRUNCATE?",
            self.opts.db.display()
        )
    }
}

/// `cairn replicate DB DEST…` (or `--dir DIR DEST…`, [`dir`]).
pub fn cli(mut a: ReplicateArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let key = a.key.load()?;
    let (compression, small_segments) =
        shipper::replica_compression(a.codec, a.level).map_err(|e| anyhow!("--level {e}"))?;
    let compaction = compact::parse_policy(&a.compact, a.keep_compacted)
        .map_err(|e| anyhow!("--compact: {e:#}"))?;
    let temp_dir = a.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (interval, snapshot_interval) = (
        a.interval.max(Duration::from_millis(1)),
        a.snapshot_interval,
    );
    let (lease_ttl, wal_limit) = (a.lease_ttl, a.wal_limit);
    let options = |db: &std::path::Path, log| ReplicateOptions {
        db: db.to_path_buf(),
        key: key.clone(),
        compression,
        small_segments,
        interval,
        snapshot_interval,
        lease_ttl,
        wal_limit,
        temp_dir: temp_dir.clone(),
        compaction: compaction.clone(),
        log,
        status: Default::default(),
    };
    if a.dir.dir.is_some() {
        // The positional DB is then the first destination.
        a.dests.insert(0, a.db.display().to_string());
    }
    let dests = a
        .dests
        .iter()
        .map(|d| crate::cli::open_dest(d, rt))
        .collect::<Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    if a.dir.dir.is_some() {
        return dir::cli(&a.dir, dests, |p| options(p, LogTo::Tracing), &stop, a.json);
    }
    let opts = options(&a.db, LogTo::Stderr);
    let report = run(&dests, &opts, &stop)?;
    if a.json {
        crate::cli::print_json(&report)?;
    } else {
        eprintln!(
            "cairn replicate: stopped; {} transactions in {} segments ({}), {} generations",
            report.transactions,
            report.segments,
            crate::cli::mib(report.segment_bytes),
            report.generations.len()
        );
    }
    Ok(())
}
