//! Writing a destination's catalog without locks: a commit goes create-only
//! to the next free `log/` slot (retrying at the next one when another
//! writer took it), a checkpoint now and then, and the `latest.txt` hint.
//! Also the first write to a destination: creating layout 2, or upgrading
//! layout 1 in place. The race and crash tables are in docs/FORMAT.md §12.

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::catalog::{self, CATALOG_KEY, Catalog, LATEST_KEY};
use cairn_core::layout::{self, CHECKPOINT_EVERY, Checkpoint, Commit, MARKER_KEY, Marker};

use super::{Layout, Loaded, load, read_log};
use crate::storage::{Cond, Dest, Put, now_ms};

/// Who writes, for people reading the log.
pub fn writer_id() -> String {
    format!(
        "cairn {} on {} pid {}",
        env!("CARGO_PKG_VERSION"),
        crate::storage::hostname(),
        std::process::id()
    )
}

pub fn nonce() -> [u8; 8] {
    let mut n = [0u8; 8];
    let _ = getrandom::fill(&mut n);
    n
}

/// A new commit stamped now by this process.
pub fn new_commit() -> Commit {
    Commit::new(now_ms(), writer_id(), nonce())
}

/// How many times a commit moves to the next slot before giving up (each
/// move means another writer committed in between).
const MAX_SLOT_TRIES: usize = 64;

/// Appends `commit` to the log and returns its sequence number; `loaded`
/// is updated to the state after it.
pub fn append(dest: &Dest, loaded: &mut Loaded, mut commit: Commit) -> Result<u64> {
    ensure_v2(dest, loaded)?;
    let conditional = match &loaded.layout {
        Layout::V2(m) => m.conditional_writes,
        _ => unreachable!("ensure_v2 made it layout 2"),
    };
    for _ in 0..MAX_SLOT_TRIES {
        let seq = loaded.state.seq + 1;
        commit.seq = seq;
        let key = layout::log_key(seq);
        let put = dest
            .put(&key, commit.render(), Cond::CreateOnly)
            .with_context(|| format!("cannot write {}", dest.describe(&key)))?;
        let mine = match put {
            Put::Written if conditional => true,
            // Without conditional writes, a racing writer may have replaced
            // the record: read it back and compare the nonce.
            Put::Written => read_back_is_mine(dest, &key, seq, &commit)?,
            Put::Exists => false,
        };
        if mine {
            loaded.state.apply(&commit)?;
            checkpoint_if_due(dest, loaded);
            write_latest_hint(dest, loaded);
            return Ok(seq);
        }
        // Someone else took the slot: fold in what they wrote, try the next.
        let (others, _) = read_log(dest, loaded.state.seq)?;
        for c in &others {
            loaded.state.apply(c)?;
        }
    }
    bail!(
        "could not add to the log of {}: {MAX_SLOT_TRIES} other commits landed first; try again",
        dest.describe("")
    )
}

fn read_back_is_mine(dest: &Dest, key: &str, seq: u64, commit: &Commit) -> Result<bool> {
    let back = dest
        .get(key)
        .with_context(|| format!("cannot read back {}", dest.describe(key)))?
        .ok_or_else(|| anyhow!("{} vanished right after it was written", dest.describe(key)))?;
    Ok(Commit::parse(&back, seq).is_ok_and(|c| c.nonce == commit.nonce))
}

/// Writes a checkpoint when the log has grown `CHECKPOINT_EVERY` commits
/// past the newest one, and deletes all but the two newest. A failure here
/// loses nothing (readers fold the log), so it is only a warning.
fn checkpoint_if_due(dest: &Dest, loaded: &mut Loaded) {
    let seq = loaded.state.seq;
    if seq < loaded.checkpoint_seq + CHECKPOINT_EVERY {
        return;
    }
    let key = layout::checkpoint_key(seq);
    match dest.put(
        &key,
        Checkpoint::of(&loaded.state).render(),
        Cond::CreateOnly,
    ) {
        Ok(_) => {
            loaded.checkpoint_seq = seq;
            loaded.checkpoints.push(key);
            let n = loaded.checkpoints.len();
            if n > 2 {
                let old: Vec<String> = loaded.checkpoints.drain(..n - 2).collect();
                if let Err(e) = dest.delete(&old) {
                    eprintln!("warning: cannot delete old checkpoints: {e}");
                }
            }
        }
        Err(e) => eprintln!("warning: cannot write {}: {e}", dest.describe(&key)),
    }
}

/// Points `latest.txt` at the newest backup. A hint for people and scripts
/// (`cat latest.txt`); cairn itself never trusts it in layout 2.
fn write_latest_hint(dest: &Dest, loaded: &Loaded) {
    if let Some(e) = loaded.state.newest(None)
        && let Err(err) = dest.put(LATEST_KEY, catalog::latest_pointer(e), Cond::Overwrite)
    {
        eprintln!(
            "warning: cannot update {}: {err}",
            dest.describe(LATEST_KEY)
        );
    }
}

/// Makes the destination layout 2: creates the marker in an empty one, or
/// upgrades layout 1 in place.
pub fn ensure_v2(dest: &Dest, loaded: &mut Loaded) -> Result<()> {
    match &loaded.layout {
        Layout::V2(_) => Ok(()),
        Layout::Empty => {
            let marker = create_marker(dest, None)?;
            loaded.layout = Layout::V2(marker);
            Ok(())
        }
        Layout::V1(_) => {
            upgrade_v1(dest)?;
            *loaded = load(dest)?;
            Ok(())
        }
    }
}

/// Creates `cairn.json` create-only, then probes whether the store honours
/// create-only at all by trying again: a second success means it does not.
fn create_marker(dest: &Dest, upgraded_from: Option<u32>) -> Result<Marker> {
    let marker = Marker::new(now_ms(), true, upgraded_from);
    let what = || format!("cannot write {}", dest.describe(MARKER_KEY));
    match dest
        .put(MARKER_KEY, marker.render(), Cond::CreateOnly)
        .with_context(what)?
    {
        Put::Exists => read_marker(dest),
        Put::Written => match dest
            .put(MARKER_KEY, marker.render(), Cond::CreateOnly)
            .with_context(what)?
        {
            Put::Exists => Ok(marker),
            Put::Written => {
                eprintln!(
                    "warning: {} ignores create-only writes (If-None-Match); cairn reads back every commit, but two cairn processes writing here at the same moment can lose a backup from the catalog: give each writer its own prefix",
                    dest.describe("")
                );
                let m = Marker::new(marker.created_at_ms, false, upgraded_from);
                dest.put(MARKER_KEY, m.render(), Cond::Overwrite)
                    .with_context(what)?;
                Ok(m)
            }
        },
    }
}

fn read_marker(dest: &Dest) -> Result<Marker> {
    let bytes = dest
        .get(MARKER_KEY)
        .with_context(|| format!("cannot read {}", dest.describe(MARKER_KEY)))?
        .ok_or_else(|| anyhow!("{} vanished", dest.describe(MARKER_KEY)))?;
    Marker::parse(&bytes).map_err(|e| anyhow!("{}: {e}", dest.describe(MARKER_KEY)))
}

/// The `catalog.json` left in an upgraded destination: a catalog of a
/// version older cairn refuses with "upgrade cairn", so that no old writer
/// adds backups that layout 2 readers would not see.
pub fn v1_stub() -> Vec<u8> {
    cairn_core::envelope::render(
        catalog::CATALOG_FORMAT,
        2,
        &serde_json::json!({
            "layout": 2,
            "note": "this destination uses layout 2 (cairn.json, log/, checkpoints/); this cairn is too old to read it: upgrade cairn"
        }),
        true,
    )
}

/// Layout 1 → 2, in an order that is safe to stop anywhere (FORMAT.md §12.6):
/// commit 1 imports every entry, then the marker, then the stub catalog.
/// Locally the layout 1 lock is held, so an old cairn cannot add a backup
/// between the import and the stub.
fn upgrade_v1(dest: &Dest) -> Result<()> {
    let _lock = match dest.local_path("") {
        Some(root) => Some(v1_lock(&root)?),
        None => None,
    };
    let bytes = dest
        .get(CATALOG_KEY)
        .with_context(|| format!("cannot read {}", dest.describe(CATALOG_KEY)))?;
    let marker_now = dest
        .get(MARKER_KEY)
        .with_context(|| format!("cannot read {}", dest.describe(MARKER_KEY)))?;
    if marker_now.is_some() {
        return Ok(()); // another writer finished the upgrade
    }
    let cat = match bytes {
        Some(b) => Catalog::parse(&b).map_err(|e| {
            anyhow!(
                "catalog {} is damaged ({e}); run `cairn repair`",
                dest.describe(CATALOG_KEY)
            )
        })?,
        None => Catalog::default(),
    };
    let mut c = Commit::import_v1(&cat, now_ms(), writer_id(), nonce());
    c.seq = 1;
    let key = layout::log_key(1);
    if dest
        .put(&key, c.render(), Cond::CreateOnly)
        .with_context(|| format!("cannot write {}", dest.describe(&key)))?
        == Put::Exists
    {
        // An upgrade that stopped after its first step, or a racing one:
        // the record there must be an import of this catalog.
        let (log, _) = read_log(dest, 0)?;
        let first = log.first().filter(|f| f.seq == 1);
        if !first.is_some_and(|f| {
            f.note
                .as_deref()
                .is_some_and(|n| n.starts_with("upgraded from layout 1"))
        }) {
            bail!(
                "{} has a catalog.json of layout 1 and a log/ that does not start with its import; run `cairn repair {}`",
                dest.describe(""),
                dest.describe("")
            );
        }
    }
    create_marker(dest, Some(1))?;
    dest.put(CATALOG_KEY, v1_stub(), Cond::Overwrite)
        .with_context(|| format!("cannot write {}", dest.describe(CATALOG_KEY)))?;
    Ok(())
}

/// The lock layout 1 writers take (`.cairn.lock`, flock).
fn v1_lock(root: &std::path::Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".cairn.lock"))
        .with_context(|| format!("cannot open {}", root.join(".cairn.lock").display()))?;
    if file.try_lock().is_err() {
        eprintln!("waiting for an older cairn writing to {}", root.display());
        file.lock()
            .with_context(|| format!("cannot lock {}", root.join(".cairn.lock").display()))?;
    }
    Ok(file)
}
