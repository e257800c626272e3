//! `cairn verify`: check backups without restoring them. By default the
//! whole check runs inside the sandboxed verifier (`cairn-wasi` in wasmtime,
//! see verifier.rs): decoding, every checksum, then SQLite's
//! integrity_check and foreign_key_check on the image, all in the guest.
//! `--no-sandbox` does the same natively, for trusted storage or comparison.
//!
//! A PostgreSQL backup (catalog source `postgres`) is decoded in the sandbox
//! (or natively with `--no-sandbox`) and the decoded stream is piped into
//! `pg_restore --list` on the host, which must read the dump's header and
//! table of contents (sources/postgres/check.rs).

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cairn_core::catalog::Entry;
use cairn_core::layout::{self, State};
use cairn_core::{KeyMaterial, SourceKind};
use serde::Serialize;

use crate::decode::{check_against_catalog, decode};
use crate::engine::EngineKind;
use crate::hints::{archive_error, open_error, unsound_error};
use crate::pipeline::Decoded;
use crate::progress::Progress;
use crate::sandbox::Limits;
use crate::sources::postgres::check::{ListSink, PgChecked};
use crate::storage::Dest;
use crate::verifier::{self, GUEST_DIR, Table};
use crate::{repo, snapshot};

/// The same checks the sandboxed verifier runs, compiled natively.
#[path = "../../host-wasi/src/checks.rs"]
mod checks;

pub struct VerifyOptions {
    pub id: Option<String>,
    /// The database whose newest backup to check, in a shared destination.
    pub db: Option<String>,
    pub all: bool,
    pub key: KeyMaterial,
    /// Run the check inside the sandbox (the default) or natively.
    pub sandbox: bool,
    /// In the sandbox, let the host do AES-GCM (fast) or do it in wasm too.
    pub host_crypto: bool,
    /// Overrides of the sandbox limits sized to each database.
    pub memory: Option<u64>,
    pub timeout: Option<Duration>,
    pub temp_dir: PathBuf,
    pub progress: bool,
    /// For a remote archive: copy it to `temp_dir` first instead of
    /// streaming it into the sandbox.
    pub download_first: bool,
    /// Record each passed integrity_check in the destination's log, so that
    /// restores of those very bytes need not run it again (docs/FORMAT.md §12.3).
    pub record: bool,
}

#[derive(Debug, Serialize)]
pub struct VerifyResult {
    pub id: String,
    pub object: String,
    pub ok: bool,
    pub size: u64,
    /// The catalog's codec and level, e.g. "zstd-3" or "deflate-6".
    pub compression: String,
    pub sandboxed: bool,
    pub page_count: Option<u64>,
    pub tables: Vec<Table>,
    /// PostgreSQL backups: what `pg_restore --list` found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgChecked>,
    pub error: Option<String>,
    pub seconds: f64,
}

/// What a check established about the database.
#[derive(Default)]
pub(crate) struct Checked {
    page_count: Option<u64>,
    tables: Vec<Table>,
    postgres: Option<PgChecked>,
}

/// Sandbox limits for a database of `plain` bytes: the guest decodes into
/// a scratch file and SQLite reads it from there, so memory does not grow
/// with the database: 256 MiB holds the decoder, SQLite's page cache and a
/// passphrase's Argon2id. The deadline allows a slow machine 60 s plus 60 s
/// per GiB.
pub fn sandbox_limits(plain: u64, memory: Option<u64>, timeout: Option<Duration>) -> Limits {
    Limits {
        memory: memory.map_or(Limits::default().memory, |m| m as usize),
        call_timeout: timeout
            .unwrap_or_else(|| Duration::from_secs(60 + 60 * plain.div_ceil(1 << 30))),
    }
}

/// The scratch directory may hold the database the catalog promises plus
/// this much (a valid archive decodes to exactly that size, and the guest
/// refuses to decode more; the host's watch holds whatever the guest does).
const SCRATCH_SLACK: u64 = 1 << 20;

pub fn run(storage: &Dest, opts: &VerifyOptions) -> Result<Vec<VerifyResult>> {
    let state = repo::require(storage)?;
    let entries: Vec<Entry> = if opts.all {
        state.sorted().into_iter().cloned().collect()
    } else {
        vec![repo::resolve(
            storage,
            &state,
            opts.id.as_deref(),
            opts.db.as_deref(),
        )?]
    };
    let results: Vec<VerifyResult> = entries
        .iter()
        .map(|e| verify_one(storage, e, opts))
        .collect();
    if opts.record {
        record_checks(storage, &state, &entries, &results);
    }
    Ok(results)
}

/// Commits a `checked` record for each SQLite backup that passed and has
/// none yet. Only into a layout-2 destination (a layout-1 one is not
/// upgraded by a verify). A failure (read-only credentials, say) costs only
/// the shortcut: restores then run integrity_check themselves.
fn record_checks(storage: &Dest, state: &State, entries: &[Entry], results: &[VerifyResult]) {
    let now = crate::storage::now_ms();
    let checked: Vec<layout::Checked> = entries
        .iter()
        .zip(results)
        .filter(|(e, r)| {
            r.ok && r.postgres.is_none() && !is_postgres(e) && state.integrity_checked(e).is_none()
        })
        .map(|(e, _)| layout::Checked {
            id: e.id.clone(),
            stored_sha256: e.stored_sha256.clone(),
            check: layout::INTEGRITY_CHECK.into(),
            at_ms: now,
        })
        .collect();
    if checked.is_empty() {
        return;
    }
    let done = repo::load(storage).and_then(|mut loaded| {
        if !loaded.is_v2() {
            return Ok(());
        }
        let mut commit = repo::write::new_commit();
        commit.checked = checked;
        repo::write::append(storage, &mut loaded, commit).map(drop)
    });
    if let Err(e) = done {
        eprintln!(
            "warning: cannot record the passed check in {}: {e:#}; restores will run integrity_check themselves",
            storage.describe("")
        );
    }
}

fn verify_one(storage: &Dest, entry: &Entry, opts: &VerifyOptions) -> VerifyResult {
    let started = Instant::now();
    let result = if opts.sandbox {
        check_sandboxed(storage, entry, opts)
    } else {
        check_native(storage, entry, opts)
    };
    let (checked, error) = match result {
        Ok(c) => (c, None),
        Err(e) => (Checked::default(), Some(format!("{e:#}"))),
    };
    VerifyResult {
        id: entry.id.clone(),
        object: storage.describe(&entry.object),
        ok: error.is_none(),
        size: entry.plain_size,
        compression: entry.compression.clone(),
        sandboxed: opts.sandbox,
        page_count: checked.page_count,
        tables: checked.tables,
        postgres: checked.postgres,
        error,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The sandboxed check of one backup; `restore --verify-sandboxed` runs it
/// before writing anything.
pub(crate) fn check_sandboxed(
    storage: &Dest,
    entry: &Entry,
    opts: &VerifyOptions,
) -> Result<Checked> {
    let object = storage.describe(&entry.object);
    let dest = storage.describe("");
    if is_postgres(entry) {
        let input = storage
            .reader(&entry.object)
            .map_err(|e| open_error(e, &object, &dest))?;
        return check_postgres(input, entry, &object, &dest, opts, true);
    }
    match storage.local_path(&entry.object) {
        Some(p) if p.is_file() => check_sandboxed_file(&p, entry, &object, &dest, opts),
        Some(_) => {
            let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
            Err(open_error(gone, &object, &dest))
        }
        None if opts.download_first => {
            // Asked for: a private copy on local disk, then the file check.
            let dir = tempfile::Builder::new()
                .prefix(".cairn-verify-")
                .tempdir_in(&opts.temp_dir)
                .with_context(|| {
                    format!(
                        "cannot create a temporary directory in {}; set --temp-dir",
                        opts.temp_dir.display()
                    )
                })?;
            let p = dir.path().join("archive");
            let mut input = storage
                .reader(&entry.object)
                .map_err(|e| open_error(e, &object, &dest))?;
            let mut file = std::fs::File::create(&p)?;
            std::io::copy(&mut input, &mut file)
                .with_context(|| format!("cannot copy {object} to {}", p.display()))?;
            check_sandboxed_file(&p, entry, &object, &dest, opts)
        }
        None => {
            // Remote: stream the object into the guest; nothing on disk.
            let input = storage
                .reader(&entry.object)
                .map_err(|e| open_error(e, &object, &dest))?;
            let (input, prefix) = crate::decode::Capture::new(input);
            let report = verifier::run(verifier::Request {
                source: verifier::Source::Stream(Box::new(input)),
                key: &opts.key,
                expect_size: Some(entry.plain_size),
                limits: sandbox_limits(entry.plain_size, opts.memory, opts.timeout),
                temp_dir: &opts.temp_dir,
                scratch_limit: entry.plain_size.saturating_add(SCRATCH_SLACK),
                portable: !opts.host_crypto,
            })
            .map_err(|e| anyhow!("{object}: {e:#}"))?;
            judge(report, entry, &object, &dest, prefix.header())
        }
    }
}

/// The sandboxed check of an archive file on this machine (`pull` checks
/// its download here before keeping it). `object` and `dest` name it in messages.
pub(crate) fn check_sandboxed_file(
    path: &Path,
    entry: &Entry,
    object: &str,
    dest: &str,
    opts: &VerifyOptions,
) -> Result<Checked> {
    if is_postgres(entry) {
        let input =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        return check_postgres(input, entry, object, dest, opts, true);
    }
    let (dir, name) = split(path)?;
    let archive = format!("{GUEST_DIR}/{name}");
    let report = verifier::run(verifier::Request {
        source: verifier::Source::File {
            dir,
            archive: &archive,
        },
        key: &opts.key,
        expect_size: Some(entry.plain_size),
        limits: sandbox_limits(entry.plain_size, opts.memory, opts.timeout),
        temp_dir: &opts.temp_dir,
        scratch_limit: entry.plain_size.saturating_add(SCRATCH_SLACK),
        portable: !opts.host_crypto,
    })
    .map_err(|e| anyhow!("{object}: {e:#}"))?;
    let head = read_prefix(path);
    judge(report, entry, object, dest, crate::decode::header_of(&head))
}

/// The first bytes of a file (its archive header), or none if unreadable.
fn read_prefix(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(8 << 10).read_to_end(&mut out);
    }
    out
}

/// The guest's report, checked against the catalog entry.
fn judge(
    report: verifier::Report,
    entry: &Entry,
    object: &str,
    dest: &str,
    header: Option<cairn_core::Metadata>,
) -> Result<Checked> {
    let stage = report.error.as_ref().map(|f| f.stage.clone());
    let report = report.into_result().map_err(|e| match stage.as_deref() {
        Some("sqlite") => unsound_error(e, object, dest),
        Some("decode") => archive_error(e, object, dest),
        Some("size") => anyhow!(
            "{object}: {e}; the object was replaced or is damaged, use another backup with --id (see `cairn list {dest}`)"
        ),
        _ => anyhow!("{object}: {e}"),
    })?;
    let field = |v: Option<String>, what: &str| {
        v.ok_or_else(|| anyhow!("the sandboxed verifier's report lacks {what}"))
    };
    let hash = |v: Option<String>, what: &str| -> Result<[u8; 32]> {
        let h = hex::decode(field(v, what)?)?;
        crate::engine::sha256_array(&h)
    };
    let decoded = Decoded {
        archive_id: field(report.archive_id, "the archive id")?,
        plain_len: report.plain_len.unwrap_or_default(),
        plain_sha256: hash(report.plain_sha256, "the database digest")?,
        stored_len: report.stored_len.unwrap_or_default(),
        stored_sha256: Some(hash(report.stored_sha256, "the archive digest")?),
        header,
    };
    check_against_catalog(&decoded, entry, object)?;
    Ok(Checked {
        page_count: report.page_count,
        tables: report.tables,
        postgres: None,
    })
}

fn split(path: &Path) -> Result<(&Path, String)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name.to_string_lossy().into_owned())),
        _ => Err(anyhow!("{} is not a file in a directory", path.display())),
    }
}

/// A PostgreSQL backup: the catalog says so; the decoded bytes must agree
/// (ListSink refuses anything but a custom-format dump).
fn is_postgres(entry: &Entry) -> bool {
    entry.source == SourceKind::Postgres.as_str()
}

/// Decodes a PostgreSQL backup (in the sandbox when `sandboxed`, with the
/// decode limits) into `pg_restore --list`.
fn check_postgres(
    input: impl std::io::Read + Send,
    entry: &Entry,
    object: &str,
    dest: &str,
    opts: &VerifyOptions,
    sandboxed: bool,
) -> Result<Checked> {
    let engine = if sandboxed && opts.sandbox {
        EngineKind::Wasm
    } else {
        EngineKind::Native
    };
    let d = Limits::default();
    let limits = Limits {
        memory: opts.memory.map_or(d.memory, |m| m as usize),
        call_timeout: opts.timeout.unwrap_or(d.call_timeout),
    };
    let mut sink = ListSink::new();
    let progress = Progress::bytes(opts.progress, entry.plain_size, "verify");
    let decoded = decode(engine, input, &opts.key, &mut sink, &progress, limits, true);
    progress.finish();
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => {
            if let Some(r) = sink.refused.take() {
                return Err(anyhow!("{object}: {r:#}"));
            }
            return Err(archive_error(e, object, dest));
        }
    };
    check_against_catalog(&decoded, entry, object)?;
    let pg = sink
        .finish()
        .map_err(|e| unsound_error(format!("{e:#}"), object, dest))?;
    Ok(Checked {
        page_count: None,
        tables: Vec::new(),
        postgres: Some(pg),
    })
}

fn check_native(storage: &Dest, entry: &Entry, opts: &VerifyOptions) -> Result<Checked> {
    let object = storage.describe(&entry.object);
    let input = storage
        .reader(&entry.object)
        .map_err(|e| open_error(e, &object, &storage.describe("")))?;
    if is_postgres(entry) {
        return check_postgres(input, entry, &object, &storage.describe(""), opts, false);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-verify-")
        .tempfile_in(&opts.temp_dir)
        .map_err(|e| {
            anyhow!(
                "cannot create a temporary file in {} ({e}); set --temp-dir",
                opts.temp_dir.display()
            )
        })?;
    let progress = Progress::bytes(opts.progress, entry.plain_size, "verify");
    let decoded = decode(
        EngineKind::Native,
        input,
        &opts.key,
        BufWriter::with_capacity(1 << 20, tmp.as_file()),
        &progress,
        Limits::default(),
        true,
    )
    .map_err(|e| archive_error(e, &object, &storage.describe("")))?;
    progress.finish();
    check_against_catalog(&decoded, entry, &object)?;
    let conn = snapshot::open_immutable(tmp.path()).map_err(|e| anyhow!("{object}: {e:#}"))?;
    let mut found = checks::Findings::default();
    checks::run(&conn, &mut found).map_err(|e| unsound_error(e, &object, &storage.describe("")))?;
    Ok(Checked {
        page_count: found.page_count,
        tables: found
            .tables
            .into_iter()
            .map(|t| Table {
                name: t.name,
                rows: t.rows,
            })
            .collect(),
        postgres: None,
    })
}
