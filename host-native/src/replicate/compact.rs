//! Compaction in the background of a replicator (docs/FORMAT.md §13.9):
//! a thread beside the shipping loop lists a generation's segments, asks
//! the core planner ([`cairn_core::compact::plan`]) which runs to merge into
//! the level above and which covered level-0 segments to delete, downloads
//! and merges the runs, uploads each merged segment create-only, and only
//! then deletes what the plan says (covered segments past their grace). It
//! never holds up shipping: it has its own requests and its own CPU, and
//! a failed pass is logged and tried again later. Prune uses
//! [`delete_covered`] for replicas no replicator is running on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use cairn_core::compact::{Plan, Policy, Seg, check, plan};
use cairn_core::encoder::EncryptionParams;
use cairn_core::segment::{Keys, Segment, segment_ext, segment_key_ext};
use cairn_core::{Compression, SourceKind, WriterParams};
use serde::Serialize;

use super::ReplicateOptions;
use super::generation::{Listed, generations, list_segments};
use crate::storage::{Cond, Dest, now_ms};

/// What compaction did during a run (for the report).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct CompactStats {
    /// Merged segments written.
    pub merged: u64,
    /// Segments read to merge them.
    pub inputs: u64,
    /// Covered segments deleted.
    pub deleted: u64,
    pub bytes_written: u64,
    pub passes: u64,
}

/// How a segment is written: the replicator's codec and key.
pub struct Writer<'a> {
    pub db_name: &'a str,
    pub compression: Compression,
    pub encryption: Option<EncryptionParams>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut r = [0u8; N];
    getrandom::fill(&mut r).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
    Ok(r)
}

impl Writer<'_> {
    /// The segment's object and its key.
    pub fn encode(&self, seg: &Segment) -> Result<(String, Vec<u8>)> {
        let encryption = match &self.encryption {
            None => None,
            Some(e) => Some(EncryptionParams {
                salt: random()?,
                ..e.clone()
            }),
        };
        let key = segment_key_ext(
            &seg.info.generation,
            seg.info.level,
            seg.info.min_txid,
            seg.info.max_txid,
            segment_ext(encryption.is_some(), self.compression),
        );
        let bytes = seg.build(WriterParams {
            archive_id: random()?,
            source: SourceKind::File,
            db_name: self.db_name.to_string(),
            created_at_ms: seg.info.time_ms,
            page_size: seg.info.page_size,
            chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
            compression: self.compression,
            encryption,
        })?;
        Ok((key, bytes))
    }
}

fn as_seg(l: &Listed) -> Seg {
    Seg {
        level: l.level,
        min_txid: l.min_txid,
        max_txid: l.max_txid,
        time_ms: l.modified_ms,
        size: l.size,
    }
}

/// The keys listed under each (level, min, max): one normally, two when a
/// range was written with two codecs (a restart with another `--codec`).
fn keys_by_range(listed: &[Listed]) -> BTreeMap<(u8, u64, u64), Vec<String>> {
    let mut m: BTreeMap<(u8, u64, u64), Vec<String>> = BTreeMap::new();
    for l in listed {
        m.entry((l.level, l.min_txid, l.max_txid))
            .or_default()
            .push(l.key.clone());
    }
    m
}

/// One compaction pass over one generation of one destination: the
/// merges and deletes the planner says are due at `now`. Returns when
/// something waiting becomes due. `stop` is looked at between merges.
#[allow(clippy::too_many_arguments)]
pub fn pass(
    dest: &Dest,
    generation: &str,
    sealed: bool,
    now: i64,
    policy: &Policy,
    writer: &Writer,
    keys: &mut Keys,
    stats: &mut CompactStats,
    stop: &AtomicBool,
) -> Result<Option<i64>> {
    let listed = list_segments(dest, generation)?;
    let segs: Vec<Seg> = listed.iter().map(as_seg).collect();
    let p = plan(&segs, now, sealed, policy);
    check(&segs, &p).map_err(|e| anyhow!("{e}"))?;
    let by_range = keys_by_range(&listed);
    // Outputs of this plan that a later merge of it reads (a sealed
    // generation goes up several levels in one plan).
    let mut made: HashMap<(u8, u64, u64), Segment> = HashMap::new();
    for m in &p.merges {
        if stop.load(Ordering::Relaxed) {
            return Ok(Some(now));
        }
        let mut inputs = Vec::with_capacity(m.inputs.len());
        let mut to_fetch = Vec::new();
        for s in &m.inputs {
            let r = (s.level, s.min_txid, s.max_txid);
            if !made.contains_key(&r) {
                let k = by_range.get(&r).and_then(|v| v.first()).ok_or_else(|| {
                    anyhow!("segment {r:?} of generation {generation} is not listed")
                })?;
                to_fetch.push(k.clone());
            }
        }
        let mut fetched = super::restore::fetch(dest, &to_fetch)?.into_iter();
        let mut names = to_fetch.iter();
        for s in &m.inputs {
            let r = (s.level, s.min_txid, s.max_txid);
            match made.remove(&r) {
                Some(seg) => inputs.push(seg),
                None => {
                    let (k, bytes) = (
                        names.next().expect("one per fetch"),
                        fetched.next().expect("one per fetch"),
                    );
                    inputs.push(
                        Segment::open_with(&bytes, k, keys)
                            .map_err(|e| anyhow!("{}: {e}", dest.describe(k)))?,
                    );
                    stats.inputs += 1;
                }
            }
        }
        let merged = Segment::merge(m.level, &inputs).map_err(|e| {
            anyhow!(
                "cannot merge transactions {}..{} of generation {generation}: {e}",
                m.min_txid,
                m.max_txid
            )
        })?;
        drop(inputs);
        let (key, bytes) = writer.encode(&merged)?;
        let n = bytes.len() as u64;
        // Create-only: a racing compactor that made the same range wrote
        // the same pages (a range's pages do not depend on how it was cut).
        dest.put(&key, bytes, Cond::CreateOnly)
            .with_context(|| format!("cannot write {}", dest.describe(&key)))?;
        stats.merged += 1;
        stats.bytes_written += n;
        if p.merges.iter().any(|later| {
            later
                .inputs
                .iter()
                .any(|s| (s.level, s.min_txid, s.max_txid) == (m.level, m.min_txid, m.max_txid))
        }) {
            made.insert((m.level, m.min_txid, m.max_txid), merged);
        }
    }
    stats.deleted += delete(dest, &p, &by_range)?;
    stats.passes += 1;
    Ok(p.next_at_ms)
}

fn delete(dest: &Dest, p: &Plan, by_range: &BTreeMap<(u8, u64, u64), Vec<String>>) -> Result<u64> {
    let keys: Vec<String> = p
        .deletes
        .iter()
        .flat_map(|s| {
            by_range
                .get(&(s.level, s.min_txid, s.max_txid))
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    dest.delete(&keys)
        .with_context(|| format!("cannot delete compacted segments in {}", dest.describe("")))?;
    Ok(keys.len() as u64)
}

/// Deletes the covered segments of `generation` that are past their grace,
/// and nothing else (what `prune` does for replicas: merging needs the
/// lease, deleting what a written merge covers does not). Returns how many.
pub fn delete_covered(dest: &Dest, generation: &str, now: i64, policy: &Policy) -> Result<u64> {
    let listed = list_segments(dest, generation)?;
    let segs: Vec<Seg> = listed.iter().map(as_seg).collect();
    let mut p = plan(&segs, now, false, policy);
    p.merges.clear();
    delete(dest, &p, &keys_by_range(&listed))
}

/// Runs `ship` (the replicator's loop) with compaction beside it in a
/// thread, until `ship` returns; then stops compaction (a merge under way
/// is finished or dropped, never half written) and returns both outcomes.
pub fn alongside<F: FnOnce() -> Result<()>>(
    dests: &[Dest],
    opts: &ReplicateOptions,
    db_name: &str,
    encryption: Option<EncryptionParams>,
    ship: F,
) -> (Result<()>, CompactStats) {
    let Some(policy) = opts.compaction.clone() else {
        return (ship(), CompactStats::default());
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let writer = Writer {
                db_name,
                compression: opts.compression,
                encryption,
            };
            background(dests, opts, &policy, &writer, &done)
        });
        let res = ship();
        done.store(true, Ordering::Relaxed);
        let stats = h.join().unwrap_or_default();
        (res, stats)
    })
}

/// The compaction thread: which generation to look at when. Every
/// generation of the database is looked at once at start-up and when the
/// replicator moves to a new one (the old one is then sealed: compacted to
/// the top at once); the one being written when the planner says something
/// becomes due, or an interval after new segments were shipped.
fn background(
    dests: &[Dest],
    opts: &ReplicateOptions,
    policy: &Policy,
    writer: &Writer,
    done: &AtomicBool,
) -> CompactStats {
    let mut stats = CompactStats::default();
    let mut keys = Keys::new(opts.key.clone());
    let first = policy.intervals_ms.first().copied().unwrap_or(30_000);
    // (destination, generation) → when to look at it next.
    let mut due: BTreeMap<(usize, String), i64> = BTreeMap::new();
    let mut seen_gen: Option<Option<String>> = None;
    let mut seen_segments = 0;
    let mut last_error: Option<String> = None;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let (current, shipped) = {
            let st = opts.status.lock().unwrap();
            (st.generation.clone(), st.segments)
        };
        let now = now_ms();
        if seen_gen.as_ref() != Some(&current) {
            // Start-up or a new generation: every generation of the
            // database (the sealed ones may have work left).
            seen_gen = Some(current.clone());
            for (i, d) in dests.iter().enumerate() {
                match crate::repo::load(d) {
                    Ok(l) => {
                        for g in generations(&l.state, Some(writer.db_name)) {
                            due.insert((i, g.id), now);
                        }
                    }
                    Err(e) => report(opts, &mut last_error, &format!("{e:#}")),
                }
            }
        }
        if shipped != seen_segments {
            seen_segments = shipped;
            if let Some(g) = &current {
                for i in 0..dests.len() {
                    due.entry((i, g.clone())).or_insert(now + first);
                }
            }
        }
        let ready: Vec<(usize, String)> = due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (i, g) in ready {
            if done.load(Ordering::Relaxed) {
                break;
            }
            let sealed = current.as_deref() != Some(g.as_str());
            match pass(
                &dests[i], &g, sealed, now, policy, writer, &mut keys, &mut stats, done,
            ) {
                Ok(Some(t)) => {
                    due.insert((i, g), t.max(now + 1));
                }
                Ok(None) => {
                    due.remove(&(i, g));
                }
                Err(e) => {
                    report(opts, &mut last_error, &format!("compaction: {e:#}"));
                    due.insert((i, g), now + first);
                }
            }
        }
    }
    stats
}

fn report(opts: &ReplicateOptions, last: &mut Option<String>, msg: &str) {
    if last.as_deref() != Some(msg) {
        opts.log.warn(&format!("{msg}; trying again later"));
        *last = Some(msg.to_string());
    }
}

/// The policy for `--compact LEVELS` (`30s,1h,24h`: level 1 every 30 s of
/// level 0, …; `off`: no compaction) and `--keep-compacted` (how long a
/// level-0 segment stays once a merged one covers it).
pub fn parse_policy(levels: &str, keep_compacted: Duration) -> Result<Option<Policy>> {
    let levels = levels.trim();
    if levels == "off" {
        return Ok(None);
    }
    let mut intervals_ms = Vec::new();
    for part in levels.split(',') {
        let d = humantime::parse_duration(part.trim()).map_err(|_| {
            anyhow!("{part:?} is not a duration; give level intervals like 30s,1h,24h, or off")
        })?;
        intervals_ms.push(d.as_millis().min(i64::MAX as u128) as i64);
    }
    let p = Policy {
        intervals_ms,
        keep_covered_ms: vec![Some(keep_compacted.as_millis().min(i64::MAX as u128) as i64)],
        ..Policy::default()
    };
    p.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_from_flags() {
        let p = parse_policy("30s, 1h,24h", Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        assert_eq!(p, Policy::default());
        assert!(
            parse_policy("off", Duration::from_secs(1))
                .unwrap()
                .is_none()
        );
        for bad in ["", "soon", "0s", "1s,2s,3s,4s,5s,6s,7s,8s,9s,10s"] {
            assert!(parse_policy(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
        assert!(parse_policy("1s", Duration::ZERO).is_err());
    }
}
