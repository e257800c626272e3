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
use crate::storage::{Dest, Location};
use crate::{backup, daemon, prune, pull, repair, repo, restore, verify};

const AFTER_HELP: &str = "\
Examples:
  cairn backup app.db                      back up to ./backups
  cairn backup app.db /mnt/backups --key-file cairn.key
  cairn list /mnt/backups
  cairn verify /mnt/backups --all --key-file cairn.key
  cairn restore /mnt/backups -o app.db --key-file cairn.key
  cairn backup app.db /mnt/backups s3://bucket/app sftp://me@nas/srv/app
  cairn prune s3://bucket/app --keep-daily 7 --keep-weekly 4 --keep-monthly 3
  cairn pull sftp://me@server/srv/app ~/app-backups
  PGPASSWORD=… cairn backup postgres://app@db:5432/shop /mnt/backups
  cairn restore /mnt/backups --db postgres://db:5432/shop --to postgres://app@db/shop2 --create

Destinations: a directory, file://, s3://bucket/prefix[?endpoint=…&region=…
&path_style=true] (AWS credential chain) or sftp://user@host[:port]/path
[?key=FILE] (ssh-agent or a key; the host must be in known_hosts).

A destination holds snapshots/, cairn.json, log/ and checkpoints/; nothing
else is needed to restore (plus the key, if encrypted). Unencrypted archives
are gzip files: `gunzip -c backups/snapshots/<id>.db.gz > app.db` works
without cairn (with --codec zstd: `zstd -d -c …/<id>.db.zst > app.db`).";

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "Backups of SQLite and PostgreSQL databases you can trust: consistent, compressed, encrypted, verified in a sandbox.", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take a consistent online snapshot of a SQLite or PostgreSQL database and store it.
    ///
    /// SQLite: uses SQLite's online backup API: other processes keep
    /// writing, and committed data still in the WAL is included.
    /// PostgreSQL (a postgres:// URL): runs `pg_dump -Fc -Z0` and streams
    /// its output into the archive; the backup counts only if pg_dump exits
    /// 0. The archive is written under a temporary name, fsynced and
    /// renamed; the catalog and then latest.txt are updated last.
    Backup(BackupArgs),
    /// Restore a backup to a new database file (never overwrites without
    /// --force), or into PostgreSQL with --to.
    ///
    /// -o: decodes into a temporary file beside the target, checks every
    /// chunk, the SHA-256 sums and (for SQLite) PRAGMA integrity_check, then
    /// renames it into place. A PostgreSQL backup gives its pg_dump file.
    /// --to postgres://…: streams the decoded dump into pg_restore, in one
    /// transaction that commits only once the whole archive checked out.
    Restore(RestoreArgs),
    /// List the backups in a destination.
    List(ListArgs),
    /// Check backups without restoring them, inside a WebAssembly sandbox.
    ///
    /// The sandboxed verifier (cairn-wasi: the decoder and SQLite compiled to
    /// WebAssembly) sees only the archive's directory, read-only, and a
    /// private scratch directory, under a memory cap and a deadline. It
    /// checks every chunk and checksum, decodes the database into the
    /// scratch directory (which the host bounds to the catalog's size and
    /// removes), reads it back through a read-only SQLite VFS and runs
    /// PRAGMA integrity_check and foreign_key_check; the host compares the
    /// result with the catalog, and records a pass there, so a restore of
    /// those bytes can skip its own integrity_check.
    /// A PostgreSQL backup is decoded in the sandbox and the dump piped
    /// into `pg_restore --list` on the host.
    Verify(VerifyArgs),
    /// Generate a random 32-byte key for --key-file.
    Keygen(KeygenArgs),
    /// Replicate a SQLite database (WAL mode) continuously: every committed
    /// transaction is shipped as a segment within --interval; restore any
    /// point with `cairn restore DEST --timestamp …`.
    ///
    /// Holds a read transaction so no other connection can reset the WAL
    /// under it, checkpoints the WAL itself, and starts a new generation (a
    /// fresh snapshot) at start-up, every --snapshot-interval and whenever
    /// frames may have been missed. One replicator per database and
    /// destination: a second one is refused (a lease). SIGTERM/Ctrl-C: ship
    /// what is committed, release the lease, exit 0.
    Replicate(crate::replicate::ReplicateArgs),
    /// Delete old backups by a retention policy (restic's `forget` rules).
    ///
    /// Each database in the destination is judged on its own. The plan is
    /// printed with a reason per backup; then one commit removes the dropped
    /// backups from the catalog and their archives are deleted. The newest
    /// backup of each database is always kept. A backup that lands while a
    /// prune runs is never deleted by it.
    Prune(PruneArgs),
    /// Copy backups from a destination (S3, SFTP, a directory) into a local
    /// directory, verifying each in the sandbox before keeping it.
    ///
    /// Only what is missing locally is downloaded; the local directory is a
    /// destination of its own (`cairn restore DIR` works on it). Run it from
    /// cron on a laptop to keep a copy of the server's backups.
    Pull(PullArgs),
    /// Rebuild a destination's catalog: replay the whole log into a fresh
    /// checkpoint and list archives that no backup names.
    Repair(RepairArgs),
    /// Write out the sandboxed verifier, cairn-wasi.wasm, to run in any WASI
    /// runtime: `wasmtime run --dir BACKUPS::/backup cairn-wasi.wasm verify
    /// /backup/snapshots/ID.db.gz [--key-file /backup/KEY]`.
    Verifier(VerifierArgs),
    /// Check a daemon config file (cairn.toml; see docs/CONFIG.md), or
    /// import one from Litestream.
    Config(ConfigArgs),
    /// Back up every database of a config file on its schedule: a
    /// long-lived process (systemd unit: examples/cairn.service).
    ///
    /// Each run is a child process with a timeout; a run still going when
    /// the next is due is skipped; runs missed while the daemon was down run
    /// once at start-up. SIGTERM/SIGINT: running backups get
    /// daemon.shutdown_grace to finish, then are stopped (nothing partial is
    /// ever published); exit 0. SIGHUP: reload the config file.
    Daemon(DaemonArgs),
    /// Run the backups (or, with --verify, the restore drills) of a config
    /// file now, once, as the daemon would; exit non-zero if any failed.
    RunOnce(RunOnceArgs),
    /// For each database of a config file: last success, last failure, next
    /// run, and the newest backup in each destination (read from it).
    Status(StatusArgs),
    /// One daemon job, run by the daemon in a child process.
    #[command(hide = true)]
    InternalJob(InternalJobArgs),
}

#[derive(Args, Debug)]
pub struct ConfigFileArg {
    /// The config file.
    #[arg(
        short,
        long = "config",
        value_name = "FILE",
        env = "CAIRN_CONFIG",
        default_value = "cairn.toml"
    )]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Report every problem in the config at once, each with its path
    /// (e.g. `databases[1].destinations[0]: …`); exit non-zero if any.
    Check(ConfigCheckArgs),
    /// Write the cairn.toml equivalent of a Litestream config, with a note
    /// for each setting cairn cannot express.
    ImportLitestream(ImportLitestreamArgs),
}

#[derive(Args, Debug)]
pub struct ImportLitestreamArgs {
    /// The Litestream config file (litestream.yml).
    pub input: PathBuf,
    /// Write the result here [default: stdout].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ConfigCheckArgs {
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// Also reach every destination (read its catalog) and SMTP server.
    #[arg(long)]
    pub connect: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub file: ConfigFileArg,
}

#[derive(Args, Debug)]
pub struct RunOnceArgs {
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// Only these databases (by name) [default: all].
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Run the restore drills (verify the newest backup in each destination
    /// in the sandbox) instead of the backups.
    #[arg(long)]
    pub verify: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InternalJobArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long)]
    pub database: String,
    #[arg(long)]
    pub kind: String,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The SQLite database file to back up, or a PostgreSQL database:
    /// postgres://user[:password]@host[:port]/dbname[?sslmode=MODE] (better:
    /// leave the password out and set PGPASSWORD or use ~/.pgpass).
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Destinations: a directory (created if missing), s3://bucket/prefix or
    /// sftp://user@host/path. Several: one encode, written to each (fan-out).
    #[arg(default_value = "backups", value_name = "DEST")]
    pub dests: Vec<String>,
    /// After a successful backup, apply the retention policy given by the
    /// --keep-* options to each destination that succeeded.
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Encrypt with AES-256-GCM (implied by any key option; needs one).
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Chunk codec [default: gzip, or zstd when encrypting].
    #[arg(long, value_enum)]
    pub codec: Option<backup::Codec>,
    /// Compression level: gzip 0 (store) to 9, default 6; zstd 1 to 19,
    /// default 3.
    #[arg(long, value_name = "N")]
    pub level: Option<u8>,
    /// Chunk size (each chunk is compressed and sealed on its own), e.g. 1M.
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: u64,
    /// Where the core runs: natively, or in the embedded WebAssembly component.
    #[arg(long, value_enum, default_value_t = EngineKind::Native)]
    pub engine: EngineKind,
    /// Directory for the temporary snapshot copy [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// How long to wait for another process's lock on the SQLite database
    /// (e.g. 10s, 2m) before giving up.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lock_timeout: std::time::Duration,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Destination to restore from: a directory, s3://… or sftp://….
    pub dest: String,
    /// The database file to write (for a PostgreSQL backup: the pg_dump
    /// custom-format file, for `pg_restore`).
    #[arg(short, long, value_name = "PATH", required_unless_present = "to")]
    pub output: Option<PathBuf>,
    /// Restore into this PostgreSQL database instead of a file:
    /// postgres://user@host[:port]/dbname (password: PGPASSWORD or ~/.pgpass).
    #[arg(long, value_name = "URL", conflicts_with_all = ["output", "force", "if_db_not_exists"])]
    pub to: Option<String>,
    /// With --to: drop the dump's objects before recreating them
    /// (pg_restore --clean --if-exists).
    #[arg(long, requires = "to")]
    pub clean: bool,
    /// With --to: create the database first (CREATE DATABASE, connecting to
    /// the server's `postgres` database); it is dropped again if the restore fails.
    #[arg(long, requires = "to")]
    pub create: bool,
    /// With --to: run pg_restore with N parallel jobs. The dump is decoded to
    /// a temp file in --temp-dir and checked first (parallel pg_restore needs
    /// a file), and it is not one transaction.
    #[arg(long, requires = "to", value_name = "N")]
    pub jobs: Option<u32>,
    /// With --to: if the backup holds plain SQL text instead of a pg_dump
    /// custom-format dump, run it with psql (one transaction, stopping at
    /// the first error). Refused without this flag.
    #[arg(long, requires = "to")]
    pub allow_sql_fallback: bool,
    /// Directory for --jobs' temporary dump [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// Backup id to restore (see `cairn list`) [default: the newest].
    #[arg(long)]
    pub id: Option<String>,
    /// In a destination shared by several databases: restore this one's newest backup.
    #[arg(long, value_name = "NAME", conflicts_with = "id")]
    pub db: Option<String>,
    /// Replace the output file if it exists (its -wal and -shm files are removed).
    #[arg(long)]
    pub force: bool,
    /// Do nothing, successfully, if the output file exists (restore on startup).
    #[arg(long, conflicts_with = "force")]
    pub if_db_not_exists: bool,
    #[command(flatten)]
    pub replica: crate::replicate::restore::ReplicaArgs,
    #[command(flatten)]
    pub key: KeyArgs,
    #[arg(long, value_enum, default_value_t = EngineKind::Native)]
    pub engine: EngineKind,
    /// Before writing anything, run the full check of `cairn verify` in the
    /// sandbox (decode, checksums, integrity_check); restore only if it passes.
    #[arg(long)]
    pub verify_sandboxed: bool,
    /// When to run integrity_check on a restored SQLite database. auto: unless
    /// `cairn verify` recorded that these very bytes passed it (the restore
    /// proves them identical by their SHA-256); from a replica, unless the
    /// generation's snapshot has a recorded pass (the replicator checks each
    /// snapshot itself) and every page applied since passed its checksums;
    /// full: always.
    #[arg(long, value_enum, default_value_t = restore::CheckMode::Auto)]
    pub check: restore::CheckMode,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Destination: a directory, s3://… or sftp://….
    #[arg(default_value = "backups")]
    pub dest: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List replication's generations and the restorable range instead.
    #[arg(long)]
    pub generations: bool,
    /// List replication's segments instead.
    #[arg(long, conflicts_with = "generations")]
    pub segments: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Destination: a directory, s3://… or sftp://….
    #[arg(default_value = "backups")]
    pub dest: String,
    /// Backup id to verify [default: the newest].
    #[arg(long, conflicts_with = "all")]
    pub id: Option<String>,
    /// In a destination shared by several databases: this one's newest backup.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["id", "all"])]
    pub db: Option<String>,
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
    /// For a remote archive: download it to --temp-dir first, instead of
    /// streaming it into the sandbox (which needs no local disk).
    #[arg(long)]
    pub download_first: bool,
    /// Do not record passed checks in the destination's log (by default a
    /// passed integrity_check is recorded, and restores of those very bytes
    /// skip it; use this with read-only credentials).
    #[arg(long)]
    pub no_record: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Destination: a directory, s3://… or sftp://….
    pub dest: String,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Print the plan, delete nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Replicas: how long a level-0 segment stays once a merged one covers
    /// it (as `cairn replicate --keep-compacted`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub keep_compacted: std::time::Duration,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The retention policy (restic's `forget` semantics): each --keep-* rule
/// counts periods that hold a backup and keeps the newest in each; a backup
/// kept by any rule stays.
#[derive(Args, Debug, Default)]
pub struct RetentionArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// … of each of the last N days (UTC) that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// … of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// … of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// … of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every backup taken within this long of the newest, e.g. 7d, 36h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub keep_within: Option<i64>,
    /// Delete every backup older than this (but the newest), e.g. 90d; with
    /// --keep-* rules, a backup must pass both.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub max_age: Option<i64>,
}

impl RetentionArgs {
    pub fn policy(&self) -> cairn_core::retention::Policy {
        cairn_core::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within_ms: self.keep_within,
            max_age_ms: self.max_age,
        }
    }
}

/// `7d`, `36h`, `2w`, `1h30m` (humantime) as milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 7d, 36h or 2w ({e})"))?;
    i64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("{s:?} must be a positive duration"))
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Destination to copy from: s3://…, sftp://… or a directory.
    pub source: String,
    /// Local directory to copy into (a destination of its own).
    pub local: PathBuf,
    /// Copy every backup, not only the newest of each database.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Destination: a directory, s3://… or sftp://….
    pub dest: String,
    /// Add archives that no backup names back into the catalog (their
    /// headers and sums are read; encrypted ones need the key).
    #[arg(long)]
    pub adopt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
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
    /// Memory cap for the WebAssembly sandbox, e.g. 512M [default: 256M,
    /// whatever the database's size: the verifier decodes into a scratch
    /// file in --temp-dir and SQLite reads it from there].
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
    pub(crate) fn progress(&self) -> bool {
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

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

/// The runtime of the async storage layer; the CPU pipeline keeps its own threads.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn-io")
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")
}

/// Opens a destination argument.
pub fn open_dest(arg: &str, rt: &tokio::runtime::Runtime) -> Result<Dest> {
    Dest::open(&Location::parse(arg)?, rt.handle())
}

/// Runs a parsed command. Errors are returned for main to print.
pub fn run(cli: Cli) -> Result<()> {
    let rt = runtime()?;
    match cli.command {
        Command::Backup(a) => cmd_backup(a, &rt),
        Command::Restore(a) => cmd_restore(a, &rt),
        Command::List(a) => cmd_list(a, &rt),
        Command::Replicate(a) => crate::replicate::cli(a, &rt),
        Command::Verify(a) => cmd_verify(a, &rt),
        Command::Prune(a) => {
            let d = open_dest(&a.dest, &rt)?;
            prune::cli(a, &d)
        }
        Command::Pull(a) => pull::cli(a, &rt),
        Command::Repair(a) => {
            let d = open_dest(&a.dest, &rt)?;
            repair::cli(a, &d)
        }
        Command::Keygen(a) => cmd_keygen(a),
        Command::Verifier(a) => cmd_verifier(a),
        Command::Config(a) => match a.command {
            ConfigCommand::Check(c) => daemon::check::cli(c.file.config, c.connect, c.json, &rt),
            ConfigCommand::ImportLitestream(i) => {
                daemon::litestream::cli(&i.input, i.output.as_deref(), i.force)
            }
        },
        Command::Daemon(a) => daemon::serve::cli(a.file.config, &rt),
        Command::RunOnce(a) => daemon::run_once::cli(a.file.config, a.names, a.verify, a.json, &rt),
        Command::Status(a) => daemon::status::cli(a.file.config, a.json, &rt),
        Command::InternalJob(a) => {
            let kind = match a.kind.as_str() {
                "drill" => daemon::job::Kind::Drill,
                _ => daemon::job::Kind::Backup,
            };
            daemon::job::child_main(a.config, &a.database, kind, &rt)
        }
    }
}

fn cmd_backup(a: BackupArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
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
    let key = a.key.load()?;
    let opts = backup::BackupOptions {
        source: crate::sources::Source::parse(&a.source)?,
        compression: backup::choose_compression(
            a.codec,
            a.level,
            !matches!(key, cairn_core::KeyMaterial::None),
        )?,
        key,
        chunk_size,
        engine: a.engine,
        temp_dir: temp_dir(&a.temp_dir),
        progress: a.out.progress(),
        prune: None,
        lock_timeout: a.lock_timeout,
    };
    let policy = a.retention.policy();
    let opts = match (a.prune, policy.is_empty()) {
        (true, true) => {
            bail!("--prune needs a policy: add --keep-daily 7 or other --keep-* options")
        }
        (false, false) => bail!("--keep-* options apply only with --prune (or use `cairn prune`)"),
        (true, false) => {
            policy.validate().map_err(|e| anyhow!("{e}"))?;
            backup::BackupOptions {
                prune: Some(policy),
                ..opts
            }
        }
        (false, true) => opts,
    };
    // A destination that cannot even be opened (bad URL, unknown host key)
    // is a failed branch like any other.
    let mut dests = Vec::new();
    let mut unopened = Vec::new();
    for d in &a.dests {
        match open_dest(d, rt) {
            Ok(x) => dests.push(x),
            Err(e) => unopened.push(backup::DestResult::failed(d, format!("{e:#}"))),
        }
    }
    let r = if dests.is_empty() {
        Err(backup::all_failed(&unopened))
    } else {
        backup::run(&dests, &opts).map(|mut r| {
            r.failed += unopened.len();
            r.destinations.extend(unopened);
            r
        })
    };
    let r = r?;
    if a.out.json {
        print_json(&r)?;
    } else if !a.out.quiet {
        print_backup(&r);
    }
    if r.failed > 0 {
        bail!(
            "{} of {} destinations failed (see above)",
            r.failed,
            r.destinations.len()
        );
    }
    Ok(())
}

fn print_backup(r: &backup::BackupReport) {
    if r.destinations.len() > 1 {
        for d in &r.destinations {
            match (&d.error, d.ok) {
                (None, true) => eprintln!(
                    "ok      {}",
                    d.location.as_deref().unwrap_or(&d.destination)
                ),
                (Some(e), true) => eprintln!(
                    "ok      {} (but: {e})",
                    d.location.as_deref().unwrap_or(&d.destination)
                ),
                (e, false) => eprintln!(
                    "FAILED  {}: {}",
                    d.destination,
                    e.as_deref().unwrap_or("failed")
                ),
            }
        }
    } else if let Some(e) = r.destinations.first().and_then(|d| d.error.as_ref()) {
        eprintln!("warning: {e}");
    }
    for d in &r.destinations {
        if let Some(p) = &d.prune {
            prune::print_summary(p);
        }
    }
    {
        eprintln!(
            "backed up {} ({}) to {} ({}, {:.0}% of the database, {}, {}) in {:.2}s",
            r.database,
            mib(r.plain_size),
            r.location,
            mib(r.stored_size),
            100.0 * r.stored_size as f64 / r.plain_size.max(1) as f64,
            r.compression,
            if r.encryption == "none" {
                "not encrypted".to_string()
            } else {
                r.encryption.clone()
            },
            r.seconds
        );
    }
}

fn cmd_restore(a: RestoreArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let key = a.key.load()?;
    if let Some(to) = &a.to {
        let opts = restore::PgRestoreOptions {
            id: a.id,
            db: a.db,
            target: crate::sources::PgSource::from_url(to)?,
            clean: a.clean,
            create: a.create,
            jobs: a.jobs,
            allow_sql_fallback: a.allow_sql_fallback,
            key: key.clone(),
            engine: a.engine,
            limits: a.sandbox.decode_limits(),
            verify_sandboxed: a.verify_sandboxed.then(|| verify::VerifyOptions {
                key,
                ..verify_options(&a.sandbox, true)
            }),
            temp_dir: temp_dir(&a.temp_dir),
            progress: a.out.progress(),
        };
        let r = restore::run_to_postgres(&open_dest(&a.dest, rt)?, &opts)?;
        if a.out.json {
            return print_json(&r);
        }
        if !a.out.quiet {
            let how = r.postgres.as_ref().map_or(String::new(), |p| {
                format!(" with {} ({}; {})", p.tool, p.content, p.method)
            });
            eprintln!(
                "restored {} ({}) into {}{how} in {:.2}s",
                r.id.as_deref().unwrap_or(""),
                mib(r.size),
                r.output,
                r.seconds
            );
        }
        return Ok(());
    }
    if a.id.is_none()
        && let Some(out) = &a.output
        && crate::replicate::restore::cli(&a, out, &key, rt)?
    {
        return Ok(());
    }
    let opts = restore::RestoreOptions {
        id: a.id,
        db: a.db,
        output: a
            .output
            .ok_or_else(|| anyhow!("give -o PATH (a file) or --to postgres://… (a database)"))?,
        force: a.force,
        if_db_not_exists: a.if_db_not_exists,
        check: a.check,
        key: key.clone(),
        engine: a.engine,
        limits: a.sandbox.decode_limits(),
        verify_sandboxed: a.verify_sandboxed.then(|| verify::VerifyOptions {
            key,
            ..verify_options(&a.sandbox, true)
        }),
        progress: a.out.progress(),
    };
    let r = restore::run(&open_dest(&a.dest, rt)?, &opts)?;
    if a.out.json {
        return print_json(&r);
    }
    if !a.out.quiet {
        if r.restored {
            let check = if let Some(at) = &r.integrity_checked_at {
                format!("integrity_check passed at {at} (cairn verify) on these very bytes")
            } else if r.content == "SQLite database" {
                "integrity_check ok".to_string()
            } else {
                format!("checksums ok; it holds {}", r.content)
            };
            eprintln!(
                "restored {} ({}) to {} in {:.2}s; {check}",
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

fn cmd_list(a: ListArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let dest = open_dest(&a.dest, rt)?;
    if a.generations || a.segments {
        return crate::replicate::list::cli(&dest, a.segments, a.json);
    }
    let state = repo::require(&dest)?;
    let entries: Vec<&cairn_core::catalog::Entry> = state.sorted();
    let newest = state.newest_per_db();
    let latest = state.newest(None).map(|e| e.id.clone());
    if a.json {
        #[derive(serde::Serialize)]
        struct Listing<'a> {
            /// The newest backup overall.
            latest: Option<String>,
            /// The newest backup of each database.
            newest: std::collections::BTreeMap<&'a str, &'a str>,
            backups: &'a [&'a cairn_core::catalog::Entry],
        }
        return print_json(&Listing {
            latest,
            newest: newest.iter().map(|(k, v)| (*k, v.id.as_str())).collect(),
            backups: &entries,
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:<24} {:>11} {:>11} {:<10} {:<24} DATABASE",
        "ID", "CREATED", "DB SIZE", "STORED", "COMPRESS", "ENCRYPTION"
    )?;
    for e in entries {
        let mark = if newest.get(e.db_name.as_str()).is_some_and(|n| n.id == e.id) {
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

fn cmd_verify(a: VerifyArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let opts = verify::VerifyOptions {
        id: a.id,
        db: a.db,
        all: a.all,
        key: a.key.load()?,
        temp_dir: temp_dir(&a.temp_dir),
        progress: a.out.progress(),
        download_first: a.download_first,
        record: !a.no_record,
        ..verify_options(&a.sandbox, !a.no_sandbox)
    };
    let results = verify::run(&open_dest(&a.dest, rt)?, &opts)?;
    let failed = results.iter().filter(|r| !r.ok).count();
    if a.out.json {
        print_json(&results)?;
    } else {
        for r in &results {
            match &r.error {
                None if r.postgres.is_some() => {
                    let pg = r.postgres.as_ref().expect("checked");
                    println!(
                        "ok      {}  {}  {}: checksums and pg_restore --list ok; {} TOC entries, {} ({:.2}s)",
                        r.id,
                        mib(r.size),
                        if r.sandboxed {
                            "decoded in the sandbox"
                        } else {
                            "decoded natively"
                        },
                        pg.toc_entries,
                        if pg.tables.len() == 1 {
                            "1 table with data".to_string()
                        } else {
                            format!("{} tables with data", pg.tables.len())
                        },
                        r.seconds
                    )
                }
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
pub(crate) fn verify_options(s: &SandboxArgs, sandbox: bool) -> verify::VerifyOptions {
    verify::VerifyOptions {
        id: None,
        db: None,
        all: false,
        key: cairn_core::KeyMaterial::None,
        sandbox,
        host_crypto: !s.no_host_crypto,
        memory: s.sandbox_memory,
        timeout: s.timeout(),
        temp_dir: std::env::temp_dir(),
        progress: false,
        download_first: false,
        record: true,
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
