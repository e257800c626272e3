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

use anyhow::{Context, Result, bail};
use cairn_core::catalog::SNAPSHOT_PREFIX;
use cairn_core::layout::{GroupPlan, Removal};
use cairn_core::retention::Policy;
use serde::Serialize;

use crate::repo;
use crate::storage::{Dest, now_ms};

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
}

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
    let plan = loaded.state.retention(&opts.policy, now);
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
    let keys: Vec<String> = doomed.iter().map(|(k, _)| k.to_string()).collect();
    dest.delete(&keys).with_context(|| {
        format!(
            "cannot delete archives in {}",
            dest.describe(SNAPSHOT_PREFIX)
        )
    })?;
    report.deleted_objects = doomed.iter().filter(|d| d.1).count();
    report.retried_deletes = doomed.len() - report.deleted_objects;

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
            "pruned {} ({}): kept {}, removed {}; deleted {} archives ({} orphaned), {} temp files",
            r.destination,
            r.policy,
            r.kept,
            r.removed,
            r.deleted_objects,
            r.orphans_deleted,
            r.temps_swept
        );
    }
}
