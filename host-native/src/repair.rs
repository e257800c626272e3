//! `cairn repair`: rebuild a destination's catalog from what it holds.
//! The whole log is replayed from commit 1 (checkpoints are derived data and
//! may be damaged) and written as a fresh checkpoint; archives that no
//! backup names are listed, and with `--adopt` read (header and sums) and
//! committed back, so a lost or damaged log never loses a backup.

use std::io::Read;

use anyhow::{Context, Result, anyhow};
use cairn_core::KeyMaterial;
use cairn_core::catalog::{Entry, SNAPSHOT_PREFIX};
use cairn_core::frame::{Event, FrameParser};
use cairn_core::layout::{self, Checkpoint, State};
use serde::Serialize;

use crate::progress::Progress;
use crate::storage::{Cond, Dest};
use crate::{pipeline, repo};

#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub destination: String,
    pub layout: u32,
    pub commits: u64,
    pub backups: usize,
    /// The checkpoint written (layout 2).
    pub checkpoint: Option<String>,
    /// Archives that no backup names.
    pub orphans: Vec<String>,
    /// Of those, the ones committed back (`--adopt`).
    pub adopted: Vec<String>,
    pub problems: Vec<String>,
}

pub fn run(dest: &Dest, adopt: bool, key: &KeyMaterial) -> Result<RepairReport> {
    let mut loaded = repo::load(dest).or_else(|e| {
        // A damaged checkpoint or marker must not stop a repair: replay.
        eprintln!("warning: {e:#}; replaying the log from the start");
        Ok::<_, anyhow::Error>(repo::Loaded {
            layout: repo::Layout::V2(cairn_core::layout::Marker::new(
                crate::storage::now_ms(),
                true,
                None,
            )),
            state: State::default(),
            checkpoint_seq: 0,
            checkpoints: vec![],
            requests: 0,
        })
    })?;
    let mut report = RepairReport {
        destination: dest.describe(""),
        layout: if loaded.is_v2() { 2 } else { 1 },
        commits: 0,
        backups: 0,
        checkpoint: None,
        orphans: vec![],
        adopted: vec![],
        problems: vec![],
    };
    if loaded.is_v2() {
        let (log, _) = repo::read_log(dest, 0)?;
        let mut state = State::default();
        for c in &log {
            if c.seq != state.seq + 1 {
                report.problems.push(format!(
                    "commits {} to {} are missing from the log",
                    state.seq + 1,
                    c.seq - 1
                ));
            }
            state.apply(c)?;
        }
        if state.entries != loaded.state.entries {
            report
                .problems
                .push("the newest checkpoint did not match the log; the log wins".to_string());
        }
        report.problems.extend(state.warnings.iter().cloned());
        report.commits = state.seq;
        if state.seq > 0 {
            let key = layout::checkpoint_key(state.seq);
            // Checkpoints are a pure function of the log: replacing one with
            // the replay's is always right.
            dest.put(&key, Checkpoint::of(&state).render(), Cond::Overwrite)
                .with_context(|| format!("cannot write {}", dest.describe(&key)))?;
            report.checkpoint = Some(key);
        }
        loaded.checkpoint_seq = state.seq;
        loaded.state = state;
    }
    let named: std::collections::BTreeSet<String> = loaded
        .state
        .entries
        .values()
        .map(|e| e.object.clone())
        .collect();
    let listing = dest
        .list(SNAPSHOT_PREFIX, None)
        .with_context(|| format!("cannot list {}", dest.describe(SNAPSHOT_PREFIX)))?;
    report.orphans = listing
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !named.contains(k))
        .collect();
    if adopt {
        for object in report.orphans.clone() {
            match describe_archive(dest, &object, key) {
                Ok(entry) => {
                    let mut c = repo::write::new_commit();
                    c.add_entry(&entry)?;
                    c.note = Some(format!("repair: adopted {object}"));
                    repo::write::append(dest, &mut loaded, c)?;
                    report.adopted.push(object);
                }
                Err(e) => report
                    .problems
                    .push(format!("{}: not adopted: {e:#}", dest.describe(&object))),
            }
        }
    }
    report.backups = loaded.state.entries.len();
    Ok(report)
}

/// The catalog entry of an archive, from its own bytes: the header gives
/// what the backup was, a full decode gives the sizes and sums.
fn describe_archive(dest: &Dest, object: &str, key: &KeyMaterial) -> Result<Entry> {
    let what = dest.describe(object);
    let id = object
        .strip_prefix(SNAPSHOT_PREFIX)
        .and_then(|n| n.split('.').next())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("{what} is not named like an archive"))?
        .to_string();
    let mut head = vec![0u8; 64 << 10];
    let mut r = dest
        .reader(object)
        .with_context(|| format!("cannot read {what}"))?;
    let mut n = 0;
    while n < head.len() {
        let k = r
            .read(&mut head[n..])
            .with_context(|| format!("cannot read {what}"))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let mut parser = FrameParser::new();
    parser.push(&head[..n]);
    let meta = match parser.next_event().map_err(|e| anyhow!("{what}: {e}"))? {
        Some(Event::Header { meta, .. }) => meta,
        _ => return Err(anyhow!("{what}: no archive header in its first 64 KiB")),
    };
    if meta.encryption.is_encrypted() && matches!(key, KeyMaterial::None) {
        return Err(anyhow!(
            "it is encrypted: pass its key (--key-file) to adopt it"
        ));
    }
    let input = dest
        .reader(object)
        .with_context(|| format!("cannot read {what}"))?;
    let decoded = pipeline::decode_native(input, key, std::io::sink(), &Progress::hidden(), true)
        .map_err(|e| crate::hints::archive_error(e, &what, &dest.describe("")))?;
    Ok(Entry::for_snapshot(
        id,
        object.to_string(),
        &meta,
        (decoded.plain_len, decoded.plain_sha256),
        (
            decoded.stored_len,
            decoded
                .stored_sha256
                .ok_or_else(|| anyhow!("{what}: its digest was not computed"))?,
        ),
    ))
}

/// `cairn repair`.
pub fn cli(a: crate::cli::RepairArgs, dest: &Dest) -> Result<()> {
    let r = run(dest, a.adopt, &a.key.load()?)?;
    if a.json {
        return crate::cli::print_json(&r);
    }
    for p in &r.problems {
        eprintln!("found: {p}");
    }
    eprintln!(
        "{}: layout {}, {} commits, {} backups{}",
        r.destination,
        r.layout,
        r.commits,
        r.backups,
        r.checkpoint
            .as_ref()
            .map(|c| format!("; wrote {c}"))
            .unwrap_or_default()
    );
    if !r.orphans.is_empty() {
        eprintln!(
            "{} archives are not in the catalog{}:",
            r.orphans.len(),
            if a.adopt {
                ""
            } else {
                " (add them back with --adopt)"
            }
        );
        for o in &r.orphans {
            let mark = if r.adopted.contains(o) {
                "adopted  "
            } else {
                "orphan   "
            };
            eprintln!("  {mark}{o}");
        }
    }
    Ok(())
}
