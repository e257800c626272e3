//! `cairn restore`: decode into a temp file beside the target, fsync, check,
//! integrity_check (when the file is a SQLite database), and only then
//! rename over the target. `--to postgres://…` streams into pg_restore
//! instead ([`run_to_postgres`], sources/postgres/restore.rs).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::KeyMaterial;
use serde::Serialize;

use crate::decode::{check_against_catalog, decode, needs_stored_digest};
use crate::engine::EngineKind;
use crate::hints::archive_error;
use crate::progress::Progress;
use crate::sandbox::Limits;
use crate::sources::postgres::{self, PgSource};
use crate::storage::Dest;
use crate::{repo, snapshot};

/// When a restored SQLite database gets `integrity_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckMode {
    /// Unless the destination's log records that these very bytes passed it
    /// (`cairn verify`); the restore proves them identical by their SHA-256.
    Auto,
    /// Always.
    Full,
    /// Not here: the caller changes the file and checks the result once
    /// (a replica restore applies segments to the snapshot first), unless
    /// these bytes have a recorded pass.
    #[value(skip)]
    Deferred,
    /// Not here, and the caller checks the result whatever is recorded
    /// (a replica restore with `--check full`).
    #[value(skip)]
    DeferredFull,
}

pub struct RestoreOptions {
    pub id: Option<String>,
    /// The database whose newest backup to restore, in a shared destination.
    pub db: Option<String>,
    pub output: PathBuf,
    pub force: bool,
    pub if_db_not_exists: bool,
    pub check: CheckMode,
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
    /// The catalog's codec and level, e.g. "zstd-3" or "deflate-6".
    pub compression: String,
    pub engine: EngineKind,
    /// The sandboxed verifier checked the backup before it was restored.
    pub verified_in_sandbox: bool,
    /// What the backup held, from its first bytes: "SQLite database",
    /// "pg_dump custom format", "SQL text", …
    pub content: String,
    /// A SQLite database: "ran" (integrity_check ran now), "recorded"
    /// (these bytes passed it at `integrity_checked_at`) or "deferred" (the
    /// caller checks the file it makes of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_check: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_checked_at: Option<String>,
    /// `--to`: how PostgreSQL got it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<postgres::restore::Restored>,
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
            compression: String::new(),
            engine: opts.engine,
            verified_in_sandbox: false,
            content: String::new(),
            integrity_check: None,
            integrity_checked_at: None,
            postgres: None,
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
    // What restores to this target killed before their rename left behind.
    crate::storage::sweep_dead_temps_of(&dir, &name);
    // Named like the stores' temps (`.<name>.<host>.<pid>.<random>.tmp`), so
    // that the next restore can tell a dead process's leftover from a live one.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{name}.{}.{}.",
            crate::storage::hostname(),
            std::process::id()
        ))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| target_error(&e, out, &dir))?;

    // The bytes will be proven to be the entry's (the trailer's plaintext
    // sum, checked against the entry's): a recorded pass on them is a pass
    // on this file.
    let recorded = state
        .integrity_checked(&entry)
        .filter(|_| opts.check != CheckMode::Full && opts.verify_sandboxed.is_none());
    // Past the page cache only when nothing reads the file back before its
    // rename: integrity_check would read every page again.
    let direct = (recorded.is_some() && opts.check != CheckMode::DeferredFull)
        .then(|| crate::direct::DirectWriter::open(tmp.path(), tmp.as_file()))
        .flatten();
    let progress = Progress::bytes(opts.progress, entry.plain_size, "restore");
    let failed_write = WriteFailure::default();
    let writer = BufWriter::with_capacity(
        1 << 20,
        Tracked {
            file: tmp.as_file(),
            failure: failed_write.clone(),
            written: 0,
            writeback: crate::writeback::Writeback::default(),
            direct,
        },
    );
    let decoded = decode(
        opts.engine,
        input,
        &opts.key,
        writer,
        &progress,
        opts.limits,
        needs_stored_digest(&entry),
    )
    .map_err(|e| match failed_write.take() {
        // The target's disk failed, not the archive.
        Some(w) => target_error(&w, out, &dir),
        None => archive_error(e, &object, &dest),
    })?;
    progress.finish();
    check_against_catalog(&decoded, &entry, &object)?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| target_error(&e, out, &dir))?;
    // What the file is decides the check: a SQLite database must pass
    // integrity_check; a pg_dump file or SQL text is written as it is (its
    // sums were checked), for pg_restore or psql.
    let kind = sniff_file(tmp.path())?;
    let mut integrity_check = None;
    if kind == cairn_core::Kind::Sqlite {
        if recorded.is_some() {
            integrity_check = Some("recorded");
        } else if matches!(opts.check, CheckMode::Deferred | CheckMode::DeferredFull) {
            integrity_check = Some("deferred");
        } else {
            snapshot::integrity_check(tmp.path()).map_err(|e| {
                anyhow!(
                    "the database restored from {object} is not sound: {e:#}; nothing was written to {}",
                    out.display()
                )
            })?;
            integrity_check = Some("ran");
        }
    }

    if opts.force && kind == cairn_core::Kind::Sqlite {
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
        compression: entry.compression.clone(),
        engine: opts.engine,
        verified_in_sandbox: opts.verify_sandboxed.is_some(),
        content: content_name(kind).into(),
        integrity_check,
        integrity_checked_at: recorded
            .filter(|_| kind == cairn_core::Kind::Sqlite)
            .map(|k| cairn_core::time::rfc3339(k.at_ms)),
        postgres: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The first error writing the restore target, kept so that a failed
/// decode blames the target's disk rather than the archive.
#[derive(Clone, Default)]
struct WriteFailure(Arc<Mutex<Option<std::io::Error>>>);

impl WriteFailure {
    fn take(&self) -> Option<std::io::Error> {
        self.0.lock().ok()?.take()
    }
}

struct Tracked<'a> {
    file: &'a File,
    failure: WriteFailure,
    written: u64,
    writeback: crate::writeback::Writeback,
    /// Set when the bytes go past the page cache (see `direct.rs`).
    direct: Option<crate::direct::DirectWriter>,
}

impl Tracked<'_> {
    fn keep(&self, e: std::io::Error) -> std::io::Error {
        if let Ok(mut f) = self.failure.0.lock()
            && f.is_none()
        {
            *f = Some(std::io::Error::new(e.kind(), e.to_string()));
            if let Some(code) = e.raw_os_error() {
                *f = Some(std::io::Error::from_raw_os_error(code));
            }
        }
        e
    }
}

impl Write for Tracked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.direct.as_mut() {
            Some(d) => d.write(buf),
            None => {
                let mut f = self.file;
                f.write(buf)
            }
        }
        .map_err(|e| self.keep(e))?;
        self.written += n as u64;
        if self.direct.is_none() {
            self.writeback.advance(self.file, self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.direct.as_mut() {
            Some(d) => d.flush(),
            None => {
                let mut f = self.file;
                f.flush()
            }
        }
        .map_err(|e| self.keep(e))
    }
}

/// Writing the restore target failed: name the target, and say so plainly
/// when its disk is full. The temp file is removed when it is dropped.
fn target_error(e: &std::io::Error, out: &Path, dir: &Path) -> anyhow::Error {
    let full = matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    ) || e.kind() == std::io::ErrorKind::StorageFull;
    if full {
        anyhow!(
            "cannot write the restored database {}: the disk holding {} is full ({e}); free space there or restore elsewhere with -o; nothing was written to {}",
            out.display(),
            dir.display(),
            out.display()
        )
    } else {
        anyhow!(
            "cannot write the restored database {} in {} ({e}); nothing was written to {}",
            out.display(),
            dir.display(),
            out.display()
        )
    }
}

fn sniff_file(p: &Path) -> Result<cairn_core::Kind> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    File::open(p)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", p.display()))?;
    Ok(cairn_core::sniff(&head))
}

fn content_name(k: cairn_core::Kind) -> &'static str {
    match k {
        cairn_core::Kind::Sqlite => "SQLite database",
        cairn_core::Kind::PgDumpCustom => "pg_dump custom format",
        cairn_core::Kind::SqlText => "SQL text",
        _ => "other",
    }
}

/// `cairn restore --to postgres://…`.
pub struct PgRestoreOptions {
    pub id: Option<String>,
    /// The database whose newest backup to restore, in a shared destination.
    pub db: Option<String>,
    pub target: PgSource,
    /// Drop the dump's objects first (`pg_restore --clean --if-exists`).
    pub clean: bool,
    /// CREATE DATABASE the target first.
    pub create: bool,
    /// Parallel pg_restore (from a temp file in `temp_dir`).
    pub jobs: Option<u32>,
    /// Feed plain SQL text to psql.
    pub allow_sql_fallback: bool,
    pub key: KeyMaterial,
    pub engine: EngineKind,
    pub limits: Limits,
    pub verify_sandboxed: Option<crate::verify::VerifyOptions>,
    pub temp_dir: PathBuf,
    pub progress: bool,
}

/// Decodes a backup straight into pg_restore (or psql, when allowed). What
/// the archive holds is sniffed from the decoded bytes, not taken from the
/// catalog. The client's transaction commits only after the whole archive
/// and its catalog entry checked out (sources/postgres/restore.rs).
pub fn run_to_postgres(storage: &Dest, opts: &PgRestoreOptions) -> Result<RestoreReport> {
    let started = Instant::now();
    opts.target.validate()?;
    if opts.jobs == Some(0) {
        bail!("--jobs 0 is not a number of jobs: use 1 or more");
    }
    let state = repo::require(storage)?;
    let entry = repo::resolve(storage, &state, opts.id.as_deref(), opts.db.as_deref())?;
    let object = storage.describe(&entry.object);
    let dest = storage.describe("");
    let shown = opts.target.display_name();
    if let Some(v) = &opts.verify_sandboxed {
        crate::verify::check_sandboxed(storage, &entry, v).map_err(|e| {
            anyhow!("{e:#} (the sandboxed verification failed; nothing was restored to {shown})")
        })?;
    }
    let input = storage
        .reader(&entry.object)
        .map_err(|e| crate::hints::open_error(e, &object, &dest))?;
    let mut sink = postgres::restore::Sink::new(postgres::restore::Target {
        pg: &opts.target,
        clean: opts.clean,
        create: opts.create,
        jobs: opts.jobs,
        allow_sql_fallback: opts.allow_sql_fallback,
        temp_dir: &opts.temp_dir,
        backup: &entry.id,
    });
    let progress = Progress::bytes(opts.progress, entry.plain_size, "restore");
    let decoded = decode(
        opts.engine,
        input,
        &opts.key,
        &mut sink,
        &progress,
        opts.limits,
        needs_stored_digest(&entry),
    )
    .map_err(|e| archive_error(e, &object, &dest))
    .and_then(|d| check_against_catalog(&d, &entry, &object).map(|()| d));
    progress.finish();
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return Err(sink.abort(e)),
    };
    let restored = sink
        .finish()
        .map_err(|e| anyhow!("restore of {} into {shown} failed: {e:#}", entry.id))?;
    Ok(RestoreReport {
        id: Some(entry.id),
        output: shown,
        restored: true,
        size: decoded.plain_len,
        sha256: Some(hex::encode(decoded.plain_sha256)),
        compression: entry.compression.clone(),
        engine: opts.engine,
        verified_in_sandbox: opts.verify_sandboxed.is_some(),
        content: restored.content.into(),
        integrity_check: None,
        integrity_checked_at: None,
        postgres: Some(restored),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub(crate) fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
