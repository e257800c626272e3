//! Reading and writing the catalog and `latest.txt` in a destination.
//! Order of writes in a backup: object, then catalog, then latest.txt, each
//! atomic; so every name a reader can find points at a complete object.

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::catalog::{self, CATALOG_KEY, Catalog, Entry, LATEST_KEY};

use crate::storage::Storage;

/// The catalog, or `None` if the destination has none yet.
pub fn load(storage: &dyn Storage) -> Result<Option<Catalog>> {
    let path = storage.describe(CATALOG_KEY);
    let Some(bytes) = storage
        .get_small(CATALOG_KEY)
        .with_context(|| format!("cannot read catalog {path}"))?
    else {
        return Ok(None);
    };
    Catalog::parse(&bytes).map(Some).map_err(|e| {
        anyhow!(
            "catalog {path} is damaged ({e}); the archives in {} are intact: move the damaged catalog aside and restore it from a copy",
            storage.describe("snapshots/")
        )
    })
}

/// The catalog of a destination that must already hold backups.
pub fn require(storage: &dyn Storage) -> Result<Catalog> {
    match load(storage)? {
        Some(c) if !c.entries.is_empty() => Ok(c),
        Some(_) => bail!(
            "no backups in {}: its catalog is empty (run `cairn backup` first)",
            storage.describe("")
        ),
        None => bail!(
            "no catalog at {}: this is not a cairn backup destination, or it holds no backups yet (check the path, or run `cairn backup` first)",
            storage.describe(CATALOG_KEY)
        ),
    }
}

/// Writes the catalog, then points latest.txt at `latest`.
pub fn save(storage: &dyn Storage, catalog: &Catalog, latest: &Entry) -> Result<()> {
    storage
        .put_small(CATALOG_KEY, &catalog.render())
        .with_context(|| format!("cannot write catalog {}", storage.describe(CATALOG_KEY)))?;
    storage
        .put_small(LATEST_KEY, &catalog::latest_pointer(latest))
        .with_context(|| format!("cannot write {}", storage.describe(LATEST_KEY)))
}

/// The entry for `id`, or the one latest.txt names.
pub fn resolve(storage: &dyn Storage, catalog: &Catalog, id: Option<&str>) -> Result<Entry> {
    if let Some(id) = id {
        return catalog.find(id).cloned().ok_or_else(|| {
            anyhow!(
                "no backup with id {id} in {} (see `cairn list {}`)",
                storage.describe(""),
                storage.describe("")
            )
        });
    }
    let latest = storage
        .get_small(LATEST_KEY)
        .with_context(|| format!("cannot read {}", storage.describe(LATEST_KEY)))?;
    match latest {
        Some(bytes) => {
            let key = catalog::parse_latest_pointer(&bytes).map_err(|e| {
                anyhow!(
                    "{} is damaged ({e}); pass --id to pick a backup",
                    storage.describe(LATEST_KEY)
                )
            })?;
            catalog.find_object(&key).cloned().ok_or_else(|| {
                anyhow!(
                    "{} names {key}, which the catalog does not list; pass --id to pick a backup (see `cairn list`)",
                    storage.describe(LATEST_KEY)
                )
            })
        }
        None => {
            // latest.txt is written last: without it the newest catalog entry is still complete.
            let newest = catalog
                .newest()
                .cloned()
                .ok_or_else(|| anyhow!("no backups in {}", storage.describe("")))?;
            eprintln!(
                "warning: {} is missing; using the newest backup in the catalog",
                storage.describe(LATEST_KEY)
            );
            Ok(newest)
        }
    }
}
