//! A destination's catalog, read: layout 2 (marker, checkpoint, log; see
//! docs/FORMAT.md §12) or layout 1 (`catalog.json`), folded into one
//! [`State`]. Writing is in [`write`].

pub mod write;

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::catalog::{CATALOG_KEY, Catalog, Entry};
use cairn_core::layout::{
    self, CHECKPOINT_PREFIX, Checkpoint, Commit, LOG_PREFIX, MARKER_KEY, Marker, State,
};

use crate::storage::Dest;

/// Which layout a destination has.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Nothing there yet.
    Empty,
    /// `catalog.json` only (cairn before layout 2).
    V1(Catalog),
    V2(Marker),
}

/// What a read found: the layout, the folded state, and where the log ends.
#[derive(Debug)]
pub struct Loaded {
    pub layout: Layout,
    pub state: State,
    /// The newest checkpoint's sequence number (0: none).
    pub checkpoint_seq: u64,
    /// Checkpoint keys, oldest first (old ones are deleted by writers).
    pub checkpoints: Vec<String>,
    /// Requests this read made (for the scaling figures in docs).
    pub requests: u32,
}

impl Loaded {
    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2(_))
    }
}

fn damaged(dest: &Dest, key: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{} is damaged ({e}); the archives are intact: run `cairn repair {}` to rebuild the catalog from the log and the archives",
        dest.describe(key),
        dest.describe("")
    )
}

/// Reads a destination's layout and state.
pub fn load(dest: &Dest) -> Result<Loaded> {
    let mut requests = 1;
    let marker = dest
        .get(MARKER_KEY)
        .with_context(|| format!("cannot read {}", dest.describe(MARKER_KEY)))?;
    let Some(marker) = marker else {
        requests += 1;
        let v1 = dest
            .get(CATALOG_KEY)
            .with_context(|| format!("cannot read catalog {}", dest.describe(CATALOG_KEY)))?;
        let Some(bytes) = v1 else {
            return Ok(Loaded {
                layout: Layout::Empty,
                state: State::default(),
                checkpoint_seq: 0,
                checkpoints: vec![],
                requests,
            });
        };
        let cat = Catalog::parse(&bytes).map_err(|e| {
            anyhow!(
                "catalog {} is damaged ({e}); the archives in {} are intact: move the damaged catalog aside and run `cairn repair {}`",
                dest.describe(CATALOG_KEY),
                dest.describe("snapshots/"),
                dest.describe("")
            )
        })?;
        let mut state = State::default();
        for e in &cat.entries {
            state.entries.insert(e.id.clone(), e.clone());
        }
        return Ok(Loaded {
            layout: Layout::V1(cat),
            state,
            checkpoint_seq: 0,
            checkpoints: vec![],
            requests,
        });
    };
    let marker = Marker::parse(&marker).map_err(|e| damaged(dest, MARKER_KEY, e))?;
    let (mut state, checkpoint_seq, checkpoints, n) = newest_checkpoint(dest)?;
    requests += n;
    let (commits, n) = read_log(dest, checkpoint_seq)?;
    requests += n;
    for c in &commits {
        state
            .apply(c)
            .map_err(|e| damaged(dest, &layout::log_key(c.seq), e))?;
    }
    Ok(Loaded {
        layout: Layout::V2(marker),
        state,
        checkpoint_seq,
        checkpoints,
        requests,
    })
}

/// The state at the newest readable checkpoint; a damaged checkpoint is
/// skipped for an older one (or the full log), with a warning.
fn newest_checkpoint(dest: &Dest) -> Result<(State, u64, Vec<String>, u32)> {
    let list = dest
        .list(CHECKPOINT_PREFIX, None)
        .with_context(|| format!("cannot list {}", dest.describe(CHECKPOINT_PREFIX)))?;
    let mut requests = 1;
    let keys: Vec<(u64, String)> = list
        .into_iter()
        .filter_map(|o| layout::parse_seq_key(CHECKPOINT_PREFIX, &o.key).map(|s| (s, o.key)))
        .collect();
    for (seq, key) in keys.iter().rev() {
        requests += 1;
        let read = dest
            .get(key)
            .with_context(|| format!("cannot read {}", dest.describe(key)))?;
        let Some(bytes) = read else { continue }; // deleted since the listing
        match Checkpoint::parse(&bytes, *seq).and_then(Checkpoint::into_state) {
            Ok(s) => {
                return Ok((
                    s,
                    *seq,
                    keys.iter().map(|k| k.1.clone()).collect(),
                    requests,
                ));
            }
            Err(e) => eprintln!(
                "warning: {} is damaged ({e}); reading the log from an older point",
                dest.describe(key)
            ),
        }
    }
    Ok((
        State::default(),
        0,
        keys.into_iter().map(|k| k.1).collect(),
        requests,
    ))
}

/// The commits after `after`, in order, each checked.
pub fn read_log(dest: &Dest, after: u64) -> Result<(Vec<Commit>, u32)> {
    let start = (after > 0).then(|| layout::log_key(after));
    let list = dest
        .list(LOG_PREFIX, start.as_deref())
        .with_context(|| format!("cannot list {}", dest.describe(LOG_PREFIX)))?;
    let mut requests = 1;
    let mut out = Vec::new();
    for o in list {
        let Some(seq) = layout::parse_seq_key(LOG_PREFIX, &o.key) else {
            continue;
        };
        requests += 1;
        let bytes = dest
            .get(&o.key)
            .with_context(|| format!("cannot read {}", dest.describe(&o.key)))?
            .ok_or_else(|| {
                anyhow!(
                    "{} was listed but is gone; commits are never deleted: run `cairn repair`",
                    dest.describe(&o.key)
                )
            })?;
        out.push(Commit::parse(&bytes, seq).map_err(|e| damaged(dest, &o.key, e))?);
    }
    Ok((out, requests))
}

/// The state of a destination that must already hold backups.
pub fn require(dest: &Dest) -> Result<State> {
    let loaded = load(dest)?;
    for w in &loaded.state.warnings {
        eprintln!("warning: {w}");
    }
    if loaded.layout == Layout::Empty {
        bail!(
            "no backups at {}: this is not a cairn backup destination, or it holds no backups yet (check the location, or run `cairn backup` first)",
            dest.describe("")
        );
    }
    if loaded.state.entries.is_empty() {
        bail!(
            "no backups in {}: its catalog is empty (run `cairn backup` first)",
            dest.describe("")
        );
    }
    Ok(loaded.state)
}

/// The entry for `id`, or the newest backup (of `db` when given).
pub fn resolve(dest: &Dest, state: &State, id: Option<&str>, db: Option<&str>) -> Result<Entry> {
    if let Some(id) = id {
        return state.entries.get(id).cloned().ok_or_else(|| {
            anyhow!(
                "no backup with id {id} in {} (see `cairn list {}`)",
                dest.describe(""),
                dest.describe("")
            )
        });
    }
    let names = state.newest_per_db();
    if db.is_none() && names.len() > 1 {
        let list: Vec<&str> = names.keys().copied().collect();
        bail!(
            "{} holds backups of {} databases ({}): pass --db NAME or --id ID to pick one",
            dest.describe(""),
            list.len(),
            list.join(", ")
        );
    }
    state.newest(db).cloned().ok_or_else(|| match db {
        Some(d) => anyhow!(
            "no backup of database {d} in {} (see `cairn list {}`)",
            dest.describe(""),
            dest.describe("")
        ),
        None => anyhow!("no backups in {}", dest.describe("")),
    })
}
