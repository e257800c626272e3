//! Restoring from a replica (docs/FORMAT.md §13.8): the snapshot of the
//! chosen generation (restored and checked as any snapshot), then its
//! segments in transaction order, each decoded and checked (every chunk,
//! the SHA-256 in its trailer, its name, its place in the sequence), then
//! `integrity_check`, and only then the rename into place.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::KeyMaterial;
use cairn_core::segment::{Applier, Keys, Segment, SegmentInfoLite, route};
use serde::Serialize;

use super::generation::{GenerationEntry, generations, list_segments};
use crate::storage::Dest;

pub struct ReplicaRestoreOptions {
    pub db: Option<String>,
    pub output: PathBuf,
    pub force: bool,
    pub if_db_not_exists: bool,
    /// A destination without replication is not an error: nothing to do.
    pub if_replica_exists: bool,
    pub key: KeyMaterial,
    /// Restore to the newest point at or before this time (Unix ms)…
    pub timestamp_ms: Option<i64>,
    /// …or at or before this transaction id.
    pub txid: Option<u64>,
    /// Auto: integrity_check on the result unless the generation's snapshot
    /// has a recorded pass (§13.4); Full: always.
    pub check: crate::restore::CheckMode,
}

#[derive(Debug, Serialize)]
pub struct ReplicaRestoreReport {
    pub output: String,
    pub restored: bool,
    pub generation: Option<String>,
    pub snapshot: Option<String>,
    /// The last transaction id applied (the snapshot's base when none).
    pub txid: Option<u64>,
    /// The time of the last segment applied (Unix ms).
    pub time_ms: Option<i64>,
    pub segments: usize,
    pub size: u64,
    /// "ran", or "recorded": the snapshot's pass is recorded and every page
    /// applied on top of it was proven by its checksums (§13.4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_check: Option<&'static str>,
    pub seconds: f64,
}

/// Whether a destination's state holds replication (of `db`).
pub fn holds_replication(dest: &Dest, db: Option<&str>) -> Result<bool> {
    let loaded = crate::repo::load(dest)?;
    Ok(!generations(&loaded.state, db).is_empty())
}

fn nothing(out: &Path) -> ReplicaRestoreReport {
    ReplicaRestoreReport {
        output: out.display().to_string(),
        restored: false,
        generation: None,
        snapshot: None,
        txid: None,
        time_ms: None,
        segments: 0,
        size: 0,
        integrity_check: None,
        seconds: 0.0,
    }
}

pub fn run(dest: &Dest, opts: &ReplicaRestoreOptions) -> Result<ReplicaRestoreReport> {
    let t0 = Instant::now();
    let out = &opts.output;
    let exists = out.symlink_metadata().is_ok();
    if exists && opts.if_db_not_exists {
        return Ok(nothing(out));
    }
    if exists && !opts.force {
        bail!(
            "{} already exists; refusing to overwrite it: pass --force to replace it, or --if-db-not-exists to skip",
            out.display()
        );
    }
    let state = crate::repo::load(dest)?.state;
    let gens = generations(&state, opts.db.as_deref());
    if gens.is_empty() {
        if opts.if_replica_exists {
            return Ok(nothing(out));
        }
        bail!(
            "{} holds no replication{}; restore a snapshot without --timestamp/--txid, or start `cairn replicate`",
            dest.describe(""),
            opts.db
                .as_ref()
                .map_or(String::new(), |d| format!(" of {d}"))
        );
    }
    let names: std::collections::BTreeSet<&str> = gens.iter().map(|g| g.db_name.as_str()).collect();
    if names.len() > 1 {
        bail!(
            "{} holds replicas of several databases ({}); pass --db NAME",
            dest.describe(""),
            names.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    for g in gens.iter().rev() {
        if opts.timestamp_ms.is_some_and(|t| g.started_at_ms > t)
            || opts.txid.is_some_and(|t| g.base_txid > t)
        {
            continue;
        }
        if let Some(mut r) = restore_generation(dest, g, opts)? {
            r.seconds = t0.elapsed().as_secs_f64();
            return Ok(r);
        }
    }
    let oldest = &gens[0];
    bail!(
        "no generation in {} reaches back to {}; the oldest restore point is generation {} (started {}, transaction {})",
        dest.describe(""),
        match (opts.timestamp_ms, opts.txid) {
            (Some(t), _) => cairn_core::time::rfc3339(t),
            (_, Some(t)) => format!("transaction {t}"),
            _ => "any point".into(),
        },
        oldest.id,
        oldest.started_at,
        oldest.base_txid
    )
}

/// Downloads `keys` a few at a time, in parallel, keeping their order.
pub(crate) fn fetch(dest: &Dest, keys: &[String]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(8) {
        let got: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
            let hs: Vec<_> = batch
                .iter()
                .map(|k| {
                    s.spawn(move || -> Result<Vec<u8>> {
                        dest.get(k)
                            .with_context(|| format!("cannot read {}", dest.describe(k)))?
                            .map(|b| b.to_vec())
                            .ok_or_else(|| anyhow!("{} is missing", dest.describe(k)))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a download failed")))
                })
                .collect()
        });
        for g in got {
            out.push(g?);
        }
    }
    Ok(out)
}

fn restore_generation(
    dest: &Dest,
    g: &GenerationEntry,
    opts: &ReplicaRestoreOptions,
) -> Result<Option<ReplicaRestoreReport>> {
    let listed = list_segments(dest, &g.id)?;
    let lite: Vec<(String, SegmentInfoLite)> = listed
        .iter()
        .map(|l| {
            (
                l.key.clone(),
                SegmentInfoLite {
                    level: l.level,
                    min_txid: l.min_txid,
                    max_txid: l.max_txid,
                },
            )
        })
        .collect();
    let segs: Vec<SegmentInfoLite> = lite.iter().map(|l| l.1).collect();
    // With a target, the route goes no further than the txid bound; a time
    // target becomes one once a segment is seen to pass it (below).
    let mut bound = opts.txid;
    let keys_from = |txid: u64, bound: Option<u64>| -> Vec<String> {
        route(&segs, txid, bound)
            .into_iter()
            .map(|i| lite[i].0.clone())
            .collect()
    };
    let keys = keys_from(g.first_txid, bound);
    if keys.is_empty() {
        if listed.iter().any(|l| l.min_txid == g.first_txid) {
            // Its first segments all pass the target (merged ones whose
            // finer parts were deleted): no restore point in reach here.
            return Ok(None);
        } else if g.base_txid >= g.first_txid {
            bail!(
                "generation {} in {} lacks its first segment (transaction {}): it cannot be restored",
                g.id,
                dest.describe(""),
                g.first_txid
            );
        }
    }
    let out = &opts.output;
    let dir = crate::restore::parent_dir(out);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    // A killed restore leaves its temp (and the snapshot restore's temp of
    // that temp, `..<name>.…`) behind; this run removes them.
    crate::storage::sweep_dead_temps_of(&dir, &name);
    crate::storage::sweep_dead_temps_of(&dir, &format!(".{name}"));
    let tmp = dir.join(crate::storage::temp_name(&name));
    let guard = Cleanup(tmp.clone());
    std::thread::scope(|scope| -> Result<Option<ReplicaRestoreReport>> {
        // The segments are downloaded and opened on their own thread while
        // the snapshot restores: both are mostly waiting on the store and
        // decoding, and the restore then only applies pages.
        let mut segments = prefetch(scope, dest, keys, opts.key.clone());
        // The snapshot's own check is deferred to the one on the result: a
        // second integrity_check of the same pages would double the cost.
        let snap = crate::restore::run(
            dest,
            &crate::restore::RestoreOptions {
                id: Some(g.snapshot.clone()),
                db: None,
                output: tmp.clone(),
                force: true,
                if_db_not_exists: false,
                check: if opts.check == crate::restore::CheckMode::Full {
                    crate::restore::CheckMode::DeferredFull
                } else {
                    crate::restore::CheckMode::Deferred
                },
                key: opts.key.clone(),
                engine: crate::engine::EngineKind::Native,
                limits: crate::sandbox::Limits::default(),
                verify_sandboxed: None,
                progress: false,
            },
        )
        .with_context(|| format!("generation {}: its snapshot {}", g.id, g.snapshot))?;

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .with_context(|| format!("cannot open {}", tmp.display()))?;
        let mut applier = Applier::new(&g.id, g.page_size, g.first_txid);
        let ps = u64::from(g.page_size);
        // The highest page anything wrote: the snapshot's last, then every
        // segment's. SQLite writes each page it adds to a database, so an
        // honest segment never declares a size past it (one page of slack:
        // SQLite skips the lock-byte page). A forged one declaring billions
        // of pages would otherwise make the temp file terabytes long
        // (sparse, but still).
        let mut high_page = file.metadata()?.len() / ps;
        let mut applied = 0;
        let base_reached = |a: &Applier| a.next_txid > g.base_txid;
        'route: loop {
            // Set when a segment passes the time target: finer segments may
            // still reach into it, so plan again up to just before its end.
            let mut replan = None;
            for (k, seg) in segments.iter() {
                let seg = seg?;
                if opts.timestamp_ms.is_some_and(|t| seg.info.time_ms > t) {
                    if seg.info.max_txid > seg.info.min_txid {
                        replan = Some(seg.info.max_txid - 1);
                    }
                    break;
                }
                applier
                    .accept(&seg)
                    .map_err(|e| anyhow!("{}: {e}", dest.describe(&k)))?;
                if let Some((&top, _)) = seg.pages.last_key_value() {
                    high_page = high_page.max(u64::from(top));
                }
                if u64::from(seg.info.db_pages) > high_page + 1 {
                    bail!(
                        "{}: the segment says the database has {} pages, but nothing wrote past page {high_page}: the replica is damaged or forged; nothing was written to {}",
                        dest.describe(&k),
                        seg.info.db_pages,
                        out.display()
                    );
                }
                let len = file.metadata()?.len();
                let cut = u64::from(seg.info.min_db_pages) * ps;
                if cut < len {
                    file.set_len(cut)?;
                }
                file.set_len(u64::from(seg.info.db_pages) * ps)?;
                for (p, d) in &seg.pages {
                    file.write_all_at(d, (u64::from(*p) - 1) * ps)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                }
                applied += 1;
            }
            let Some(b) = replan else { break 'route };
            bound = Some(bound.map_or(b, |x| x.min(b)));
            let keys = keys_from(applier.next_txid, bound);
            if keys.is_empty() {
                break 'route;
            }
            // Dropping the old receiver stops its thread.
            segments = prefetch(scope, dest, keys, opts.key.clone());
        }
        if !base_reached(&applier) {
            if opts.txid.is_some() || opts.timestamp_ms.is_some() {
                return Ok(None);
            }
            bail!(
                "generation {} in {} has segments only up to transaction {}, short of its snapshot's {}",
                g.id,
                dest.describe(""),
                applier.next_txid - 1,
                g.base_txid
            );
        }
        file.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let size = file.metadata()?.len();
        drop(file);
        // The snapshot's bytes are proven by their SHA-256 to be ones that
        // passed integrity_check (recorded by the replicator's background check
        // or a verify), and every page applied since is one SQLite committed,
        // proven by the WAL checksums when read and the segment's sums when
        // applied: the result is a state the checked database went through.
        let recorded = opts.check == crate::restore::CheckMode::Auto
            && snap.integrity_check == Some("recorded");
        if !recorded {
            crate::snapshot::integrity_check(&tmp).map_err(|e| {
            anyhow!(
                "the database restored from generation {} is not sound: {e:#}; nothing was written to {}",
                g.id,
                out.display()
            )
        })?;
        }
        if opts.force {
            for suffix in ["-wal", "-shm", "-journal"] {
                let side = PathBuf::from(format!("{}{suffix}", out.display()));
                if side.exists() {
                    std::fs::remove_file(&side)
                        .with_context(|| format!("cannot remove {}", side.display()))?;
                }
            }
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move the restored database to {}", out.display()))?;
        std::mem::forget(guard);
        File::open(&dir).and_then(|d| d.sync_all()).ok();
        Ok(Some(ReplicaRestoreReport {
            output: out.display().to_string(),
            restored: true,
            generation: Some(g.id.clone()),
            snapshot: Some(g.snapshot.clone()),
            txid: Some(applier.next_txid - 1),
            time_ms: applier.last_time_ms,
            segments: applied,
            size,
            integrity_check: Some(if recorded { "recorded" } else { "ran" }),
            seconds: 0.0,
        }))
    })
}

/// Segments to apply in order: downloaded a few at a time in parallel and
/// opened (decrypted, decompressed, every sum checked) on a thread of
/// their own, one opened segment waiting: merged segments decode to tens of
/// MiB of pages, so memory is bounded by a handful of them. Dropping the
/// receiver stops the thread at its next segment.
fn prefetch<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    dest: &'s Dest,
    keys: Vec<String>,
    key: KeyMaterial,
) -> Receiver<(String, Result<Segment>)> {
    let (tx, rx) = sync_channel(1);
    scope.spawn(move || {
        let mut keyring = Keys::new(key);
        for batch in keys.chunks(4) {
            let fetched = match fetch(dest, batch) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send((batch[0].clone(), Err(e)));
                    return;
                }
            };
            for (k, bytes) in batch.iter().zip(fetched) {
                let seg = Segment::open_with(&bytes, k, &mut keyring)
                    .map_err(|e| anyhow!("{}: {e}", dest.describe(k)));
                let failed = seg.is_err();
                if tx.send((k.clone(), seg)).is_err() || failed {
                    return;
                }
            }
        }
    });
    rx
}

/// Removes the temp file unless the restore got to its rename.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `cairn restore`'s options for a replica.
#[derive(clap::Args, Debug)]
pub struct ReplicaArgs {
    /// From a replica: the newest state at or before this time (RFC 3339,
    /// e.g. 2026-12-02T03:30:00Z), across generations.
    #[arg(long, value_name = "RFC3339", conflicts_with_all = ["id", "txid", "to"])]
    pub timestamp: Option<String>,
    /// From a replica: the newest state at or before this transaction id
    /// (see `cairn list DEST --segments`).
    #[arg(long, value_name = "N", conflicts_with_all = ["id", "to"])]
    pub txid: Option<u64>,
    /// Do nothing, successfully, if the destination holds no replica (with
    /// --if-db-not-exists: the restore-then-replicate start of a container).
    #[arg(long)]
    pub if_replica_exists: bool,
}

/// `cairn restore DEST -o PATH` when the destination holds replication (or
/// a replica option was given); false when it is a snapshot restore.
pub fn cli(
    a: &crate::cli::RestoreArgs,
    out: &Path,
    key: &KeyMaterial,
    rt: &tokio::runtime::Runtime,
) -> Result<bool> {
    let r = &a.replica;
    let explicit = r.timestamp.is_some() || r.txid.is_some();
    let dest = crate::cli::open_dest(&a.dest, rt)?;
    if !explicit && !holds_replication(&dest, a.db.as_deref())? {
        if r.if_replica_exists {
            if !a.out.quiet {
                eprintln!(
                    "{} holds no replica; nothing to do (--if-replica-exists)",
                    dest.describe("")
                );
            }
            return Ok(true);
        }
        return Ok(false);
    }
    let timestamp_ms = match &r.timestamp {
        None => None,
        Some(t) => Some(cairn_core::time::parse_rfc3339_utc(t).ok_or_else(|| {
            anyhow!("--timestamp {t:?} is not an RFC 3339 time like 2026-12-02T03:30:00Z")
        })?),
    };
    let rep = run(
        &dest,
        &ReplicaRestoreOptions {
            db: a.db.clone(),
            output: out.to_path_buf(),
            force: a.force,
            if_db_not_exists: a.if_db_not_exists,
            if_replica_exists: r.if_replica_exists,
            key: key.clone(),
            timestamp_ms,
            txid: r.txid,
            check: a.check,
        },
    )?;
    if a.out.json {
        crate::cli::print_json(&rep)?;
    } else if !a.out.quiet {
        match (&rep.generation, rep.restored) {
            (Some(g), true) => eprintln!(
                "restored generation {g} (snapshot {}, {} segments) to {}: transaction {}, {}; {:.2}s; {}",
                rep.snapshot.as_deref().unwrap_or(""),
                rep.segments,
                rep.output,
                rep.txid.unwrap_or(0),
                rep.time_ms
                    .map_or("at its snapshot".into(), cairn_core::time::rfc3339),
                rep.seconds,
                if rep.integrity_check == Some("recorded") {
                    "integrity_check recorded on its snapshot, every page since checked by its sums"
                } else {
                    "integrity_check ok"
                }
            ),
            _ if out.exists() => {
                eprintln!("{} exists; nothing to do (--if-db-not-exists)", rep.output)
            }
            _ => eprintln!(
                "{} holds no replica; nothing to do (--if-replica-exists)",
                dest.describe("")
            ),
        }
    }
    Ok(true)
}
