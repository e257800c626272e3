//! The `cairn` command line: argument parsing and output. The work is done
//! by the library modules; this file only wires them to flags and prints.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};

use crate::engine::EngineKind;
use crate::keys::KeyArgs;
use crate::sandbox::Limits;
use crate::storage::LocalDir;
use crate::{backup, catalog_store, restore, verify};

const AFTER_HELP: &str = "\
Examples:
  cairn backup app.db                      back up to ./backups
  cairn backup app.db /mnt/backups --key-file cairn.key
  cairn list /mnt/backups
  cairn verify /mnt/backups --all --key-file cairn.key
  cairn restore /mnt/backups -o app.db --key-file cairn.key

A destination holds snapshots/, catalog.json and latest.txt; nothing else is
needed to restore (plus the key, if encrypted). Unencrypted archives are gzip
files: `gunzip -c backups/snapshots/<id>.db.gz > app.db` works without cairn.";

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "Backups of SQLite databases you can trust: consistent, compressed, encrypted, verified in a sandbox.", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take a consistent online snapshot of a SQLite database and store it.
    ///
    /// Uses SQLite's online backup API: other processes keep writing, and
    /// committed data still in the WAL is included. The archive is written
    /// under a temporary name, fsynced and renamed; the catalog and then
    /// latest.txt are updated last.
    Backup(BackupArgs),
    /// Restore a backup to a new database file (never overwrites without --force).
    ///
    /// Decodes into a temporary file beside the target, checks every chunk,
    /// the SHA-256 sums and PRAGMA integrity_check, then renames it into place.
    Restore(RestoreArgs),
    /// List the backups in a destination.
    List(ListArgs),
    /// Check backups without restoring them, inside a WebAssembly sandbox.
    ///
    /// The sandboxed verifier (cairn-wasi: the decoder and SQLite compiled to
    /// WebAssembly) sees only the archive's directory, read-only, under a
    /// memory cap and a deadline. It checks every chunk and checksum, loads
    /// the database into memory and runs PRAGMA integrity_check and
    /// foreign_key_check; the host compares the result with the catalog.
    Verify(VerifyArgs),
    /// Generate a random 32-byte key for --key-file.
    Keygen(KeygenArgs),
    /// Write out the sandboxed verifier, cairn-wasi.wasm, to run in any WASI
    /// runtime: `wasmtime run --dir BACKUPS::/backup cairn-wasi.wasm verify
    /// /backup/snapshots/ID.db.gz [--key-file /backup/KEY]`.
    Verifier(VerifierArgs),
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The SQLite database file to back up.
    pub db: PathBuf,
    /// Backup directory (created if missing).
    #[arg(default_value = "backups")]
    pub dest: PathBuf,
    /// Encrypt with AES-256-GCM (implied by any key option; needs one).
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Deflate level: 0 stores, 1 is fastest, 9 smallest.
    #[arg(long, default_value_t = cairn_core::DEFAULT_LEVEL, value_name = "0-9")]
    pub level: u8,
    /// Chunk size (each chunk is compressed and sealed on its own), e.g. 1M.
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: u64,
    /// Where the core runs: natively, or in the embedded WebAssembly component.
    #[arg(long, value_enum, default_value_t = EngineKind::Native)]
    pub engine: EngineKind,
    /// Directory for the temporary snapshot copy [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup directory to restore from.
    pub dest: PathBuf,
    /// The database file to write.
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    /// Backup id to restore (see `cairn list`) [default: latest].
    #[arg(long)]
    pub id: Option<String>,
    /// Replace the output file if it exists (its -wal and -shm files are removed).
    #[arg(long)]
    pub force: bool,
    /// Do nothing, successfully, if the output file exists (restore on startup).
    #[arg(long, conflicts_with = "force")]
    pub if_db_not_exists: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(long, value_enum, default_value_t = EngineKind::Native)]
    pub engine: EngineKind,
    /// Before writing anything, run the full check of `cairn verify` in the
    /// sandbox (decode, checksums, integrity_check); restore only if it passes.
    #[arg(long)]
    pub verify_sandboxed: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Backup directory.
    #[arg(default_value = "backups")]
    pub dest: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Backup directory.
    #[arg(default_value = "backups")]
    pub dest: PathBuf,
    /// Backup id to verify [default: latest].
    #[arg(long, conflicts_with = "all")]
    pub id: Option<String>,
    /// Verify every backup in the catalog.
    #[arg(long)]
    pub all: bool,
    /// Check inside the WebAssembly sandbox: decoder and SQLite both run in
    /// the guest, which sees only the archive's directory, read-only (the default).
    #[arg(long = "sandbox", overrides_with = "no_sandbox")]
    pub in_sandbox: bool,
    /// Check natively instead (only for storage you trust).
    #[arg(long)]
    pub no_sandbox: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Directory for the temporary decoded copy [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct VerifierArgs {
    /// Where to write it.
    #[arg(short, long, value_name = "PATH", default_value = "cairn-wasi.wasm")]
    pub output: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Write the key to this file (mode 0600; refuses to overwrite) instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Memory cap for the WebAssembly sandbox, e.g. 512M [default: 256M to
    /// decode; to verify, the database's size plus 128M, at least 256M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub sandbox_memory: Option<u64>,
    /// Deadline in seconds [default: 60 per call to decode; to verify, 60
    /// for the whole check plus 60 per GiB of database].
    #[arg(long, value_name = "SECONDS")]
    pub sandbox_timeout: Option<u64>,
    /// Decrypt inside the sandbox too, instead of with the host's AES-GCM
    /// (AES instructions); about 10x slower, for those who want no host
    /// code at all on the archive's bytes.
    #[arg(long)]
    pub no_host_crypto: bool,
}

impl SandboxArgs {
    fn timeout(&self) -> Option<Duration> {
        self.sandbox_timeout.map(|s| Duration::from_secs(s.max(1)))
    }

    /// Limits for decoding with `--engine wasm`.
    fn decode_limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            memory: self.sandbox_memory.map_or(d.memory, |m| m as usize),
            call_timeout: self.timeout().unwrap_or(d.call_timeout),
        }
    }
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

impl OutputArgs {
    fn progress(&self) -> bool {
        !self.json && !self.quiet
    }
}

/// `512K`, `1M`, `2G`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512K, 1M or 2G"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?} has an unknown unit; use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn temp_dir(d: &Option<PathBuf>) -> PathBuf {
    d.clone().unwrap_or_else(std::env::temp_dir)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

/// Runs a parsed command. Errors are returned for main to print.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Backup(a) => cmd_backup(a),
        Command::Restore(a) => cmd_restore(a),
        Command::List(a) => cmd_list(a),
        Command::Verify(a) => cmd_verify(a),
        Command::Keygen(a) => cmd_keygen(a),
        Command::Verifier(a) => cmd_verifier(a),
    }
}

fn cmd_backup(a: BackupArgs) -> Result<()> {
    if a.encrypt && !a.key.is_given() {
        bail!(
            "--encrypt needs a key: pass --key-file, --key-env, --passphrase-file or --passphrase-env (make a key with `cairn keygen`)"
        );
    }
    let chunk_size = u32::try_from(a.chunk_size)
        .ok()
        .filter(|c| (cairn_core::MIN_CHUNK_SIZE..=cairn_core::MAX_CHUNK_SIZE).contains(c))
        .ok_or_else(|| {
            anyhow!(
                "--chunk-size {} is out of range: use 4K to 16M",
                a.chunk_size
            )
        })?;
    let opts = backup::BackupOptions {
        db: a.db,
        key: a.key.load()?,
        compression: backup::check_level(a.level)?,
        chunk_size,
        engine: a.engine,
        temp_dir: temp_dir(&a.temp_dir),
        progress: a.out.progress(),
    };
    let storage = LocalDir::new(&a.dest);
    let r = backup::run(&storage, &opts)?;
    if a.out.json {
        return print_json(&r);
    }
    if !a.out.quiet {
        eprintln!(
            "backed up {} ({}) to {} ({}, {:.0}% of the database, {}) in {:.2}s",
            r.database,
            mib(r.plain_size),
            r.location,
            mib(r.stored_size),
            100.0 * r.stored_size as f64 / r.plain_size.max(1) as f64,
            if r.encryption == "none" {
                "not encrypted".to_string()
            } else {
                r.encryption.clone()
            },
            r.seconds
        );
    }
    Ok(())
}

fn cmd_restore(a: RestoreArgs) -> Result<()> {
    let key = a.key.load()?;
    let opts = restore::RestoreOptions {
        id: a.id,
        output: a.output,
        force: a.force,
        if_db_not_exists: a.if_db_not_exists,
        key: key.clone(),
        engine: a.engine,
        limits: a.sandbox.decode_limits(),
        verify_sandboxed: a.verify_sandboxed.then(|| verify::VerifyOptions {
            key,
            ..verify_options(&a.sandbox, true)
        }),
        progress: a.out.progress(),
    };
    let r = restore::run(&LocalDir::new(&a.dest), &opts)?;
    if a.out.json {
        return print_json(&r);
    }
    if !a.out.quiet {
        if r.restored {
            eprintln!(
                "restored {} ({}) to {} in {:.2}s; integrity_check ok",
                r.id.as_deref().unwrap_or(""),
                mib(r.size),
                r.output,
                r.seconds
            );
        } else {
            eprintln!("{} exists; nothing to do (--if-db-not-exists)", r.output);
        }
    }
    Ok(())
}

fn cmd_list(a: ListArgs) -> Result<()> {
    let storage = LocalDir::new(&a.dest);
    let catalog = catalog_store::require(&storage)?;
    let latest = catalog_store::resolve(&storage, &catalog, None)
        .ok()
        .map(|e| e.id);
    if a.json {
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            latest: Option<String>,
            backups: &'a [cairn_core::catalog::Entry],
        }
        return print_json(&Listing {
            latest,
            backups: &catalog.entries,
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:<24} {:>11} {:>11} {:<10} {:<24} DATABASE",
        "ID", "CREATED", "DB SIZE", "STORED", "COMPRESS", "ENCRYPTION"
    )?;
    for e in &catalog.entries {
        let mark = if latest.as_deref() == Some(e.id.as_str()) {
            " (latest)"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<26} {:<24} {:>11} {:>11} {:<10} {:<24} {}{mark}",
            e.id,
            e.created_at,
            mib(e.plain_size),
            mib(e.stored_size),
            e.compression,
            e.encryption,
            e.db_name
        )?;
    }
    Ok(())
}

fn cmd_verify(a: VerifyArgs) -> Result<()> {
    let opts = verify::VerifyOptions {
        id: a.id,
        all: a.all,
        key: a.key.load()?,
        temp_dir: temp_dir(&a.temp_dir),
        progress: a.out.progress(),
        ..verify_options(&a.sandbox, !a.no_sandbox)
    };
    let results = verify::run(&LocalDir::new(&a.dest), &opts)?;
    let failed = results.iter().filter(|r| !r.ok).count();
    if a.out.json {
        print_json(&results)?;
    } else {
        for r in &results {
            match &r.error {
                None => println!(
                    "ok      {}  {}  {}: checksums, integrity_check and foreign_key_check ok; {} ({:.2}s)",
                    r.id,
                    mib(r.size),
                    if r.sandboxed {
                        "checked in the sandbox"
                    } else {
                        "checked natively"
                    },
                    tables_summary(&r.tables),
                    r.seconds
                ),
                Some(e) => println!("FAILED  {}  {e}", r.id),
            }
        }
    }
    if let Some(first) = results.iter().find(|r| !r.ok) {
        let more = if failed > 1 {
            format!(" (and {} more)", failed - 1)
        } else {
            String::new()
        };
        bail!(
            "{failed} of {} backups failed verification: {}: {}{more}",
            results.len(),
            first.id,
            first.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Sandbox settings for a verify; the key, id and output are set by the caller.
fn verify_options(s: &SandboxArgs, sandbox: bool) -> verify::VerifyOptions {
    verify::VerifyOptions {
        id: None,
        all: false,
        key: cairn_core::KeyMaterial::None,
        sandbox,
        host_crypto: !s.no_host_crypto,
        memory: s.sandbox_memory,
        timeout: s.timeout(),
        temp_dir: std::env::temp_dir(),
        progress: false,
    }
}

fn tables_summary(tables: &[crate::verifier::Table]) -> String {
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(tables.len() as u64, "table"),
        plural(rows, "row")
    )
}

fn cmd_verifier(a: VerifierArgs) -> Result<()> {
    let out = &a.output;
    if out.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to replace it",
            out.display()
        );
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(crate::verifier::PORTABLE)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    tmp.persist(out)
        .map_err(|e| anyhow!("cannot write {}: {}", out.display(), e.error))?;
    eprintln!(
        "wrote {} ({}): run it with `wasmtime run --dir BACKUPS::/backup {} verify /backup/snapshots/ID.db.gz`",
        a.output.display(),
        mib(crate::verifier::PORTABLE.len() as u64),
        a.output.display()
    );
    Ok(())
}

fn cmd_keygen(a: KeygenArgs) -> Result<()> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
    let text = format!("{}\n", hex::encode(key));
    match a.output {
        None => print!("{text}"),
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .with_context(|| {
                    format!(
                        "cannot create key file {} (it must not exist yet)",
                        p.display()
                    )
                })?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            eprintln!(
                "wrote a new key to {}; keep a copy somewhere safe: without it the backups cannot be restored",
                p.display()
            );
        }
    }
    Ok(())
}
