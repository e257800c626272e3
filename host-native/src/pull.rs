//! `cairn pull`: copy backups from a (remote) destination into a local
//! directory that stays a destination of its own. Each archive is
//! downloaded under a temp name, its size and SHA-256 checked against the
//! source's catalog, checked in the sandbox (every chunk, integrity_check),
//! and only then linked under its final name and committed to the local log.
//! Idempotent: what the local catalog lists is never downloaded again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::catalog::Entry;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::progress::Progress;
use crate::storage::{Dest, Location};
use crate::verify::VerifyOptions;
use crate::{repo, verify};

pub struct PullOptions {
    pub all: bool,
    /// Key and sandbox settings for the check of each download.
    pub verify: VerifyOptions,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct Pulled {
    pub id: String,
    pub database: String,
    pub object: String,
    pub ok: bool,
    /// Already in the local directory: nothing downloaded.
    pub skipped: bool,
    pub size: u64,
    /// The catalog's codec and level, e.g. "zstd-3" or "deflate-6".
    pub compression: String,
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct PullReport {
    pub source: String,
    pub local: String,
    pub pulled: usize,
    pub skipped: usize,
    pub failed: usize,
    pub backups: Vec<Pulled>,
}

pub fn run(src: &Dest, local_dir: &Path, opts: &PullOptions) -> Result<PullReport> {
    let local = Dest::open(&Location::Local(local_dir.to_path_buf()), src.handle())?;
    let state = repo::require(src)?;
    let wanted: Vec<Entry> = if opts.all {
        state.sorted().into_iter().cloned().collect()
    } else {
        state.newest_per_db().into_values().cloned().collect()
    };
    let mut loaded = repo::load(&local)?;
    let mut report = PullReport {
        source: src.describe(""),
        local: local.describe(""),
        pulled: 0,
        skipped: 0,
        failed: 0,
        backups: Vec::new(),
    };
    // Leftovers of an interrupted pull (temp names of dead processes).
    let _ = local.sweep_temps(crate::prune::ORPHAN_GRACE_MS);
    for e in wanted {
        let started = Instant::now();
        let mut item = Pulled {
            id: e.id.clone(),
            database: e.db_name.clone(),
            object: e.object.clone(),
            ok: true,
            skipped: false,
            size: e.stored_size,
            compression: e.compression.clone(),
            error: None,
            seconds: 0.0,
        };
        let have = loaded.state.entries.contains_key(&e.id)
            && local.local_path(&e.object).is_some_and(|p| p.is_file());
        if have {
            item.skipped = true;
            report.skipped += 1;
        } else {
            match pull_one(src, &local, &mut loaded, &e, opts) {
                Ok(()) => report.pulled += 1,
                Err(err) => {
                    item.ok = false;
                    item.error = Some(format!("{err:#}"));
                    report.failed += 1;
                }
            }
        }
        item.seconds = started.elapsed().as_secs_f64();
        report.backups.push(item);
    }
    Ok(report)
}

/// Removes a file unless disarmed: a failed pull leaves no temp behind.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn pull_one(
    src: &Dest,
    local: &Dest,
    loaded: &mut repo::Loaded,
    e: &Entry,
    opts: &PullOptions,
) -> Result<()> {
    let object = src.describe(&e.object);
    let final_path = local
        .local_path(&e.object)
        .ok_or_else(|| anyhow!("{} is not a local directory", local.describe("")))?;
    let dir = final_path
        .parent()
        .expect("an object key has a directory")
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = final_path
        .file_name()
        .expect("a key has a name")
        .to_string_lossy();
    let tmp_path = dir.join(crate::storage::temp_name(&name));
    let tmp = TempFile(Some(tmp_path.clone()));

    // 1. Download, hashing as it goes.
    let mut input = src
        .reader(&e.object)
        .map_err(|err| crate::hints::open_error(err, &object, &src.describe("")))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .with_context(|| format!("cannot create {}", tmp_path.display()))?;
    let progress = Progress::bytes(opts.progress, e.stored_size, "pull");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("cannot download {object}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", tmp_path.display()))?;
        total += n as u64;
        progress.inc(n as u64);
    }
    progress.finish();
    file.sync_all()
        .with_context(|| format!("cannot write {}", tmp_path.display()))?;
    drop(file);
    let sha = hex::encode(hasher.finalize());
    if total != e.stored_size || sha != e.stored_sha256 {
        bail!(
            "{object} does not match its catalog entry (size {total}, expected {}; SHA-256 {sha}, expected {}): the copy was not kept; run `cairn verify` on the source",
            e.stored_size,
            e.stored_sha256
        );
    }
    // 2. The full check, in the sandbox, on the downloaded bytes.
    verify::check_sandboxed_file(&tmp_path, e, &object, &src.describe(""), &opts.verify)?;
    // 3. Publish create-only, then list it in the local catalog.
    match std::fs::hard_link(&tmp_path, &final_path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            // A copy from an earlier pull that stopped before its commit:
            // keep it only if it is the same archive.
            let have = sha256_file(&final_path)?;
            if have != e.stored_sha256 {
                bail!(
                    "{} exists and differs from {object}; move it aside and pull again",
                    final_path.display()
                );
            }
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot create {}", final_path.display()));
        }
    }
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).ok();
    drop(tmp);
    let mut c = repo::write::new_commit();
    c.add_entry(e)?;
    c.note = Some(format!("pulled from {}", src.describe("")));
    repo::write::append(local, loaded, c)?;
    Ok(())
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", p.display()))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// `cairn pull`: a line per backup, then the counts.
pub fn cli(a: crate::cli::PullArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let src = crate::cli::open_dest(&a.source, rt)?;
    let opts = PullOptions {
        all: a.all,
        verify: VerifyOptions {
            key: a.key.load()?,
            ..crate::cli::verify_options(&a.sandbox, true)
        },
        progress: a.out.progress(),
    };
    let r = run(&src, &a.local, &opts)?;
    if a.out.json {
        crate::cli::print_json(&r)?;
    } else if !a.out.quiet {
        for b in &r.backups {
            match (&b.error, b.skipped) {
                (Some(err), _) => println!("FAILED  {}  {}: {err}", b.id, b.database),
                (None, true) => println!("have    {}  {}", b.id, b.database),
                (None, false) => println!(
                    "pulled  {}  {}  {} ({}, {:.2}s, checked in the sandbox)",
                    b.id,
                    b.database,
                    crate::cli::mib(b.size),
                    b.compression,
                    b.seconds
                ),
            }
        }
        println!(
            "{}: {} pulled, {} already there, {} failed",
            r.local, r.pulled, r.skipped, r.failed
        );
    }
    if r.failed > 0 {
        bail!(
            "{} of {} backups could not be pulled from {} (see above); nothing partial was kept",
            r.failed,
            r.backups.len(),
            r.source
        );
    }
    Ok(())
}
