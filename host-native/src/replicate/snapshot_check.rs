//! The check of a generation's snapshot, run by the replicator in the
//! background once the generation is committed: decode it back from each
//! destination, compare its sums with the log, run `integrity_check`, and
//! record the pass in the log (docs/FORMAT.md §12.3 `checked`, §13.4).
//!
//! Why: a point-in-time restore is that snapshot plus pages SQLite itself
//! committed (each WAL frame's checksum checked when read, each segment's
//! SHA-256 and AEAD tags checked when applied). With the snapshot's pass
//! recorded, a restore need not run `integrity_check` over the whole result
//! again (`--check full` still does), which is most of its time. It runs on
//! its own thread so shipping never waits for it; if it fails or is cut
//! short (the replicator stops), restores simply run the check themselves.

use std::path::PathBuf;

use cairn_core::KeyMaterial;

use super::LogTo;
use crate::storage::Dest;
use crate::verify::{self, VerifyOptions};

/// Checks snapshot `id` in every destination, in the background.
pub fn spawn(dests: Vec<Dest>, id: String, key: KeyMaterial, temp_dir: PathBuf, log: LogTo) {
    let what = id.clone();
    let spawned = std::thread::Builder::new()
        .name("cairn-snapshot-check".into())
        .spawn(move || {
            for d in &dests {
                let opts = VerifyOptions {
                    id: Some(id.clone()),
                    db: None,
                    all: false,
                    key: key.clone(),
                    // The replicator wrote these bytes itself a moment ago:
                    // they are not untrusted input, so no sandbox is needed.
                    sandbox: false,
                    host_crypto: true,
                    memory: None,
                    timeout: None,
                    temp_dir: temp_dir.clone(),
                    progress: false,
                    download_first: false,
                    record: true,
                };
                match verify::run(d, &opts) {
                    Ok(rs) if rs.iter().all(|r| r.ok) => {}
                    Ok(rs) => {
                        for r in rs.iter().filter(|r| !r.ok) {
                            log.warn(&format!(
                                "the check of snapshot {id} in {} failed: {}",
                                d.describe(""),
                                r.error.as_deref().unwrap_or("unknown error")
                            ));
                        }
                    }
                    Err(e) => log.warn(&format!(
                        "cannot check snapshot {id} in {}: {e:#}; restores will run integrity_check themselves",
                        d.describe("")
                    )),
                }
            }
        });
    if let Err(e) = spawned {
        log.warn(&format!("cannot start the check of snapshot {what}: {e}"));
    }
}
