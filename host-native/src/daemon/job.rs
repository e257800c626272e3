//! One job — a backup or a restore drill of one database — as run inside
//! the child process `cairn internal-job` (see [`super::runner`] for why a
//! child). The child reads the config text the daemon validated on stdin
//! (not the file, which may have changed since) and prints one [`Outcome`]
//! as JSON on stdout.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use super::config::{self, Config, Database};
use crate::backup::{self, BackupOptions};
use crate::cli;
use crate::engine::EngineKind;
use crate::storage::url::redact;
use crate::verify::{self, VerifyOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backup,
    Drill,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Drill => "drill",
        }
    }
}

/// What a job did. `ok` only if every destination succeeded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// Why it failed (the first failure, or the run's own error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup id written (backup) — the same in every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Archive size in bytes (compressed, encrypted): what each destination stored.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub destinations: Vec<DestOutcome>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DestOutcome {
    /// As written in the config (expanded), its password redacted.
    pub destination: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes written there (backup) or checked (drill).
    #[serde(default)]
    pub bytes: u64,
    /// The backup written (backup) or verified (drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Outcome {
    pub fn failed(error: impl Into<String>) -> Outcome {
        Outcome {
            ok: false,
            // It reaches the state file, notifications and the log.
            error: Some(redact(&error.into())),
            ..Outcome::default()
        }
    }

    /// Sets `ok` and `error` from the destinations.
    fn settle(mut self) -> Outcome {
        self.ok = !self.destinations.is_empty() && self.destinations.iter().all(|d| d.ok);
        if self.error.is_none() {
            let failed: Vec<String> = self
                .destinations
                .iter()
                .filter(|d| !d.ok)
                .map(|d| {
                    format!(
                        "{}: {}",
                        d.destination,
                        d.error.as_deref().unwrap_or("failed")
                    )
                })
                .collect();
            if !failed.is_empty() {
                self.error = Some(failed.join("; "));
            }
        }
        self
    }
}

/// `cairn internal-job`: config text on stdin, outcome on stdout.
pub fn child_main(config_path: PathBuf, database: &str, kind: Kind, rt: &Runtime) -> Result<()> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the config from stdin")?;
    let cfg = config::parse(&text, &config_path).map_err(|p| anyhow!("{p}"))?;
    let db = cfg
        .databases
        .iter()
        .find(|d| d.name == database)
        .ok_or_else(|| anyhow!("no database named {database:?} in the config"))?;
    let out = match kind {
        Kind::Backup => run_backup(&cfg, db, rt),
        Kind::Drill => run_drill(&cfg, db, rt),
    }
    .unwrap_or_else(|e| Outcome::failed(format!("{e:#}")));
    cli::print_json(&out)
}

fn temp_dir(cfg: &Config) -> PathBuf {
    cfg.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// A backup of one database to all its destinations (fan-out), then the
/// retention policy on each destination that succeeded.
pub fn run_backup(cfg: &Config, db: &Database, rt: &Runtime) -> Result<Outcome> {
    let opts = BackupOptions {
        source: db.source.backup_source(),
        key: db.key.load()?,
        compression: db
            .codec
            .compression(db.level)
            .map_err(|e| anyhow!("level {e}"))?,
        chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
        engine: EngineKind::Native,
        temp_dir: temp_dir(cfg),
        progress: false,
        prune: db.retention.clone(),
        lock_timeout: db.lock_timeout,
    };
    // Outcomes in the config's order, whether a destination failed to open
    // or in the backup.
    let mut slots: Vec<Option<DestOutcome>> = vec![None; db.destinations.len()];
    let mut dests = Vec::new();
    let mut opened = Vec::new();
    for (i, d) in db.destinations.iter().enumerate() {
        match cli::open_dest(d, rt) {
            Ok(x) => {
                dests.push(x);
                opened.push(i);
            }
            Err(e) => {
                slots[i] = Some(DestOutcome {
                    destination: redact(d),
                    error: Some(redact(&format!("{e:#}"))),
                    ..DestOutcome::default()
                })
            }
        }
    }
    let mut outcome = Outcome::default();
    if !dests.is_empty() {
        match backup::run(&dests, &opts) {
            Ok(r) => {
                outcome.id = Some(r.id.clone());
                outcome.bytes = r.stored_size;
                for (&i, d) in opened.iter().zip(&r.destinations) {
                    // Backed up, but the prune after it failed: a failure to report.
                    let prune_err = d.error.clone().filter(|_| d.ok);
                    slots[i] = Some(DestOutcome {
                        destination: redact(&db.destinations[i]),
                        ok: d.ok && prune_err.is_none(),
                        error: if d.ok { prune_err } else { d.error.clone() },
                        bytes: if d.ok { r.stored_size } else { 0 },
                        id: d.ok.then(|| r.id.clone()),
                    });
                }
            }
            Err(e) => {
                // A failure of the source or of every destination.
                let msg = redact(&format!("{e:#}"));
                outcome.error = Some(msg.clone());
                for &i in &opened {
                    slots[i] = Some(DestOutcome {
                        destination: redact(&db.destinations[i]),
                        error: Some(msg.clone()),
                        ..DestOutcome::default()
                    });
                }
            }
        }
    }
    outcome.destinations = slots.into_iter().flatten().collect();
    Ok(outcome.settle())
}

/// A restore drill: the newest backup of this database in each destination,
/// verified in the sandbox (checksums, decode, integrity_check).
pub fn run_drill(cfg: &Config, db: &Database, rt: &Runtime) -> Result<Outcome> {
    let key = db.key.load()?;
    let name = db.source.catalog_name();
    let mut outcome = Outcome::default();
    for d in &db.destinations {
        let started = Instant::now();
        let r = cli::open_dest(d, rt).and_then(|dest| {
            // The run's own timeout bounds it; the sandbox keeps its limits
            // sized to each database.
            let opts = VerifyOptions {
                id: None,
                db: Some(name.clone()),
                all: false,
                key: key.clone(),
                sandbox: true,
                host_crypto: true,
                memory: None,
                timeout: None,
                temp_dir: temp_dir(cfg),
                progress: false,
                download_first: false,
                record: true,
            };
            verify::run(&dest, &opts)
        });
        let one = match r {
            Ok(results) => match results.into_iter().next() {
                Some(v) => DestOutcome {
                    destination: redact(d),
                    ok: v.ok,
                    error: v.error.map(|e| redact(&e)),
                    bytes: v.size,
                    id: Some(v.id),
                },
                None => DestOutcome {
                    destination: redact(d),
                    error: Some("no backup to check".into()),
                    ..DestOutcome::default()
                },
            },
            Err(e) => DestOutcome {
                destination: redact(d),
                error: Some(redact(&format!("{e:#}"))),
                ..DestOutcome::default()
            },
        };
        tracing::debug!(destination = %redact(d), ok = one.ok, seconds = started.elapsed().as_secs_f64(), "drill checked");
        outcome.destinations.push(one);
    }
    Ok(outcome.settle())
}
