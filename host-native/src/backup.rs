//! `cairn backup`: read the source (a SQLite snapshot or pg_dump's
//! stream), encode once, write to every destination (fan-out), then, only
//! if the source ended well, one commit in each destination's log.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use cairn_core::catalog::{self, Entry};
use cairn_core::encoder::EncryptionParams;
use cairn_core::{Compression, Kdf, KeyMaterial, SourceKind, WriterParams};
use serde::Serialize;

use crate::engine::{self, EngineKind};
use crate::progress::Progress;
use crate::sources::Source;
use crate::storage::{Cond, Dest, Put, Tee};
use crate::{pipeline, repo};

pub struct BackupOptions {
    /// What to back up: a SQLite file or a PostgreSQL database.
    pub source: Source,
    pub key: KeyMaterial,
    pub compression: Compression,
    pub chunk_size: u32,
    pub engine: EngineKind,
    pub temp_dir: PathBuf,
    pub progress: bool,
    /// `--prune`: apply this policy to each destination after a success.
    pub prune: Option<cairn_core::retention::Policy>,
    /// How long to wait for another process's lock on a SQLite database.
    pub lock_timeout: std::time::Duration,
}

/// Inputs that are random or time-dependent, passed explicitly so that a
/// test can pin them and compare engines byte for byte.
#[derive(Debug, Clone)]
pub struct Seeds {
    pub created_at_ms: i64,
    pub archive_id: [u8; 16],
    pub salt: [u8; 32],
    pub argon_salt: [u8; 16],
    pub id_suffix: [u8; 4],
}

impl Seeds {
    pub fn fresh() -> Result<Self> {
        let mut r = [0u8; 68];
        getrandom::fill(&mut r).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("the clock is before 1970"))?;
        Ok(Seeds {
            created_at_ms: now.as_millis() as i64,
            archive_id: r[..16].try_into()?,
            salt: r[16..48].try_into()?,
            argon_salt: r[48..64].try_into()?,
            id_suffix: r[64..68].try_into()?,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub object: String,
    pub location: String,
    pub database: String,
    pub plain_size: u64,
    pub stored_size: u64,
    /// The database's SHA-256, for unencrypted backups only: like the
    /// catalog (docs/FORMAT.md §11), a report that lands in logs must not
    /// let anyone confirm a guess of an encrypted database's contents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
    pub stored_sha256: String,
    pub compression: String,
    pub encryption: String,
    pub engine: EngineKind,
    /// How the snapshot was taken: "pinned" (read in place under a read
    /// transaction) or "copy" (SQLite's backup API into a temp file), or
    /// "pg_dump" (PostgreSQL).
    pub snapshot: &'static str,
    /// PostgreSQL: the server's version, from the dump's header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    pub seconds: f64,
    /// Destinations that failed (the exit status is non-zero if any did).
    pub failed: usize,
    pub destinations: Vec<DestResult>,
}

pub fn encryption_params(key: &KeyMaterial, seeds: &Seeds) -> Result<Option<EncryptionParams>> {
    Ok(match key {
        KeyMaterial::None => None,
        KeyMaterial::Key(k) => Some(EncryptionParams {
            master: k.clone(),
            kdf: Kdf::RawKey,
            salt: seeds.salt,
        }),
        KeyMaterial::Passphrase(p) => {
            let kdf = Kdf::Argon2id {
                m_cost_kib: cairn_core::key::ARGON2_M_COST_KIB,
                t_cost: cairn_core::key::ARGON2_T_COST,
                p_cost: cairn_core::key::ARGON2_P_COST,
                salt: seeds.argon_salt,
            };
            let master = cairn_core::key::derive_from_passphrase(p, &kdf)?;
            Some(EncryptionParams {
                master,
                kdf,
                salt: seeds.salt,
            })
        }
    })
}

/// One destination's outcome in a (fan-out) backup.
#[derive(Debug, Serialize)]
pub struct DestResult {
    pub destination: String,
    pub ok: bool,
    /// Where the archive is (on success).
    pub location: Option<String>,
    /// The log record that lists the backup (layout 2).
    pub commit: Option<u64>,
    pub error: Option<String>,
    /// The retention run of `--prune`, after the backup succeeded.
    pub prune: Option<crate::prune::PruneReport>,
}

impl DestResult {
    /// A destination that failed before any work.
    pub fn failed(destination: &str, error: String) -> DestResult {
        DestResult {
            destination: destination.to_string(),
            ok: false,
            location: None,
            commit: None,
            error: Some(error),
            prune: None,
        }
    }
}

pub fn run(dests: &[Dest], opts: &BackupOptions) -> Result<BackupReport> {
    run_seeded(dests, opts, Seeds::fresh()?)
}

/// Reads and encodes the database once and writes the archive to every
/// destination at once (fan-out). A destination that fails is reported in
/// `destinations` and does not stop the others; only a failure of the
/// source, the encode, or every destination is an `Err`.
pub fn run_seeded(dests: &[Dest], opts: &BackupOptions, seeds: Seeds) -> Result<BackupReport> {
    let started = Instant::now();
    opts.source.check()?;
    if dests.is_empty() {
        bail!("no destination given");
    }
    // Read each catalog first: a destination that cannot be read (wrong
    // credentials, unknown host) fails here, before any work.
    let mut results: Vec<DestResult> = dests
        .iter()
        .map(|d| DestResult {
            error: None,
            ..DestResult::failed(&d.describe(""), String::new())
        })
        .collect();
    let mut loaded: Vec<Option<repo::Loaded>> = Vec::new();
    for (d, r) in dests.iter().zip(&mut results) {
        match preflight(d).and_then(|()| repo::load(d)) {
            Ok(l) => loaded.push(Some(l)),
            Err(e) => {
                r.error = Some(format!("{e:#}"));
                loaded.push(None);
            }
        }
    }
    if loaded.iter().all(Option::is_none) {
        return Err(all_failed(&results));
    }

    let mut snap = opts.source.open(&opts.temp_dir, opts.lock_timeout)?;
    let params = WriterParams {
        archive_id: seeds.archive_id,
        source: opts.source.kind(),
        db_name: opts.source.catalog_name(),
        created_at_ms: seeds.created_at_ms,
        page_size: snap.page_size,
        chunk_size: opts.chunk_size,
        compression: opts.compression,
        encryption: encryption_params(&opts.key, &seeds)?,
    };
    let id = catalog::snapshot_id(seeds.created_at_ms, seeds.id_suffix);
    let object = catalog::archive_object_key(
        &id,
        params.source,
        params.encryption.is_some(),
        params.compression.is_zstd(),
    );
    for ((d, l), r) in dests.iter().zip(&mut loaded).zip(&mut results) {
        if l.as_ref().is_some_and(|l| {
            l.state.entries.contains_key(&id) || l.state.find_object(&object).is_some()
        }) {
            r.error = Some(format!(
                "backup id {id} is already in {}; run the backup again",
                d.describe("")
            ));
            *l = None;
        }
    }
    let workers = pipeline::workers();
    let encoders = engine::encoders(opts.engine, &params, workers + 1)?;

    let progress = match snap.size {
        Some(size) => Progress::bytes(opts.progress, size, "backup"),
        None => Progress::counter(opts.progress, "backup"),
    };
    let live: Vec<usize> = (0..dests.len()).filter(|&i| loaded[i].is_some()).collect();
    let mut tee = Tee::new(
        live.iter()
            .map(|&i| dests[i].writer(&object, Cond::CreateOnly))
            .collect(),
    );
    let input = snap.reader()?;
    let encoded = pipeline::encode(
        seeds.archive_id,
        input,
        if opts.source.kind() == SourceKind::Postgres {
            "pg_dump's output"
        } else {
            "the snapshot"
        },
        opts.chunk_size as usize,
        encoders,
        &mut tee,
        &progress,
    );
    let encoded = match encoded {
        Ok(e) => e,
        Err(e) => {
            // Nothing is published: dropping the writers abandons the uploads.
            let first = tee.branches.iter_mut().find_map(|b| b.error.take());
            drop(tee);
            let msg = match first {
                Some(f) if live.len() == 1 => write_error(&dests[live[0]], &object, f.into()),
                _ => anyhow!("{e:#}; nothing was kept"),
            };
            return Err(msg);
        }
    };
    progress.finish();
    let snapshot = snap.method();
    // The source's verdict comes before any commit: a pg_dump that failed
    // or was killed ended its stream like a finished one.
    let finished = match snap.finish() {
        Ok(f) => f,
        Err(e) => {
            // Dropping the writers abandons the uploads: nothing is published.
            drop(tee);
            return Err(anyhow!("{e:#}; nothing was kept"));
        }
    };

    let meta = cairn_core::ArchiveWriter::new(params)?.metadata().clone();
    let mut entry = Entry::for_snapshot(
        id.clone(),
        object.clone(),
        &meta,
        (encoded.trailer.plain_len, encoded.trailer.sha256),
        (encoded.stored_len, encoded.stored_sha256),
    );
    entry.server_version = finished.server_version.clone();
    entry.dump_format = finished.dump_format;
    entry.pg_dump_version = finished.pg_dump_version;
    for (&i, branch) in live.iter().zip(tee.branches) {
        let d = &dests[i];
        let r = &mut results[i];
        let published = match (branch.writer, branch.error) {
            (Some(w), _) => w.commit().map_err(|e| write_error(d, &object, e.into())),
            (None, Some(e)) => Err(write_error(d, &object, e.into())),
            (None, None) => Err(anyhow!("the upload to {} stopped", d.describe(""))),
        };
        let done = published.and_then(|put| {
            if put == Put::Exists {
                bail!(
                    "{} already exists; nothing was changed: run the backup again",
                    d.describe(&object)
                );
            }
            let l = loaded[i].as_mut().expect("live destinations are loaded");
            let mut c = repo::write::new_commit();
            c.add_entry(&entry)?;
            repo::write::append(d, l, c)
        });
        match done {
            Ok(seq) => {
                r.ok = true;
                r.commit = Some(seq);
                r.location = Some(d.describe(&object));
                // Locally, temp files of killed runs go now (cheap); remote
                // stores are swept by prune.
                if d.scheme() == "local" {
                    let _ = d.sweep_temps(crate::prune::ORPHAN_GRACE_MS);
                }
            }
            Err(e) => r.error = Some(format!("{e:#}")),
        }
    }
    if let Some(policy) = &opts.prune {
        for (i, r) in results.iter_mut().enumerate() {
            if r.ok {
                let p = crate::prune::run(
                    &dests[i],
                    &crate::prune::PruneOptions {
                        policy: policy.clone(),
                        dry_run: false,
                        now_ms: None,
                        keep_compacted_ms: crate::prune::DEFAULT_KEEP_COMPACTED_MS,
                    },
                );
                match p {
                    Ok(p) => r.prune = Some(p),
                    Err(e) => {
                        r.error = Some(format!(
                            "the backup succeeded but the prune after it failed: {e:#}"
                        ))
                    }
                }
            }
        }
    }
    let Some(first_ok) = results.iter().find(|r| r.ok) else {
        return Err(all_failed(&results));
    };
    Ok(BackupReport {
        id,
        location: first_ok.location.clone().unwrap_or_default(),
        object,
        database: opts.source.describe(),
        plain_size: entry.plain_size,
        stored_size: entry.stored_size,
        plain_sha256: entry.plain_sha256.clone(),
        stored_sha256: entry.stored_sha256,
        compression: entry.compression,
        encryption: entry.encryption,
        engine: opts.engine,
        snapshot,
        server_version: finished.server_version,
        seconds: started.elapsed().as_secs_f64(),
        failed: results
            .iter()
            .filter(|r| !r.ok || r.error.is_some())
            .count(),
        destinations: results,
    })
}

/// A local destination must exist (it is created) and be writable before
/// any work is done; remote stores say so on the first write.
fn preflight(d: &Dest) -> Result<()> {
    let Some(root) = d.local_path("") else {
        return Ok(());
    };
    let denied = |e: std::io::Error| {
        anyhow!(
            "backup destination {} is not writable ({e}): fix its permissions or choose another destination",
            root.display()
        )
    };
    std::fs::create_dir_all(&root).map_err(denied)?;
    let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{} is not a valid path", root.display()))?;
    // SAFETY: access only reads the NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(denied(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub fn all_failed(results: &[DestResult]) -> anyhow::Error {
    if let [one] = results {
        return anyhow!("{}", one.error.clone().unwrap_or_default());
    }
    let lines: Vec<String> = results
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.destination,
                r.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    anyhow!(
        "every destination failed; nothing was kept:\n  {}",
        lines.join("\n  ")
    )
}

fn is_space_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::FileTooLarge
            ) || matches!(
                io.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
            )
        })
    })
}

fn write_error(dest: &Dest, object: &str, e: anyhow::Error) -> anyhow::Error {
    let path = dest.describe(object);
    if is_space_error(&e) {
        anyhow!(
            "cannot write {path}: no space left ({e:#}); nothing was kept: free space or choose another destination"
        )
    } else {
        anyhow!("cannot write {path}: {e:#}; nothing was kept")
    }
}

/// The compression for a `--level`, with a message that names the flag.
pub fn check_level(level: u8) -> Result<Compression> {
    if level > 9 {
        bail!("--level {level} is out of range: use 0 (store) to 9 (smallest)");
    }
    Ok(Compression::from_level(level)?)
}

/// A backup's chunk codec (`--codec`, the daemon's `codec`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// deflate in a gzip container: unencrypted archives open with `gunzip`.
    Gzip,
    /// zstd: faster and smaller; unencrypted archives open with `zstd -d`.
    Zstd,
}

impl Codec {
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "gzip" => Some(Codec::Gzip),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// gzip for unencrypted archives, so they stay readable with plain
    /// `gunzip`; zstd inside encryption, where no plain tool reads the
    /// chunks anyway and zstd is faster at a better ratio.
    pub fn default_for(encrypted: bool) -> Codec {
        if encrypted { Codec::Zstd } else { Codec::Gzip }
    }

    pub fn default_level(self) -> u8 {
        match self {
            Codec::Gzip => cairn_core::DEFAULT_LEVEL,
            Codec::Zstd => cairn_core::header::ZSTD_DEFAULT_LEVEL,
        }
    }

    /// The compression for `level`, or why the level does not fit the
    /// codec (a sentence starting with the level, for the caller to prefix
    /// with its flag or config key).
    pub fn compression(self, level: u8) -> std::result::Result<Compression, String> {
        match self {
            Codec::Gzip if level > 9 => Err(format!(
                "{level} is out of range for gzip: use 0 (store) to 9 (smallest)"
            )),
            Codec::Gzip => Compression::from_level(level).map_err(|e| e.to_string()),
            Codec::Zstd => Compression::zstd(level).map_err(|_| {
                format!("{level} is out of range for zstd: use 1 (fastest) to 19 (smallest)")
            }),
        }
    }
}

/// The compression for `--codec` and `--level`, each defaulting as
/// [`Codec::default_for`] and [`Codec::default_level`] say.
pub fn choose_compression(
    codec: Option<Codec>,
    level: Option<u8>,
    encrypted: bool,
) -> Result<Compression> {
    let codec = codec.unwrap_or(Codec::default_for(encrypted));
    codec
        .compression(level.unwrap_or(codec.default_level()))
        .map_err(|e| anyhow!("--level {e}"))
}
