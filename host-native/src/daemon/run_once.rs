//! `cairn run-once`: run the configured jobs now (all, or those named),
//! exactly as the daemon would — child process, timeout, state file,
//! notifications — then exit; non-zero if any failed. For cron users and tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use super::job::{Kind, Outcome};
use super::notify::Notifier;
use super::{logging, record, runner, serve};
use crate::storage::now_ms;

#[derive(Serialize)]
struct Report<'a> {
    database: &'a str,
    job: &'static str,
    seconds: f64,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

pub fn cli(
    config_file: PathBuf,
    names: Vec<String>,
    verify: bool,
    json: bool,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let (cfg, text) = serve::load(&config_file)?;
    logging::init(&cfg.log_level, cfg.log_format);
    for n in &names {
        if !cfg.databases.iter().any(|d| &d.name == n) {
            let known: Vec<&str> = cfg.databases.iter().map(|d| d.name.as_str()).collect();
            bail!(
                "no database named {n:?} in {} (it has: {})",
                config_file.display(),
                known.join(", ")
            );
        }
    }
    let kind = if verify { Kind::Drill } else { Kind::Backup };
    let selected: Vec<_> = cfg
        .databases
        .iter()
        .filter(|d| names.is_empty() || names.contains(&d.name))
        .collect();
    let results = rt.block_on(async {
        let sem = Arc::new(Semaphore::new(cfg.max_parallel));
        // Nothing aborts a run-once run but its timeout (Ctrl-C kills the
        // whole process, and the job processes die with it).
        let (_abort_tx, abort_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, db) in selected.iter().enumerate() {
            let timeout: Duration = match kind {
                Kind::Backup => db.timeout,
                Kind::Drill => db.verify.as_ref().map_or(db.timeout, |v| v.timeout),
            };
            let (sem, text, file, name, abort) = (
                sem.clone(),
                text.clone(),
                config_file.clone(),
                db.name.clone(),
                abort_rx.clone(),
            );
            record::started(&cfg, &db.name, kind, now_ms());
            tasks.spawn(async move {
                let _permit = sem.acquire().await;
                let spec = runner::Spec {
                    config_text: text.as_str(),
                    config_file: &file,
                    database: &name,
                    kind,
                    timeout,
                };
                (i, runner::run(spec, abort).await)
            });
        }
        let mut notifier = Notifier::default();
        let mut results = vec![None; selected.len()];
        while let Some(Ok((i, (out, secs)))) = tasks.join_next().await {
            let db = selected[i];
            record::finished(
                &cfg,
                &record::routes(&cfg, db),
                record::Finished {
                    database: &db.name,
                    kind,
                    outcome: &out,
                    seconds: secs,
                    end_ms: now_ms(),
                },
                None,
                &mut notifier,
            );
            results[i] = Some((out, secs));
        }
        notifier.drain(Duration::from_secs(60)).await;
        results
    });
    let mut failed = 0;
    let mut reports = Vec::new();
    for (db, r) in selected.iter().zip(&results) {
        let Some((out, secs)) = r else {
            failed += 1;
            continue;
        };
        if !out.ok {
            failed += 1;
        }
        reports.push(Report {
            database: &db.name,
            job: kind.as_str(),
            seconds: *secs,
            outcome: out,
        });
    }
    if json {
        crate::cli::print_json(&reports)?;
    } else {
        for r in &reports {
            let o = r.outcome;
            if o.ok && r.job == "drill" {
                println!(
                    "ok      {}  drill: the newest backup passed in {} destination{} ({:.1}s)",
                    r.database,
                    o.destinations.len(),
                    if o.destinations.len() == 1 { "" } else { "s" },
                    r.seconds
                );
            } else if o.ok {
                println!(
                    "ok      {}  {} {} to {} destination{} in {:.1}s",
                    r.database,
                    r.job,
                    o.id.as_deref().unwrap_or(""),
                    o.destinations.len(),
                    if o.destinations.len() == 1 { "" } else { "s" },
                    r.seconds
                );
            } else {
                println!(
                    "FAILED  {}  {}: {}",
                    r.database,
                    r.job,
                    o.error.as_deref().unwrap_or("failed")
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} jobs failed (see above)", selected.len());
    }
    Ok(())
}
