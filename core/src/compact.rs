//! Compaction planning (docs/FORMAT.md §13.9): given the segments one
//! generation holds at each level and `now`, which runs of segments to
//! merge into the level above and which covered level-0 segments to delete.
//! Pure: the host lists, downloads, merges ([`crate::segment::Segment::merge`]),
//! uploads create-only and deletes.
//!
//! The rule, per level `n` ≥ 1 with interval `I(n)` (default 30 s, 1 h,
//! 24 h for levels 1, 2, 3):
//!
//! * the *candidates* are the level `n-1` segments after the last level `n`
//!   one (after its greatest `max_txid`), in a gap-free chain;
//! * they are merged into one level `n` segment once the oldest of them is
//!   `I(n)` old (so a level-`n` segment covers about `I(n)` of writes), or at
//!   once when the generation is *sealed* (no longer written: the replicator
//!   moved on to a newer one); at least two go into a merge (one alone
//!   waits for company: copying it up a level would buy nothing), at most
//!   [`Policy::max_inputs`] and [`Policy::max_bytes`];
//! * levels are planned bottom-up, a merge planned at level `n` counting as
//!   a level-`n` segment made `now` for level `n+1`, so one plan takes a
//!   sealed generation all the way up.
//!
//! Deletes: a segment of level `l` is deleted once a listed segment of a
//! higher level covers its whole range and has existed for
//! [`Policy::keep_covered_ms`]`[l]` (default: level 0 for one hour, so a
//! reader that listed before the merge finishes; higher levels are kept with
//! their generation, so restore points stay at least every `I(1)`).
//! Segment times are the store's modification times: a segment whose time
//! the store does not tell is never counted as old enough to cover anything.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

/// How a replicator compacts. The default is documented in FORMAT §13.9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `intervals_ms[i]` is level `i + 1`'s interval; its length is the top level.
    pub intervals_ms: Vec<i64>,
    /// `keep_covered_ms[l]`: how long a level-`l` segment stays once a higher
    /// one covers it (from that one's time); `None` or past the end: kept
    /// until its generation goes.
    pub keep_covered_ms: Vec<Option<i64>>,
    /// The most segments one merge takes (bounds a merge's downloads).
    pub max_inputs: usize,
    /// The most stored bytes one merge reads (bounds its memory and the
    /// merged object's size: readers take segments whole).
    pub max_bytes: u64,
}

pub const DEFAULT_INTERVALS_MS: [i64; 3] = [30_000, 3_600_000, 86_400_000];
pub const DEFAULT_KEEP_L0_MS: i64 = 3_600_000;
pub const DEFAULT_MAX_INPUTS: usize = 1024;
pub const DEFAULT_MAX_BYTES: u64 = 32 << 20;
/// Levels are two decimal digits in keys; a reader lists `00` to `09`.
pub const MAX_LEVEL: usize = 9;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            intervals_ms: DEFAULT_INTERVALS_MS.to_vec(),
            keep_covered_ms: vec![Some(DEFAULT_KEEP_L0_MS)],
            max_inputs: DEFAULT_MAX_INPUTS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl Policy {
    pub fn validate(&self) -> Result<()> {
        if self.intervals_ms.is_empty() || self.intervals_ms.len() > MAX_LEVEL {
            return Err(Error::param(
                "compaction",
                "give 1 to 9 level intervals, e.g. 30s,1h,24h",
            ));
        }
        if self.intervals_ms.iter().any(|i| *i <= 0) {
            return Err(Error::param("compaction", "level intervals must be over 0"));
        }
        if self.keep_covered_ms.iter().flatten().any(|k| *k <= 0) {
            return Err(Error::param(
                "compaction",
                "how long covered segments are kept must be over 0",
            ));
        }
        if self.max_inputs < 2 {
            return Err(Error::param(
                "compaction",
                "a merge takes at least 2 segments",
            ));
        }
        if self.max_bytes == 0 {
            return Err(Error::param(
                "compaction",
                "a merge must be allowed some bytes",
            ));
        }
        Ok(())
    }

    fn keep(&self, level: u8) -> Option<i64> {
        self.keep_covered_ms
            .get(usize::from(level))
            .copied()
            .flatten()
    }
}

/// A segment as listed: its key's level and range, and the store's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seg {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    /// When the store says it was written (Unix ms), if it says.
    pub time_ms: Option<i64>,
    /// Stored bytes (a merged segment's inputs sum to at most `max_bytes`).
    pub size: u64,
}

impl Seg {
    fn range(&self) -> (u8, u64, u64) {
        (self.level, self.min_txid, self.max_txid)
    }
}

/// Merge `inputs` (consecutive, one level below, in txid order; each listed
/// or the output of an earlier merge of the same plan) into one segment of
/// `level` covering `min_txid..=max_txid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub inputs: Vec<Seg>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the order to run them: an input made by an earlier merge comes
    /// after that merge.
    pub merges: Vec<Merge>,
    /// Segments to delete (only after every merge of the plan is written
    /// is not required: each is covered by a segment already listed).
    pub deletes: Vec<Seg>,
    /// When something not yet due becomes due (a merge or a delete), if
    /// anything is waiting: the host need not look again before then unless
    /// new segments arrive.
    pub next_at_ms: Option<i64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.merges.is_empty() && self.deletes.is_empty()
    }
}

/// Plans one compaction pass over one generation's segments (`listed`, in
/// any order; duplicates of one range count once). `sealed`: nobody
/// writes the generation any more, so everything is due now.
pub fn plan(listed: &[Seg], now_ms: i64, sealed: bool, policy: &Policy) -> Plan {
    // One entry per (level, min, max): the oldest time a store reported,
    // the greatest size.
    let mut segs: BTreeMap<(u8, u64, u64), (Option<i64>, u64)> = BTreeMap::new();
    for s in listed
        .iter()
        .filter(|s| s.min_txid >= 1 && s.min_txid <= s.max_txid)
    {
        let e = segs.entry(s.range()).or_insert((s.time_ms, s.size));
        e.0 = match (e.0, s.time_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        e.1 = e.1.max(s.size);
    }
    let listed = segs.clone();
    let mut out = Plan::default();
    for (i, &interval) in policy.intervals_ms.iter().enumerate().take(MAX_LEVEL) {
        let level = (i + 1) as u8;
        let below = level - 1;
        let last = segs.keys().filter(|k| k.0 == level).map(|k| k.2).max();
        // Level `below` by start; the longest first at each start.
        let mut starts: BTreeMap<u64, (u64, Option<i64>, u64)> = BTreeMap::new();
        for (&(l, lo, hi), &(t, size)) in &segs {
            if l == below && last.is_none_or(|m| lo > m) {
                let e = starts.entry(lo).or_insert((hi, t, size));
                if hi > e.0 {
                    *e = (hi, t, size);
                }
            }
        }
        // The chain starts right after the last level-`level` segment, or
        // (none yet, or a racing compactor left odd boundaries) at the
        // first candidate.
        let Some(mut at) = starts.keys().next().copied() else {
            continue;
        };
        let mut chain: Vec<Seg> = Vec::new();
        while let Some(&(hi, t, size)) = starts.get(&at) {
            chain.push(Seg {
                level: below,
                min_txid: at,
                max_txid: hi,
                time_ms: t,
                size,
            });
            match hi.checked_add(1) {
                Some(n) => at = n,
                None => break,
            }
        }
        // Runs of at most max_inputs segments and max_bytes bytes; a
        // segment over max_bytes goes up alone.
        let mut batches: Vec<Vec<Seg>> = Vec::new();
        let (mut cur, mut bytes) = (Vec::new(), 0u64);
        for s in chain {
            let alone = s.size > policy.max_bytes;
            if !cur.is_empty()
                && (alone
                    || cur.len() == policy.max_inputs
                    || bytes.saturating_add(s.size) > policy.max_bytes)
            {
                batches.push(std::mem::take(&mut cur));
                bytes = 0;
            }
            bytes = bytes.saturating_add(s.size);
            cur.push(s);
            if alone {
                batches.push(std::mem::take(&mut cur));
                bytes = 0;
            }
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        let n = batches.len();
        for (k, batch) in batches.iter().enumerate() {
            // The last run, alone, waits for company: copying one segment
            // up a level buys nothing. Elsewhere one goes up alone, so the
            // level stays gap-free.
            if batch.len() < 2 && k + 1 == n {
                break;
            }
            // A segment whose time is unknown counts as old: compaction
            // of it is never held back (deletes are, below).
            let oldest = batch.iter().map(|s| s.time_ms.unwrap_or(i64::MIN)).min();
            let oldest = oldest.expect("not empty");
            if !sealed && oldest > now_ms.saturating_sub(interval) {
                wake(oldest.saturating_add(interval), &mut out);
                break;
            }
            let (lo, hi) = (batch[0].min_txid, batch[batch.len() - 1].max_txid);
            let size = batch.iter().map(|s| s.size).sum();
            out.merges.push(Merge {
                level,
                min_txid: lo,
                max_txid: hi,
                inputs: batch.to_vec(),
            });
            segs.insert((level, lo, hi), (Some(now_ms), size));
        }
    }
    // The inputs of this plan's merges are covered once the host has
    // written them, and deleted after their grace: wake for that, or a
    // host that saw nothing else waiting would not look again before new
    // segments arrive, and the covered ones would stay until then.
    let grace = out
        .merges
        .iter()
        .flat_map(|m| &m.inputs)
        .filter_map(|s| policy.keep(s.level))
        .min();
    if let Some(keep) = grace {
        wake(now_ms.saturating_add(keep), &mut out);
    }
    // Deletes: covered by a listed (written) higher segment old enough.
    let covers: Vec<(u8, u64, u64, Option<i64>)> = listed
        .iter()
        .filter(|(k, _)| k.0 > 0)
        .map(|(k, t)| (k.0, k.1, k.2, t.0))
        .collect();
    for (&(l, lo, hi), &(t, size)) in &listed {
        let Some(keep) = policy.keep(l) else { continue };
        let ready = covers
            .iter()
            .filter(|c| c.0 > l && c.1 <= lo && hi <= c.2)
            .filter_map(|c| c.3)
            .min();
        let Some(since) = ready else { continue };
        if since.saturating_add(keep) <= now_ms {
            out.deletes.push(Seg {
                level: l,
                min_txid: lo,
                max_txid: hi,
                time_ms: t,
                size,
            });
        } else {
            wake(since.saturating_add(keep), &mut out);
        }
    }
    out
}

fn wake(t: i64, out: &mut Plan) {
    out.next_at_ms = Some(out.next_at_ms.map_or(t, |x| x.min(t)));
}

/// The ranges a plan's merges may read: listed segments and earlier
/// outputs of the plan. Errors name a merge whose inputs do not chain (a
/// bug, never expected; the host checks before it downloads anything).
pub fn check(listed: &[Seg], p: &Plan) -> Result<()> {
    let mut have: BTreeSet<(u8, u64, u64)> = listed.iter().map(Seg::range).collect();
    for m in &p.merges {
        let mut next = m.min_txid;
        for s in &m.inputs {
            if s.level + 1 != m.level || s.min_txid != next || !have.contains(&s.range()) {
                return Err(Error::Catalog(format!(
                    "compaction plan: merge into level {} at {}..{} has an input that does not chain",
                    m.level, m.min_txid, m.max_txid
                )));
            }
            next = s.max_txid.wrapping_add(1);
        }
        if m.inputs.last().map(|s| s.max_txid) != Some(m.max_txid) {
            return Err(Error::Catalog(format!(
                "compaction plan: merge into level {} at {}..{} ends elsewhere",
                m.level, m.min_txid, m.max_txid
            )));
        }
        have.insert((m.level, m.min_txid, m.max_txid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{SegmentInfoLite, route};
    use proptest::prelude::*;

    fn seg(level: u8, lo: u64, hi: u64, t: i64) -> Seg {
        Seg {
            level,
            min_txid: lo,
            max_txid: hi,
            time_ms: Some(t),
            size: 10 * (hi - lo + 1),
        }
    }

    /// Applies a plan as the host does: merges written at `now`, deletes done.
    fn apply(listed: &mut Vec<Seg>, p: &Plan, now: i64) {
        for m in &p.merges {
            listed.push(seg(m.level, m.min_txid, m.max_txid, now));
        }
        let gone: BTreeSet<_> = p.deletes.iter().map(Seg::range).collect();
        listed.retain(|s| !gone.contains(&s.range()));
    }

    fn reach(listed: &[Seg], bound: Option<u64>) -> u64 {
        let lite: Vec<SegmentInfoLite> = listed
            .iter()
            .map(|s| SegmentInfoLite {
                level: s.level,
                min_txid: s.min_txid,
                max_txid: s.max_txid,
            })
            .collect();
        route(&lite, 1, bound)
            .last()
            .map_or(0, |i| listed[*i].max_txid)
    }

    fn fast() -> Policy {
        Policy {
            intervals_ms: vec![30, 600, 6000],
            keep_covered_ms: vec![Some(100)],
            max_inputs: 8,
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn l0_waits_for_the_interval_then_merges_and_is_deleted_after_the_grace() {
        let p = Policy::default();
        let l0 = vec![
            seg(0, 1, 3, 1_000),
            seg(0, 4, 4, 2_000),
            seg(0, 5, 9, 20_000),
        ];
        let early = plan(&l0, 10_000, false, &p);
        assert!(early.is_empty());
        assert_eq!(early.next_at_ms, Some(31_000));
        let due = plan(&l0, 31_000, false, &p);
        assert_eq!(due.merges.len(), 1);
        assert_eq!((due.merges[0].min_txid, due.merges[0].max_txid), (1, 9));
        // Nothing else waits, but the inputs' grace does: without this wake
        // a host would not look again until new segments arrived.
        assert_eq!(due.next_at_ms, Some(31_000 + DEFAULT_KEEP_L0_MS));
        let mut l = l0.clone();
        apply(&mut l, &due, 31_000);
        let again = plan(&l, 31_000, false, &p);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(again.next_at_ms, Some(31_000 + DEFAULT_KEEP_L0_MS));
        let later = plan(&l, 31_000 + DEFAULT_KEEP_L0_MS, false, &p);
        assert_eq!(later.deletes.len(), 3);
        apply(&mut l, &later, 0);
        assert_eq!(l, vec![seg(1, 1, 9, 31_000)]);
    }

    #[test]
    fn a_sealed_generation_goes_to_the_top_in_one_plan_and_one_segment_waits() {
        let p = Policy::default();
        let l0: Vec<Seg> = (1..=5).map(|i| seg(0, i, i, 0)).collect();
        let pl = plan(&l0, 1, true, &p);
        check(&l0, &pl).unwrap();
        // 5 level-0 → one level 1; one level-1 alone does not go up.
        assert_eq!(pl.merges.len(), 1);
        // A level 1 at 1..5, then level 0 6..10: level 1 6..10 is made,
        // and level 2 from both level 1 segments, in one plan.
        let mut l = vec![seg(1, 1, 5, 0)];
        l.extend((6..=10).map(|i| seg(0, i, i, 0)));
        let pl = plan(&l, 1, true, &p);
        check(&l, &pl).unwrap();
        let got: Vec<(u8, u64, u64)> = pl
            .merges
            .iter()
            .map(|m| (m.level, m.min_txid, m.max_txid))
            .collect();
        assert_eq!(got, vec![(1, 6, 10), (2, 1, 10)]);
        // Open, the same listing waits for the interval.
        assert!(plan(&l, 1, false, &p).merges.is_empty());
    }

    #[test]
    fn unknown_times_merge_but_never_cover_a_delete() {
        let p = fast();
        let l = vec![
            Seg {
                time_ms: None,
                ..seg(0, 1, 1, 0)
            },
            Seg {
                time_ms: None,
                ..seg(0, 2, 2, 0)
            },
            Seg {
                time_ms: None,
                ..seg(1, 1, 2, 0)
            },
        ];
        let pl = plan(&l, 1_000_000, false, &p);
        assert!(pl.deletes.is_empty());
    }

    #[test]
    fn policy_errors() {
        assert!(Policy::default().validate().is_ok());
        for bad in [
            Policy {
                intervals_ms: vec![],
                ..Policy::default()
            },
            Policy {
                intervals_ms: vec![0],
                ..Policy::default()
            },
            Policy {
                keep_covered_ms: vec![Some(0)],
                ..Policy::default()
            },
            Policy {
                max_inputs: 1,
                ..Policy::default()
            },
            Policy {
                max_bytes: 0,
                ..Policy::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overlapping_segments_of_a_racing_compactor_are_routed_and_compacted() {
        // Another compactor made 1..6 beside our 1..3; we went on at 7.
        let l = vec![
            seg(0, 1, 3, 0),
            seg(0, 4, 6, 0),
            seg(0, 7, 8, 0),
            seg(0, 9, 9, 0),
            seg(1, 1, 3, 0),
            seg(1, 1, 6, 0),
            seg(1, 7, 9, 0),
        ];
        assert_eq!(reach(&l, None), 9);
        let pl = plan(&l, 10_000, false, &fast());
        check(&l, &pl).unwrap();
        // Level 2 from the longest chain: 1..6, 7..9.
        assert_eq!(pl.merges.len(), 1);
        assert_eq!((pl.merges[0].min_txid, pl.merges[0].max_txid), (1, 9));
        let mut l2 = l.clone();
        apply(&mut l2, &pl, 10_000);
        assert_eq!(reach(&l2, None), 9);
        assert!(pl.deletes.len() == 4, "every level 0 is covered: {pl:?}");
    }

    /// A generation's life: level-0 segments arrive over time, compaction
    /// runs now and then, and at the end the generation is sealed.
    fn arb_history() -> impl Strategy<Value = (Vec<(u64, i64)>, Vec<i64>, usize, u64)> {
        (
            prop::collection::vec((1u64..5, 1i64..40), 1..60),
            prop::collection::vec(1i64..200, 1..20),
            2usize..6,
            30u64..400,
        )
    }

    proptest! {
        #[test]
        fn compaction_keeps_every_restore_point_it_promises(
            (writes, passes, max_inputs, max_bytes) in arb_history()
        ) {
            let mut policy = fast();
            policy.max_inputs = max_inputs;
            policy.max_bytes = max_bytes;
            let mut listed: Vec<Seg> = Vec::new();
            let (mut next, mut now) = (1u64, 0i64);
            let mut w = writes.iter().peekable();
            let mut ends_l0 = Vec::new();
            let mut pass = passes.iter().cycle();
            let mut sealed = false;
            let mut rounds = 0;
            while !sealed || rounds < 3 {
                if w.peek().is_none() { sealed = true; rounds += 1; }
                // Some writes, then a pass.
                for _ in 0..3 {
                    if let Some((n, dt)) = w.next() {
                        now += dt;
                        listed.push(seg(0, next, next + n - 1, now));
                        next += n;
                        ends_l0.push(next - 1);
                    }
                }
                now += pass.next().unwrap();
                let before = listed.clone();
                let p = plan(&listed, now, sealed, &policy);
                // Inputs chain and exist; outputs cover exactly their inputs.
                check(&listed, &p).unwrap();
                for m in &p.merges {
                    prop_assert!(!m.inputs.is_empty() && m.inputs.len() <= max_inputs);
                    prop_assert!(
                        m.inputs.len() == 1
                            || m.inputs.iter().map(|s| s.size).sum::<u64>() <= max_bytes
                    );
                    prop_assert_eq!(m.inputs[0].min_txid, m.min_txid);
                    // A new segment never overlaps one of its own level.
                    for s in before.iter().filter(|s| s.level == m.level) {
                        prop_assert!(s.max_txid < m.min_txid, "{:?} overlaps {:?}", m, s);
                    }
                }
                // Deterministic: the order of the listing does not matter.
                let mut rev = listed.clone();
                rev.reverse();
                prop_assert_eq!(&plan(&rev, now, sealed, &policy), &p);
                apply(&mut listed, &p, now);
                // Idempotent: the same pass again plans nothing.
                let again = plan(&listed, now, sealed, &policy);
                prop_assert!(again.is_empty(), "{:?}", again);
                // Nothing written is lost: the newest point is still reached.
                prop_assert_eq!(reach(&listed, None), next - 1);
                // Every merged segment's end stays a restore point.
                for s in listed.iter().filter(|s| s.level > 0) {
                    prop_assert_eq!(reach(&listed, Some(s.max_txid)), s.max_txid);
                }
                // Level-0 ends not yet covered stay restore points.
                for &e in &ends_l0 {
                    if listed.iter().any(|s| s.level == 0 && s.max_txid == e) {
                        prop_assert_eq!(reach(&listed, Some(e)), e);
                    }
                }
            }
            // Sealed and long past every grace: few segments remain to read.
            now += 1_000_000;
            for _ in 0..2 {
                let p = plan(&listed, now, true, &policy);
                apply(&mut listed, &p, now);
                now += 1_000_000;
            }
            let p = plan(&listed, now, true, &policy);
            apply(&mut listed, &p, now);
            prop_assert_eq!(reach(&listed, None), next - 1);
            // Sealed: everything but a last lone segment went up a level.
            prop_assert!(writes.len() < 2 || listed.iter().any(|s| s.level > 0));
            prop_assert!(listed.iter().filter(|s| s.level == 0).count() <= 1 + max_inputs);
            prop_assert!(listed.iter().all(|s| s.level > 0 || !listed.iter().any(|h| h.level > 0 && h.min_txid <= s.min_txid && s.max_txid <= h.max_txid)));
        }
    }
}
