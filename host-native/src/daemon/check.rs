//! `cairn config check`: every problem in a config file at once, each with
//! its path; with `--connect`, also whether each destination and SMTP
//! server can be reached (webhooks are not called: that would notify).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::config::{self, Config, Problem, Problems, RouteKind, Source};
use crate::{cli, repo};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct JsonProblem<'a> {
    path: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    file: String,
    problems: Vec<JsonProblem<'a>>,
}

/// All problems of the file: `Ok(())` if none.
pub fn check(file: &Path, connect: bool, rt: &tokio::runtime::Runtime) -> Result<(), Problems> {
    let text = std::fs::read_to_string(file).map_err(|e| Problems {
        file: file.to_path_buf(),
        list: vec![Problem {
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let cfg = config::parse_with(&text, file, true)?;
    if !connect {
        return Ok(());
    }
    let list = reach(&cfg, rt);
    if list.is_empty() {
        Ok(())
    } else {
        Err(Problems {
            file: file.to_path_buf(),
            list,
        })
    }
}

/// `--connect`: reads each destination's catalog and greets each SMTP server.
fn reach(cfg: &Config, rt: &tokio::runtime::Runtime) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, db) in cfg.databases.iter().enumerate() {
        for (j, d) in db.destinations.iter().enumerate() {
            let d2 = d.clone();
            let handle = rt.handle().clone();
            // A thread of its own (not the blocking pool, which the runtime
            // waits for at exit), so a server that hangs costs only the timeout.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let r = crate::storage::Location::parse(&d2)
                    .and_then(|l| crate::storage::Dest::open(&l, &handle))
                    .and_then(|dest| repo::load(&dest).map(|_| ()));
                let _ = tx.send(r);
            });
            let r = rt.block_on(async move {
                match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(anyhow!("the check ended without a result")),
                    Err(_) => Err(anyhow!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
                }
            });
            if let Err(e) = r {
                out.push(Problem {
                    path: format!("databases[{i}].destinations[{j}]"),
                    message: crate::storage::url::redact(&format!("cannot reach {d}: {e:#}")),
                });
            }
        }
        if let Source::Postgres(_) = db.source {
            tracing::warn!(
                "databases[{i}].source: --connect does not log in to PostgreSQL; `cairn run-once` does"
            );
        }
    }
    for r in &cfg.routes {
        if let RouteKind::Email(s) = &r.kind
            && let Err(e) =
                rt.block_on(super::notify::check_smtp(s, r.timeout.min(CONNECT_TIMEOUT)))
        {
            out.push(Problem {
                path: format!("notifications.{}", r.name),
                message: format!("{e:#}"),
            });
        }
    }
    out
}

pub fn cli(file: PathBuf, connect: bool, json: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    let r = check(&file, connect, rt);
    if json {
        let empty = Vec::new();
        let list = r.as_ref().err().map_or(&empty, |p| &p.list);
        cli::print_json(&Report {
            ok: r.is_ok(),
            file: file.display().to_string(),
            problems: list
                .iter()
                .map(|p| JsonProblem {
                    path: &p.path,
                    message: &p.message,
                })
                .collect(),
        })?;
    }
    match r {
        Ok(()) => {
            if !json {
                println!(
                    "{}: ok{}",
                    file.display(),
                    if connect {
                        " (destinations and SMTP servers reached)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        Err(p) => Err(anyhow!("{p}")),
    }
}
