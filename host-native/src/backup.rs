//! `cairn backup`: snapshot, encode, store, then catalog and latest.txt.

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use cairn_core::catalog::{self, Entry};
use cairn_core::encoder::EncryptionParams;
use cairn_core::{Compression, Kdf, KeyMaterial, SourceKind, WriterParams};
use serde::Serialize;

use crate::engine::{self, EngineKind};
use crate::progress::Progress;
use crate::storage::Storage;
use crate::{catalog_store, pipeline, snapshot};

pub struct BackupOptions {
    pub db: PathBuf,
    pub key: KeyMaterial,
    pub compression: Compression,
    pub chunk_size: u32,
    pub engine: EngineKind,
    pub temp_dir: PathBuf,
    pub progress: bool,
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
    pub plain_sha256: String,
    pub stored_sha256: String,
    pub compression: String,
    pub encryption: String,
    pub engine: EngineKind,
    /// How the snapshot was taken: "pinned" (read in place under a read
    /// transaction) or "copy" (SQLite's backup API into a temp file).
    pub snapshot: &'static str,
    pub seconds: f64,
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

pub fn run(storage: &dyn Storage, opts: &BackupOptions) -> Result<BackupReport> {
    run_seeded(storage, opts, Seeds::fresh()?)
}

pub fn run_seeded(
    storage: &dyn Storage,
    opts: &BackupOptions,
    seeds: Seeds,
) -> Result<BackupReport> {
    let started = Instant::now();
    snapshot::check_is_sqlite(&opts.db)?;
    let _lock = storage.lock().map_err(|e| dest_error(storage, e))?;
    let mut catalog = catalog_store::load(storage)?.unwrap_or_default();

    let snap = snapshot::take(&opts.db, &opts.temp_dir)?;
    let db_name = opts
        .db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let params = WriterParams {
        archive_id: seeds.archive_id,
        source: SourceKind::Sqlite,
        db_name: db_name.clone(),
        created_at_ms: seeds.created_at_ms,
        page_size: snap.page_size,
        chunk_size: opts.chunk_size,
        compression: opts.compression,
        encryption: encryption_params(&opts.key, &seeds)?,
    };
    let id = catalog::snapshot_id(seeds.created_at_ms, seeds.id_suffix);
    let object = catalog::snapshot_object_key(&id, params.encryption.is_some());
    if catalog.find(&id).is_some() || catalog.find_object(&object).is_some() {
        bail!(
            "backup id {id} is already in {}; run the backup again",
            storage.describe("")
        );
    }
    let workers = pipeline::workers();
    let encoders = engine::encoders(opts.engine, &params, workers + 1)?;

    let progress = Progress::bytes(opts.progress, snap.size, "backup");
    let writer = storage
        .create(&object)
        .map_err(|e| dest_error(storage, e))?;
    let input = snap.reader()?;
    let mut writer = writer;
    let encoded = pipeline::encode(
        seeds.archive_id,
        input,
        "the snapshot",
        opts.chunk_size as usize,
        encoders,
        &mut writer,
        &progress,
    )
    .map_err(|e| write_error(storage, &object, e))?;
    writer
        .commit()
        .map_err(|e| write_error(storage, &object, e.into()))?;
    progress.finish();
    let snapshot = snap.method();
    drop(snap);

    let meta = cairn_core::ArchiveWriter::new(params)?.metadata().clone();
    let entry = Entry::for_snapshot(
        id.clone(),
        object.clone(),
        &meta,
        (encoded.trailer.plain_len, encoded.trailer.sha256),
        (encoded.stored_len, encoded.stored_sha256),
    );
    catalog.add(entry.clone())?;
    catalog_store::save(storage, &catalog, &entry)?;

    Ok(BackupReport {
        id,
        location: storage.describe(&object),
        object,
        database: opts.db.display().to_string(),
        plain_size: entry.plain_size,
        stored_size: entry.stored_size,
        plain_sha256: hex::encode(encoded.trailer.sha256),
        stored_sha256: entry.stored_sha256,
        compression: entry.compression,
        encryption: entry.encryption,
        engine: opts.engine,
        snapshot,
        seconds: started.elapsed().as_secs_f64(),
    })
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

fn write_error(storage: &dyn Storage, object: &str, e: anyhow::Error) -> anyhow::Error {
    let path = storage.describe(object);
    if is_space_error(&e) {
        anyhow!(
            "cannot write {path}: no space left ({e:#}); nothing was kept: free space or choose another destination"
        )
    } else {
        anyhow!("cannot write {path}: {e:#}; nothing was kept")
    }
}

fn dest_error(storage: &dyn Storage, e: std::io::Error) -> anyhow::Error {
    let root = storage.describe("");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            anyhow!(
                "backup destination {root} is not writable ({e}): fix its permissions or choose another destination"
            )
        }
        _ => anyhow!(
            "cannot use backup destination {root}: {e}; check the path or choose another destination"
        ),
    }
}

/// The compression for a `--level`, with a message that names the flag.
pub fn check_level(level: u8) -> Result<Compression> {
    if level > 9 {
        bail!("--level {level} is out of range: use 0 (store) to 9 (smallest)");
    }
    Ok(Compression::from_level(level)?)
}
