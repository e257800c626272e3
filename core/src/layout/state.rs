//! A destination's state: the fold of its commits, in sequence order, over
//! its newest checkpoint. Which backups exist, recent removals (so a
//! crashed prune's deletes are retried), and the retention plan over them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::commit::{Checked, Commit, INTEGRITY_CHECK};
use crate::catalog::{Entry, EntryKind};
use crate::error::{Error, Result};
use crate::retention::{self, Decision, Policy};
use crate::segment::GENERATION_KIND;

/// A removal still remembered: its object is deleted again by later prunes
/// until `REMOVED_KEEP_MS` after it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub id: String,
    pub object: String,
    pub seq: u64,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The last commit folded in (0: none).
    pub seq: u64,
    /// The time of that commit.
    pub at_ms: i64,
    /// Backups by id.
    pub entries: BTreeMap<String, Entry>,
    /// Entries of kinds this cairn does not know, by id: kept, never pruned.
    pub others: BTreeMap<String, Value>,
    pub removed: Vec<Removed>,
    /// Things a reader should be told (an id added twice with different contents).
    pub warnings: Vec<String>,
    /// Archives whose key's time is before this were examined by an orphan
    /// sweep (0: never swept).
    pub swept_before_ms: i64,
    /// The newest check each backup passed, by id.
    pub checked: BTreeMap<String, Checked>,
}

/// The retention plan for one database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupPlan {
    pub db_name: String,
    pub decisions: Vec<Decision>,
}

fn entry_order(e: &Entry) -> (i64, &str) {
    (e.created_at_ms, e.id.as_str())
}

impl State {
    pub fn from_checkpoint(c: Checkpoint) -> Result<Self> {
        let mut s = State {
            seq: c.seq,
            at_ms: c.at_ms,
            removed: c.removed,
            swept_before_ms: c.swept_before_ms.unwrap_or(0),
            ..State::default()
        };
        for k in c.checked {
            s.checked.insert(k.id.clone(), k);
        }
        for e in c.entries {
            crate::catalog::validate_object_key(&e.object)?;
            s.entries.insert(e.id.clone(), e);
        }
        for o in c.others {
            let id = o
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Catalog("a checkpoint entry has no id".into()))?
                .to_string();
            s.others.insert(id, o);
        }
        Ok(s)
    }

    /// Folds in commit `c`, which must come after everything folded so far.
    pub fn apply(&mut self, c: &Commit) -> Result<()> {
        if c.seq <= self.seq {
            return Err(Error::Catalog(format!(
                "commit {} applied after commit {}",
                c.seq, self.seq
            )));
        }
        for r in &c.remove {
            self.entries.remove(&r.id);
            self.others.remove(&r.id);
            self.checked.remove(&r.id);
            self.removed.push(Removed {
                id: r.id.clone(),
                object: r.object.clone(),
                seq: c.seq,
                at_ms: c.created_at_ms,
            });
        }
        for a in &c.add {
            let id = a.get("id").and_then(Value::as_str).unwrap_or_default();
            let kind = a.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind == "snapshot" {
                let e: Entry = serde_json::from_value(a.clone()).map_err(|e| {
                    Error::Catalog(format!(
                        "{}: entry {id} does not decode ({e})",
                        super::log_key(c.seq)
                    ))
                })?;
                debug_assert_eq!(e.kind, EntryKind::Snapshot);
                crate::catalog::validate_object_key(&e.object)?;
                match self.entries.get(id) {
                    Some(old) if *old == e => {} // the same commit made twice
                    Some(_) => self.warnings.push(format!(
                        "{} adds backup {id} again with other contents; the first is kept",
                        super::log_key(c.seq)
                    )),
                    None => {
                        self.entries.insert(id.to_string(), e);
                    }
                }
            } else {
                self.others
                    .entry(id.to_string())
                    .or_insert_with(|| a.clone());
            }
        }
        for k in &c.checked {
            // Only for a backup that exists: a check of one removed (or never
            // added) must not outlive it and meet a later id by chance.
            if !self.entries.contains_key(&k.id) {
                continue;
            }
            match self.checked.get(&k.id) {
                Some(old) if old.at_ms >= k.at_ms => {}
                _ => {
                    self.checked.insert(k.id.clone(), k.clone());
                }
            }
        }
        if let Some(t) = c.swept_before_ms {
            self.swept_before_ms = self.swept_before_ms.max(t);
        }
        let horizon = c.created_at_ms.saturating_sub(super::REMOVED_KEEP_MS);
        self.removed.retain(|r| r.at_ms >= horizon);
        self.seq = c.seq;
        self.at_ms = c.created_at_ms;
        Ok(())
    }

    /// Backups oldest first, by (`created_at_ms`, `id`).
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by(|a, b| entry_order(a).cmp(&entry_order(b)));
        v
    }

    /// The newest backup, of one database or of any.
    pub fn newest(&self, db_name: Option<&str>) -> Option<&Entry> {
        self.entries
            .values()
            .filter(|e| db_name.is_none_or(|n| e.db_name == n))
            .max_by(|a, b| entry_order(a).cmp(&entry_order(b)))
    }

    /// The newest backup of each database, by database name.
    pub fn newest_per_db(&self) -> BTreeMap<&str, &Entry> {
        let mut out: BTreeMap<&str, &Entry> = BTreeMap::new();
        for e in self.entries.values() {
            let slot = out.entry(e.db_name.as_str()).or_insert(e);
            if entry_order(e) > entry_order(slot) {
                *slot = e;
            }
        }
        out
    }

    /// Where an orphan sweep starts listing `snapshots/`: `SWEEP_MARGIN_MS`
    /// before the last sweep's mark, so a writer whose clock was behind by
    /// less than that still has its orphans found. `None`: from the start.
    pub fn sweep_start_key(&self) -> Option<String> {
        (self.swept_before_ms > 0).then(|| {
            let t = self.swept_before_ms.saturating_sub(super::SWEEP_MARGIN_MS);
            format!(
                "{}{}",
                crate::catalog::SNAPSHOT_PREFIX,
                crate::time::compact(t.max(0))
            )
        })
    }

    /// The object keys every entry (of any kind) names.
    pub fn named_objects(&self) -> std::collections::BTreeSet<&str> {
        self.entries
            .values()
            .map(|e| e.object.as_str())
            .chain(
                self.others
                    .values()
                    .filter_map(|v| v.get("object").and_then(Value::as_str)),
            )
            .collect()
    }

    /// The passed integrity_check recorded for `e`'s very bytes, if any.
    pub fn integrity_checked(&self, e: &Entry) -> Option<&Checked> {
        self.checked
            .get(&e.id)
            .filter(|k| k.check == INTEGRITY_CHECK && k.stored_sha256 == e.stored_sha256)
    }

    /// The entry whose object key is `object`.
    pub fn find_object(&self, object: &str) -> Option<&Entry> {
        self.entries.values().find(|e| e.object == object)
    }

    /// Retention, applied to each database's backups on its own (restic's
    /// grouping by host and paths; here by database name), generations
    /// counted at their start ([`State::retention_with`] with no ends).
    pub fn retention(&self, policy: &Policy, now_ms: i64) -> Vec<GroupPlan> {
        self.retention_with(policy, now_ms, &BTreeMap::new())
    }

    /// The replication generations (§13.5) in the state.
    pub fn generations(&self) -> Vec<GenerationRef<'_>> {
        self.others
            .iter()
            .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(GENERATION_KIND))
            .filter_map(|(id, o)| {
                Some(GenerationRef {
                    id,
                    db_name: o.get("db_name")?.as_str()?,
                    snapshot: o.get("snapshot")?.as_str()?,
                    started_at_ms: o.get("started_at_ms")?.as_i64()?,
                })
            })
            .collect()
    }

    /// Retention over backups and replication generations (§13.10): per
    /// database, the items ranked are its backups that are no generation's
    /// snapshot, and its generations, each at its newest restore point
    /// (`ends`, by generation id, from the host's listing; its start when
    /// absent). A generation's snapshot is decided with it: kept while any
    /// generation naming it is kept, removed when all are. Decisions on
    /// generations carry the generation id; on snapshots, the backup id.
    pub fn retention_with(
        &self,
        policy: &Policy,
        now_ms: i64,
        ends: &BTreeMap<String, i64>,
    ) -> Vec<GroupPlan> {
        let gens = self.generations();
        let gen_snapshots: std::collections::BTreeSet<&str> =
            gens.iter().map(|g| g.snapshot).collect();
        let mut groups: BTreeMap<&str, Vec<retention::Item>> = BTreeMap::new();
        for e in self.entries.values() {
            if gen_snapshots.contains(e.id.as_str()) {
                continue;
            }
            groups.entry(&e.db_name).or_default().push(retention::Item {
                id: &e.id,
                created_at_ms: e.created_at_ms,
            });
        }
        for g in &gens {
            let end = ends
                .get(g.id)
                .copied()
                .unwrap_or(g.started_at_ms)
                .max(g.started_at_ms);
            groups.entry(g.db_name).or_default().push(retention::Item {
                id: g.id,
                created_at_ms: end,
            });
        }
        groups
            .into_iter()
            .map(|(db, items)| {
                let mut decisions = retention::plan(&items, policy, now_ms);
                // A generation whose snapshot is gone cannot be restored.
                for d in decisions.iter_mut() {
                    if let Some(g) = gens.iter().find(|g| g.id == d.id)
                        && !self.entries.contains_key(g.snapshot)
                    {
                        d.keep = false;
                        d.reasons = vec![format!(
                            "its snapshot {} is gone: it cannot be restored",
                            g.snapshot
                        )];
                    }
                }
                // Each generation snapshot of this database, decided by its
                // generations.
                let mut snaps: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
                for g in gens.iter().filter(|g| g.db_name == db) {
                    let kept = decisions.iter().any(|d| d.id == g.id && d.keep);
                    snaps.entry(g.snapshot).or_default().push((g.id, kept));
                }
                for (snap, by) in snaps {
                    let Some(e) = self.entries.get(snap) else {
                        continue;
                    };
                    let keepers: Vec<&str> = by.iter().filter(|b| b.1).map(|b| b.0).collect();
                    let reasons = if keepers.is_empty() {
                        by.iter()
                            .map(|b| format!("its generation {} is removed", b.0))
                            .collect()
                    } else {
                        keepers
                            .iter()
                            .map(|g| format!("snapshot of generation {g}"))
                            .collect()
                    };
                    decisions.push(retention::Decision {
                        id: e.id.clone(),
                        created_at_ms: e.created_at_ms,
                        keep: !keepers.is_empty(),
                        reasons,
                    });
                }
                GroupPlan {
                    db_name: db.to_string(),
                    decisions,
                }
            })
            .collect()
    }
}

/// A replication generation as retention sees it (its log entry, §13.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRef<'a> {
    pub id: &'a str,
    pub db_name: &'a str,
    /// The id of its snapshot's entry.
    pub snapshot: &'a str,
    pub started_at_ms: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::snapshot_object_key;
    use crate::layout::{Checkpoint, Removal};

    /// A sample backup entry for tests, here and in `catalog`.
    pub(crate) fn entry(id: &str, db: &str, at: i64) -> Entry {
        Entry {
            id: id.into(),
            kind: EntryKind::Snapshot,
            object: snapshot_object_key(id, false),
            created_at: crate::time::rfc3339(at),
            created_at_ms: at,
            source: "sqlite".into(),
            db_name: db.into(),
            page_size: 4096,
            plain_size: 10,
            plain_sha256: Some("00".repeat(32)),
            stored_size: 5,
            stored_sha256: "11".repeat(32),
            compression: "deflate-6".into(),
            encryption: "none".into(),
            key_id: None,
            archive_id: "22".repeat(16),
            server_version: None,
            dump_format: None,
            pg_dump_version: None,
            extra: Default::default(),
        }
    }

    fn commit(seq: u64, at: i64, add: &[Entry], remove: &[&Entry]) -> Commit {
        let mut c = Commit::new(at, "t".into(), [0; 8]);
        c.seq = seq;
        for e in add {
            c.add_entry(e).unwrap();
        }
        for e in remove {
            c.remove.push(Removal {
                id: e.id.clone(),
                object: e.object.clone(),
                reason: "test".into(),
            });
        }
        c
    }

    #[test]
    fn folds_adds_removes_and_keeps_unknown_kinds() {
        let a = entry("a", "app.db", 1);
        let b = entry("b", "app.db", 2);
        let mut s = State::default();
        s.apply(&commit(1, 10, &[a.clone(), b.clone()], &[]))
            .unwrap();
        assert_eq!(s.newest(None).unwrap().id, "b");
        let mut c = commit(2, 20, &[], &[&b]);
        c.add
            .push(serde_json::json!({"id": "g1", "kind": "generation", "x": 1}));
        s.apply(&c).unwrap();
        assert_eq!(s.newest(None).unwrap().id, "a");
        assert_eq!(s.others.len(), 1);
        assert_eq!(s.removed.len(), 1);
        assert!(s.apply(&commit(2, 30, &[], &[])).is_err());
        // A checkpoint carries everything, unknown kinds included.
        let back =
            State::from_checkpoint(Checkpoint::parse(&Checkpoint::of(&s).render(), 2).unwrap())
                .unwrap();
        assert_eq!(back.entries, s.entries);
        assert_eq!(back.others, s.others);
        assert_eq!(back.removed, s.removed);
        // Removals are forgotten a week after they were committed.
        s.apply(&commit(3, 20 + super::super::REMOVED_KEEP_MS + 1, &[], &[]))
            .unwrap();
        assert!(s.removed.is_empty());
    }

    #[test]
    fn a_check_applies_to_its_backups_bytes_only_and_goes_with_it() {
        use crate::layout::Checked;
        let a = entry("a", "app.db", 1);
        let check = |id: &str, sha: &str, at: i64| Checked {
            id: id.into(),
            stored_sha256: sha.into(),
            check: INTEGRITY_CHECK.into(),
            at_ms: at,
        };
        let mut s = State::default();
        let mut c = commit(1, 10, std::slice::from_ref(&a), &[]);
        // In the same commit as the add (applied after it), and one for an
        // id that does not exist, which is dropped.
        c.checked.push(check("a", &a.stored_sha256, 10));
        c.checked.push(check("ghost", &a.stored_sha256, 10));
        s.apply(&c).unwrap();
        assert_eq!(s.integrity_checked(&a).unwrap().at_ms, 10);
        assert!(!s.checked.contains_key("ghost"));
        // Other bytes under the same id: the record does not apply.
        let mut other = a.clone();
        other.stored_sha256 = "33".repeat(32);
        assert!(s.integrity_checked(&other).is_none());
        // Another kind of check does not count as integrity_check.
        let mut c = commit(2, 20, &[], &[]);
        c.checked.push(Checked {
            check: "pg_restore --list".into(),
            ..check("a", &a.stored_sha256, 5)
        });
        s.apply(&c).unwrap();
        assert!(s.integrity_checked(&a).is_some(), "the newer record stays");
        // A checkpoint carries the records; a removal drops them.
        let back =
            State::from_checkpoint(Checkpoint::parse(&Checkpoint::of(&s).render(), 2).unwrap())
                .unwrap();
        assert_eq!(back.checked, s.checked);
        s.apply(&commit(3, 30, &[], &[&a])).unwrap();
        assert!(s.checked.is_empty());
        // Re-added under the same id later: unchecked until checked again.
        s.apply(&commit(4, 40, std::slice::from_ref(&a), &[]))
            .unwrap();
        assert!(s.integrity_checked(&a).is_none());
    }

    #[test]
    fn the_sweep_mark_only_moves_forward_and_survives_a_checkpoint() {
        let mut s = State::default();
        assert_eq!(
            s.sweep_start_key(),
            None,
            "never swept: list from the start"
        );
        let day = 86_400_000;
        let mark = 1_796_170_524_226; // 2026-12-02T00:15:24Z
        let mut c = commit(1, mark + day, &[], &[]);
        c.swept_before_ms = Some(mark);
        s.apply(&c).unwrap();
        let mut older = commit(2, mark + day, &[], &[]);
        older.swept_before_ms = Some(mark - 5 * day);
        s.apply(&older).unwrap();
        assert_eq!(s.swept_before_ms, mark);
        // Two days before the mark, in the archive ids' time format.
        assert_eq!(
            s.sweep_start_key().as_deref(),
            Some("snapshots/20261130T001524Z")
        );
        let back =
            State::from_checkpoint(Checkpoint::parse(&Checkpoint::of(&s).render(), 2).unwrap())
                .unwrap();
        assert_eq!(back.swept_before_ms, mark);
        // A commit without a mark (any backup) leaves it as it is.
        s.apply(&commit(3, mark + 2 * day, &[], &[])).unwrap();
        assert_eq!(s.swept_before_ms, mark);
    }

    #[test]
    fn the_same_add_twice_is_harmless_and_a_different_one_is_reported() {
        let a = entry("a", "app.db", 1);
        let mut s = State::default();
        s.apply(&commit(1, 1, std::slice::from_ref(&a), &[]))
            .unwrap();
        s.apply(&commit(2, 2, std::slice::from_ref(&a), &[]))
            .unwrap();
        assert!(s.warnings.is_empty());
        let mut a2 = a.clone();
        a2.stored_size = 6;
        s.apply(&commit(3, 3, &[a2], &[])).unwrap();
        assert_eq!(s.entries["a"], a);
        assert_eq!(s.warnings.len(), 1);
    }

    fn generation(id: &str, db: &str, snapshot: &str, started: i64) -> Value {
        serde_json::json!({
            "id": id, "kind": "generation", "db_name": db, "snapshot": snapshot,
            "started_at_ms": started, "first_txid": 1, "base_txid": 1,
        })
    }

    #[test]
    fn generations_are_ranked_at_their_end_and_carry_their_snapshots() {
        let day = 86_400_000;
        let mut s = State::default();
        let mut c = commit(
            1,
            1,
            &[
                entry("s1", "app.db", day),
                entry("s2", "app.db", 2 * day),
                entry("plain", "app.db", 2 * day + 5),
                entry("s3", "app.db", 3 * day),
            ],
            &[],
        );
        c.add.push(generation("g1", "app.db", "s1", day));
        c.add.push(generation("g2", "app.db", "s2", 2 * day));
        c.add.push(generation("g3", "app.db", "s3", 3 * day));
        c.add.push(generation("g0", "app.db", "gone", 0));
        s.apply(&c).unwrap();
        let ends: BTreeMap<String, i64> = [
            ("g1".to_string(), 2 * day - 1),
            ("g2".to_string(), 3 * day - 1),
            ("g3".to_string(), 3 * day + 10),
        ]
        .into();
        let plan = s.retention_with(
            &Policy {
                keep_last: Some(2),
                ..Policy::default()
            },
            4 * day,
            &ends,
        );
        let d = &plan[0].decisions;
        let keep = |id: &str| d.iter().find(|x| x.id == id).unwrap().keep;
        // Ranked: g3 (end 3d+10), g2 (3d-1), plain (2d+5), g1 (2d-1), g0.
        assert!(keep("g3") && keep("g2") && !keep("plain") && !keep("g1") && !keep("g0"));
        // Snapshots follow their generations, whatever their own time.
        assert!(keep("s3") && keep("s2") && !keep("s1"));
        let s2 = d.iter().find(|x| x.id == "s2").unwrap();
        assert_eq!(s2.reasons, vec!["snapshot of generation g2".to_string()]);
        // Every entry and generation decided once.
        assert_eq!(d.len(), 8);
        // keep-within 12h: g2 (2d..3d-1) overlaps the 12 h before the
        // newest point (3d+10), so it stays with its end; ranked at its
        // start (no ends given) it would not.
        let within = Policy {
            keep_within_ms: Some(day / 2),
            ..Policy::default()
        };
        let with_ends = s.retention_with(&within, 4 * day, &ends);
        let k =
            |p: &Vec<GroupPlan>, id: &str| p[0].decisions.iter().find(|x| x.id == id).unwrap().keep;
        assert!(k(&with_ends, "g2") && k(&with_ends, "s2"));
        let at_start = s.retention(&within, 4 * day);
        assert!(!k(&at_start, "g2") && !k(&at_start, "s2"));
    }

    proptest::proptest! {
        #[test]
        fn a_kept_generation_always_keeps_its_snapshot(
            gens in proptest::collection::vec((0i64..1000, 0i64..500), 1..12),
            plain in proptest::collection::vec(0i64..1500, 0..6),
            keep_last in 0u32..4,
            keep_within in proptest::option::of(1i64..800),
        ) {
            let mut s = State::default();
            let mut c = Commit::new(1, "t".into(), [0; 8]);
            c.seq = 1;
            let mut ends = BTreeMap::new();
            for (i, (start, len)) in gens.iter().enumerate() {
                let snap = format!("snap{i}");
                c.add_entry(&entry(&snap, "app.db", *start)).unwrap();
                c.add.push(generation(&format!("gen{i}"), "app.db", &snap, *start));
                ends.insert(format!("gen{i}"), start + len);
            }
            for (i, t) in plain.iter().enumerate() {
                c.add_entry(&entry(&format!("plain{i}"), "app.db", *t)).unwrap();
            }
            s.apply(&c).unwrap();
            let policy = Policy {
                keep_last: Some(keep_last),
                keep_within_ms: keep_within,
                max_age_ms: Some(10_000),
                ..Policy::default()
            };
            let plan = s.retention_with(&policy, 2000, &ends);
            let d = &plan[0].decisions;
            proptest::prop_assert_eq!(d.len(), 2 * gens.len() + plain.len());
            for i in 0..gens.len() {
                let g = d.iter().find(|x| x.id == format!("gen{i}")).unwrap();
                let sn = d.iter().find(|x| x.id == format!("snap{i}")).unwrap();
                proptest::prop_assert_eq!(g.keep, sn.keep);
            }
            // The item reaching furthest is kept.
            let newest = ends.values().copied().chain(plain.iter().copied()).max().unwrap();
            proptest::prop_assert!(d.iter().any(|x| x.keep && x.created_at_ms == newest
                && !x.id.starts_with("snap")));
        }
    }

    #[test]
    fn newest_is_by_time_then_id_and_retention_is_per_database() {
        let mut s = State::default();
        let es = [
            entry("x2", "app.db", 5),
            entry("x1", "app.db", 5),
            entry("y", "other.db", 9),
            entry("z", "app.db", 1),
        ];
        s.apply(&commit(1, 1, &es, &[])).unwrap();
        assert_eq!(s.newest(Some("app.db")).unwrap().id, "x2");
        assert_eq!(s.newest(None).unwrap().id, "y");
        assert_eq!(s.newest_per_db().len(), 2);
        let plan = s.retention(
            &Policy {
                keep_last: Some(1),
                ..Policy::default()
            },
            100,
        );
        assert_eq!(plan.len(), 2);
        let app = &plan[0];
        assert_eq!(app.db_name, "app.db");
        assert_eq!(
            retention::kept_ids(&app.decisions),
            ["x2".to_string()].into()
        );
        assert_eq!(retention::kept_ids(&plan[1].decisions).len(), 1);
    }
}
