//! `cairn restore`: decode into a temp file beside the target, fsync, check,
//! integrity_check, and only then rename over the target.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::KeyMaterial;
use serde::Serialize;

use crate::decode::{check_against_catalog, decode};
use crate::engine::EngineKind;
use crate::hints::archive_error;
use crate::progress::Progress;
use crate::sandbox::Limits;
use crate::storage::Dest;
use crate::{repo, snapshot};

pub struct RestoreOptions {
    pub id: Option<String>,
    /// The database whose newest backup to restore, in a shared destination.
    pub db: Option<String>,
    pub output: PathBuf,
    pub force: bool,
    pub if_db_not_exists: bool,
    pub key: KeyMaterial,
    pub engine: EngineKind,
    pub limits: Limits,
    /// Run the sandboxed verification first (`--verify-sandboxed`).
    pub verify_sandboxed: Option<crate::verify::VerifyOptions>,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub id: Option<String>,
    pub output: String,
    pub restored: bool,
    pub size: u64,
    pub sha256: Option<String>,
    pub engine: EngineKind,
    /// The sandboxed verifier checked the backup before it was restored.
    pub verified_in_sandbox: bool,
    pub seconds: f64,
}

pub fn run(storage: &Dest, opts: &RestoreOptions) -> Result<RestoreReport> {
    let started = Instant::now();
    let out = &opts.output;
    let exists = out.symlink_metadata().is_ok();
    if exists && opts.if_db_not_exists {
        return Ok(RestoreReport {
            id: None,
            output: out.display().to_string(),
            restored: false,
            size: 0,
            sha256: None,
            engine: opts.engine,
            verified_in_sandbox: false,
            seconds: 0.0,
        });
    }
    if exists && !opts.force {
        bail!(
            "{} already exists; refusing to overwrite it: pass --force to replace it, or --if-db-not-exists to skip",
            out.display()
        );
    }
    let state = repo::require(storage)?;
    let entry = repo::resolve(storage, &state, opts.id.as_deref(), opts.db.as_deref())?;
    let object = storage.describe(&entry.object);
    let dest = storage.describe("");
    if let Some(v) = &opts.verify_sandboxed {
        crate::verify::check_sandboxed(storage, &entry, v).map_err(|e| {
            anyhow!(
                "{e:#} (the sandboxed verification failed; nothing was written to {})",
                out.display()
            )
        })?;
    }
    let input = storage
        .reader(&entry.object)
        .map_err(|e| crate::hints::open_error(e, &object, &dest))?;

    let dir = parent_dir(out);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".cairn-restore")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;

    let progress = Progress::bytes(opts.progress, entry.plain_size, "restore");
    let writer = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let decoded = decode(
        opts.engine,
        input,
        &opts.key,
        writer,
        &progress,
        opts.limits,
    )
    .map_err(|e| archive_error(e, &object, &dest))?;
    progress.finish();
    check_against_catalog(&decoded, &entry, &object)?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    snapshot::integrity_check(tmp.path()).map_err(|e| {
        anyhow!(
            "the database restored from {object} is not sound: {e:#}; nothing was written to {}",
            out.display()
        )
    })?;

    if opts.force {
        // A stale WAL would be replayed into the new file: remove it first.
        for suffix in ["-wal", "-shm", "-journal"] {
            let side = PathBuf::from(format!("{}{suffix}", out.display()));
            if side.exists() {
                std::fs::remove_file(&side)
                    .with_context(|| format!("cannot remove {}", side.display()))?;
            }
        }
    }
    // tempfile creates 0600; give the database the mode of the file it
    // replaces, or the usual 0644 for a new one.
    let mode = out.metadata().map(|m| m.permissions()).unwrap_or_else(|_| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o644)
    });
    std::fs::set_permissions(tmp.path(), mode)
        .with_context(|| format!("cannot set permissions on {}", tmp.path().display()))?;
    tmp.persist(out).map_err(|e| {
        anyhow!(
            "cannot move the restored database to {}: {}",
            out.display(),
            e.error
        )
    })?;
    File::open(&dir).and_then(|d| d.sync_all()).ok();
    Ok(RestoreReport {
        id: Some(entry.id),
        output: out.display().to_string(),
        restored: true,
        size: decoded.plain_len,
        sha256: Some(hex::encode(decoded.plain_sha256)),
        engine: opts.engine,
        verified_in_sandbox: opts.verify_sandboxed.is_some(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
