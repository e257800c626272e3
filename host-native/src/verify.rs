//! `cairn verify`: decode every chunk inside the sandbox, check every
//! checksum against the archive and the catalog, then integrity_check.

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use cairn_core::KeyMaterial;
use cairn_core::catalog::Entry;
use serde::Serialize;

use crate::decode::{check_against_catalog, decode};
use crate::engine::EngineKind;
use crate::hints::archive_error;
use crate::progress::Progress;
use crate::sandbox::Limits;
use crate::storage::Storage;
use crate::{catalog_store, snapshot};

pub struct VerifyOptions {
    pub id: Option<String>,
    pub all: bool,
    pub key: KeyMaterial,
    pub limits: Limits,
    pub temp_dir: PathBuf,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct VerifyResult {
    pub id: String,
    pub object: String,
    pub ok: bool,
    pub size: u64,
    pub error: Option<String>,
    pub seconds: f64,
}

pub fn run(storage: &dyn Storage, opts: &VerifyOptions) -> Result<Vec<VerifyResult>> {
    let catalog = catalog_store::require(storage)?;
    let entries = if opts.all {
        catalog.entries.clone()
    } else {
        vec![catalog_store::resolve(
            storage,
            &catalog,
            opts.id.as_deref(),
        )?]
    };
    Ok(entries
        .iter()
        .map(|e| verify_one(storage, e, opts))
        .collect())
}

fn verify_one(storage: &dyn Storage, entry: &Entry, opts: &VerifyOptions) -> VerifyResult {
    let started = Instant::now();
    let result = check(storage, entry, opts);
    VerifyResult {
        id: entry.id.clone(),
        object: storage.describe(&entry.object),
        ok: result.is_ok(),
        size: entry.plain_size,
        error: result.err().map(|e| format!("{e:#}")),
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn check(storage: &dyn Storage, entry: &Entry, opts: &VerifyOptions) -> Result<()> {
    let object = storage.describe(&entry.object);
    let input = storage
        .open(&entry.object)
        .map_err(|e| anyhow::anyhow!("cannot read {object}: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-verify-")
        .tempfile_in(&opts.temp_dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create a temporary file in {} ({e}); set --temp-dir",
                opts.temp_dir.display()
            )
        })?;
    let progress = Progress::bytes(opts.progress, entry.plain_size, "verify");
    let decoded = decode(
        EngineKind::Wasm,
        input,
        &opts.key,
        BufWriter::new(tmp.as_file()),
        &progress,
        opts.limits,
    )
    .map_err(|e| archive_error(e, &object, &storage.describe("")))?;
    progress.finish();
    check_against_catalog(&decoded, entry, &object)?;
    snapshot::integrity_check(tmp.path()).map_err(|e| anyhow::anyhow!("{object}: {e:#}"))
}
