//! `cairn prune`: apply a retention policy (core::retention, per database)
//! to a destination. Order, so a crash anywhere leaves it consistent:
//! 1. one commit removes the backups the policy drops (from then on no
//!    reader lists them);
//! 2. their archives are deleted, along with those of recent removals whose
//!    deletes may not have happened (an earlier prune that crashed);
//! 3. archives no entry names, older than a day (a backup that died between
//!    its upload and its commit), and stale temp files are swept.
//!
//! A prune only removes backups it saw in the catalog, so a backup that
//! commits while a prune runs is never deleted by it.
//!
//! Replicas (docs/FORMAT.md §13.10): generations are ranked with the
//! backups at their newest restore point; a removed generation's segments
//! are deleted after the commit that removes it, and a kept one's covered
//! level-0 segments past their grace.

use anyhow::{Context, Result, bail};
use cairn_core::catalog::SNAPSHOT_PREFIX;
use cairn_core::layout::{GroupPlan, Removal};
use cairn_core::retention::Policy;
use serde::Serialize;

use crate::replicate::generation::list_segments;
use crate::repo;
use crate::storage::{Dest, now_ms};
use cairn_core::segment::{GENERATIONS_PREFIX, is_generation_id, segments_prefix};

/// How old an archive no entry names must be before a prune deletes it:
/// longer than any backup takes between its upload and its commit.
pub const ORPHAN_GRACE_MS: i64 = 24 * 3_600_000;
/// An orphan sweep records its mark in the log when the mark moved on by at
/// least this much: one small commit a day for a prune run hourly.
const SWEEP_MARK_STEP_MS: i64 = 24 * 3_600_000;

pub struct PruneOptions {
    pub policy: Policy,
    pub dry_run: bool,
    /// The time the policy is applied at (tests); default now.
    pub now_ms: Option<i64>,
    /// How long a level-0 segment stays once a merged one covers it
    /// (as `cairn replicate --keep-compacted`).
    pub keep_compacted_ms: i64,
}

/// `cairn replicate --keep-compacted`'s default.
pub const DEFAULT_KEEP_COMPACTED_MS: i64 = cairn_core::compact::DEFAULT_KEEP_L0_MS;

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub destination: String,
    pub policy: String,
    pub dry_run: bool,
    /// Per database: every backup, newest first, kept or not and why.
    pub plan: Vec<GroupPlan>,
    pub kept: usize,
    pub removed: usize,
    /// The log record of the removal (none when nothing was removed).
    pub commit: Option<u64>,
    /// Archives deleted: those this prune removed, and orphans past the
    /// grace period.
    pub deleted_objects: usize,
    /// Deletes repeated for removals of earlier prunes (in case one crashed
    /// before its deletes); usually of objects already gone.
    pub retried_deletes: usize,
    pub orphans_deleted: usize,
    /// Segments deleted: of removed generations, and covered level-0 ones.
    pub segments_deleted: u64,
    pub temps_swept: usize,
    pub warnings: Vec<String>,
}

pub fn run(dest: &Dest, opts: &PruneOptions) -> Result<PruneReport> {
    opts.policy.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = opts.now_ms.unwrap_or_else(now_ms);
    let mut loaded = repo::load(dest)?;
    if loaded.layout == repo::Layout::Empty {
        bail!(
            "no backups at {}: nothing to prune (check the location)",
            dest.describe("")
        );
    }
    // Each generation's newest restore point: the store's time of its
    // newest segment (one listing per generation).
    let mut ends = std::collections::BTreeMap::new();
    for g in loaded.state.generations() {
        let segs = list_segments(dest, g.id)?;
        if let Some(t) = segs.iter().filter_map(|s| s.modified_ms).max() {
            ends.insert(g.id.to_string(), t);
        }
    }
    let plan = loaded.state.retention_with(&opts.policy, now, &ends);
    let mut removals = Vec::new();
    let mut kept = 0;
    for g in &plan {
        for d in &g.decisions {
            if d.keep {
                kept += 1;
            } else if let Some(e) = loaded.state.entries.get(&d.id) {
                removals.push(Removal {
                    id: e.id.clone(),
                    object: e.object.clone(),
                    reason: d.reasons.join("; "),
                });
            } else if loaded.state.others.contains_key(&d.id) && is_generation_id(&d.id) {
                removals.push(Removal {
                    id: d.id.clone(),
                    object: generation_object(&d.id),
                    reason: d.reasons.join("; "),
                });
            }
        }
    }
    let mut report = PruneReport {
        destination: dest.describe(""),
        policy: opts.policy.describe(),
        dry_run: opts.dry_run,
        plan,
        kept,
        removed: removals.len(),
        commit: None,
        deleted_objects: 0,
        retried_deletes: 0,
        orphans_deleted: 0,
        segments_deleted: 0,
        temps_swept: 0,
        warnings: loaded.state.warnings.clone(),
    };
    if opts.dry_run {
        return Ok(report);
    }
    if !removals.is_empty() {
        let mut c = repo::write::new_commit();
        c.remove = removals;
        c.note = Some(format!("prune: {}", report.policy));
        report.commit = Some(repo::write::append(dest, &mut loaded, c)?);
    }
    // Step 2: every removal still remembered (this one's and earlier ones').
    // Deleting an absent object succeeds, so no listing is needed: the cost
    // stays one request per 1,000 archives removed, whatever the destination holds.
    let named = loaded.state.named_objects();
    let this_commit = report.commit;
    let mut doomed: Vec<(&str, bool)> = loaded
        .state
        .removed
        .iter()
        .filter(|r| !named.contains(r.object.as_str()))
        .map(|r| (r.object.as_str(), Some(r.seq) == this_commit))
        .collect();
    doomed.sort();
    doomed.dedup_by(|a, b| a.0 == b.0);
    // A removed generation's "object" names its directory: every segment
    // listed under it goes (listed again while the removal is remembered,
    // so a prune that crashed after its commit has them deleted by the next).
    let (gens, doomed): (Vec<_>, Vec<_>) = doomed
        .into_iter()
        .partition(|(k, _)| generation_of_object(k).is_some());
    for (k, _) in &gens {
        let g = generation_of_object(k).expect("partitioned on it");
        report.segments_deleted += delete_generation(dest, g)?;
    }
    let keys: Vec<String> = doomed.iter().map(|(k, _)| k.to_string()).collect();
    dest.delete(&keys).with_context(|| {
        format!(
            "cannot delete archives in {}",
            dest.describe(SNAPSHOT_PREFIX)
        )
    })?;
    report.deleted_objects = doomed.iter().filter(|d| d.1).count();
    report.retried_deletes = doomed.len() - report.deleted_objects;
    // Kept generations: covered level-0 segments past their grace (what
    // compaction deletes, for replicas no replicator runs on any more).
    let policy = cairn_core::compact::Policy {
        keep_covered_ms: vec![Some(opts.keep_compacted_ms.max(1))],
        ..Default::default()
    };
    for g in loaded.state.generations() {
        report.segments_deleted +=
            crate::replicate::compact::delete_covered(dest, g.id, now, &policy)?;
    }

    // Step 3: orphans. Re-read the catalog first: a backup that committed
    // since the first read names its archive there. The listing starts near
    // the last sweep's mark (keys sort by time), not at the first archive.
    let fresh = repo::load(dest)?;
    let named = fresh.state.named_objects();
    let start = fresh.state.sweep_start_key();
    let listing = dest
        .list(SNAPSHOT_PREFIX, start.as_deref())
        .with_context(|| format!("cannot list {}", dest.describe(SNAPSHOT_PREFIX)))?;
    let orphans: Vec<String> = listing
        .into_iter()
        .filter(|o| !named.contains(o.key.as_str()))
        .filter(|o| o.modified_ms.is_some_and(|m| m < now - ORPHAN_GRACE_MS))
        .map(|o| o.key)
        .collect();
    dest.delete(&orphans).with_context(|| {
        format!(
            "cannot delete orphan archives in {}",
            dest.describe(SNAPSHOT_PREFIX)
        )
    })?;
    report.orphans_deleted = orphans.len();
    report.deleted_objects += orphans.len();
    // Record how far this sweep looked, after it did, so a crash before here
    // only means the next prune looks again. At most one such commit a day.
    let mark = now - ORPHAN_GRACE_MS;
    let mut fresh = fresh;
    if mark >= fresh.state.swept_before_ms + SWEEP_MARK_STEP_MS {
        let mut c = repo::write::new_commit();
        c.swept_before_ms = Some(mark);
        c.note = Some("prune: orphan sweep".into());
        repo::write::append(dest, &mut fresh, c)?;
    }
    report.temps_swept = dest
        .sweep_temps(ORPHAN_GRACE_MS)
        .with_context(|| format!("cannot remove temp files in {}", dest.describe("")))?;
    Ok(report)
}

/// `cairn prune`: the plan, then the outcome.
pub fn cli(a: crate::cli::PruneArgs, dest: &Dest) -> Result<()> {
    let policy = a.retention.policy();
    let r = run(
        dest,
        &PruneOptions {
            policy,
            dry_run: a.dry_run,
            now_ms: None,
            keep_compacted_ms: a.keep_compacted.as_millis().min(i64::MAX as u128) as i64,
        },
    )?;
    if a.json {
        return crate::cli::print_json(&r);
    }
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    for g in &r.plan {
        writeln!(out, "{} ({}):", g.db_name, r.destination)?;
        for d in &g.decisions {
            writeln!(
                out,
                "  {}  {}  {}  {}",
                if d.keep { "keep  " } else { "remove" },
                d.id,
                cairn_core::time::rfc3339(d.created_at_ms),
                d.reasons.join("; ")
            )?;
        }
    }
    print_summary(&r);
    Ok(())
}

/// The removal's object for a generation: its directory, `generations/<id>`.
fn generation_object(id: &str) -> String {
    format!("{GENERATIONS_PREFIX}{id}")
}

fn generation_of_object(object: &str) -> Option<&str> {
    object
        .strip_prefix(GENERATIONS_PREFIX)
        .filter(|g| is_generation_id(g))
}

/// Deletes every segment of a generation, at every level.
fn delete_generation(dest: &Dest, generation: &str) -> Result<u64> {
    let prefix = segments_prefix(generation);
    let mut keys = Vec::new();
    for level in 0..=cairn_core::compact::MAX_LEVEL {
        let p = format!("{prefix}{level:02}/");
        keys.extend(
            dest.list(&p, None)
                .with_context(|| format!("cannot list {}", dest.describe(&p)))?
                .into_iter()
                .map(|o| o.key),
        );
    }
    dest.delete(&keys)
        .with_context(|| format!("cannot delete the segments in {}", dest.describe(&prefix)))?;
    Ok(keys.len() as u64)
}

pub fn print_summary(r: &PruneReport) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if r.dry_run {
        eprintln!(
            "dry run ({}): would keep {} and remove {} backups in {}",
            r.policy, r.kept, r.removed, r.destination
        );
    } else {
        eprintln!(
            "pruned {} ({}): kept {}, removed {}; deleted {} archives ({} orphaned), {} segments, {} temp files",
            r.destination,
            r.policy,
            r.kept,
            r.removed,
            r.deleted_objects,
            r.orphans_deleted,
            r.segments_deleted,
            r.temps_swept
        );
    }
}
