//! Generations (docs/FORMAT.md §13.5): a snapshot plus the unbroken run of
//! segments after it. A generation becomes visible through one log commit
//! whose entry has kind `generation`; its segments are found by listing
//! `generations/<id>/segments/`, never through the log.

use anyhow::{Context, Result};
use cairn_core::layout::State;
use cairn_core::segment::{GENERATION_KIND, is_generation_id, parse_segment_key, segments_prefix};
use serde::{Deserialize, Serialize};

use crate::storage::Dest;

/// The log entry that starts a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationEntry {
    pub id: String,
    /// Always `generation`.
    pub kind: String,
    pub db_name: String,
    pub started_at: String,
    pub started_at_ms: i64,
    /// The snapshot entry (kind `snapshot`, same commit log) it starts from.
    pub snapshot: String,
    pub snapshot_object: String,
    pub page_size: u32,
    /// The transaction id of its first segment.
    pub first_txid: u64,
    /// The snapshot holds the database somewhere within transactions
    /// `first_txid - 1 ..= base_txid`: a restore applies segments at least
    /// up to `base_txid` (= `first_txid - 1` when the WAL was empty).
    pub base_txid: u64,
    /// Why it started: `start`, `wal-reset`, `db-replaced`, `snapshot-interval`, …
    pub reason: String,
    pub writer: String,
}

/// A segment as listed (its key says all this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub key: String,
    pub generation: String,
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub size: u64,
    pub modified_ms: Option<i64>,
}

/// The generations in a state, oldest first; of one database with `db`.
pub fn generations(state: &State, db: Option<&str>) -> Vec<GenerationEntry> {
    let mut v: Vec<GenerationEntry> = state
        .others
        .values()
        .filter(|o| o.get("kind").and_then(|k| k.as_str()) == Some(GENERATION_KIND))
        .filter_map(|o| serde_json::from_value::<GenerationEntry>(o.clone()).ok())
        .filter(|g| is_generation_id(&g.id))
        .filter(|g| db.is_none_or(|d| g.db_name == d))
        .collect();
    v.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
    v
}

/// Every segment of a generation, sorted by key (level, then txid).
pub fn list_segments(dest: &Dest, generation: &str) -> Result<Vec<Listed>> {
    let prefix = segments_prefix(generation);
    let mut out = Vec::new();
    // Levels are sub-"directories": list each level's own prefix.
    for level in 0u8..=9 {
        let p = format!("{prefix}{level:02}/");
        let objs = dest
            .list(&p, None)
            .with_context(|| format!("cannot list {}", dest.describe(&p)))?;
        if objs.is_empty() && level > 0 {
            break;
        }
        for o in objs {
            if let Some((g, l, lo, hi)) = parse_segment_key(&o.key) {
                out.push(Listed {
                    key: o.key,
                    generation: g,
                    level: l,
                    min_txid: lo,
                    max_txid: hi,
                    size: o.size,
                    modified_ms: o.modified_ms,
                });
            }
        }
    }
    Ok(out)
}

/// The last transaction id a generation holds.
pub fn last_txid(dest: &Dest, g: &GenerationEntry) -> Result<u64> {
    Ok(list_segments(dest, &g.id)?
        .iter()
        .map(|s| s.max_txid)
        .max()
        .unwrap_or(g.base_txid)
        .max(g.base_txid))
}
