//! `cairn status`: for each configured database, its last success, last
//! failure and next run (from the state file), and the newest backup in
//! each destination with its size and age, read from the destination
//! itself, plus when that destination last passed a restore drill. The
//! databases of a `[[directories]]` entry (replicated only) are listed as
//! `NAME/FILE`: those in the directory now, and those whose replicator
//! is recorded as still running.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::config::{Config, Directory, Source};
use super::schedule::rfc3339;
use super::{serve, state};
use crate::storage::now_ms;
use crate::storage::url::redact;
use crate::{cli, repo};

#[derive(Serialize)]
struct DbStatus {
    database: String,
    /// The `[[directories]]` entry it was found by (null for `[[databases]]`).
    directory: Option<String>,
    source: String,
    schedule: String,
    next_run: String,
    last_success: Option<RunView>,
    last_failure: Option<RunView>,
    verify_schedule: Option<String>,
    next_drill: Option<String>,
    /// `replicate = true`: the daemon's replicator, as it last recorded
    /// (null when the database does not replicate).
    replication: Option<ReplicationView>,
    destinations: Vec<DestStatus>,
}

#[derive(Serialize)]
struct ReplicationView {
    /// starting, running, retrying, stopping, stopped, failed; or
    /// "not started" (no record yet) or "stale" (the daemon that
    /// recorded it is gone without recording its stop).
    state: String,
    generation: Option<String>,
    shipped_txid: u64,
    last_shipped: Option<String>,
    error: Option<String>,
    since: Option<String>,
    updated_at: Option<String>,
}

fn replication_view(r: Option<&state::ReplicationState>) -> ReplicationView {
    let Some(r) = r else {
        return ReplicationView {
            state: "not started".into(),
            generation: None,
            shipped_txid: 0,
            last_shipped: None,
            error: None,
            since: None,
            updated_at: None,
        };
    };
    // SAFETY: signal 0 only asks whether the process exists.
    let gone = unsafe { libc::kill(r.pid as libc::pid_t, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    let state = if r.status.is_live() && gone {
        "stale".to_string()
    } else {
        r.status.state.as_str().to_string()
    };
    ReplicationView {
        state,
        generation: r.status.generation.clone(),
        shipped_txid: r.status.shipped_txid,
        last_shipped: r.status.last_shipped_at_ms.map(rfc3339),
        error: r.status.error.as_deref().map(redact),
        since: Some(rfc3339(r.started_at_ms)),
        updated_at: Some(rfc3339(r.updated_at_ms)),
    }
}

#[derive(Serialize)]
struct RunView {
    time: String,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct DestStatus {
    destination: String,
    newest: Option<Newest>,
    /// Why the destination could not be read.
    error: Option<String>,
    last_drill_pass: Option<String>,
    last_drill_pass_id: Option<String>,
    last_drill_failure: Option<String>,
    last_drill_error: Option<String>,
    #[serde(skip)]
    drill_failed_since_pass: bool,
}

#[derive(Serialize)]
struct Newest {
    id: String,
    created_at: String,
    age_seconds: i64,
    stored_size: u64,
}

fn run_view(r: &state::Run) -> RunView {
    RunView {
        time: rfc3339(r.time_ms),
        seconds: r.seconds,
        id: r.outcome.id.clone(),
        bytes: r.outcome.bytes,
        error: r.outcome.error.clone(),
    }
}

fn describe_source(s: &Source) -> String {
    match s {
        Source::Sqlite(p) => p.display().to_string(),
        // Never the password.
        Source::Postgres(pg) => format!(
            "postgres://{}@{}:{}/{}",
            pg.user, pg.host, pg.port, pg.database
        ),
    }
}

/// The newest backup (or replica snapshot) of the database named `name` in
/// its catalog.
fn newest(name: &str, dest: &str, rt: &tokio::runtime::Runtime) -> Result<Option<Newest>> {
    let d = cli::open_dest(dest, rt)?;
    let loaded = repo::load(&d)?;
    Ok(loaded.state.newest(Some(name)).map(|e| Newest {
        id: e.id.clone(),
        created_at: e.created_at.clone(),
        age_seconds: (now_ms() - e.created_at_ms) / 1000,
        stored_size: e.stored_size,
    }))
}

/// Each destination's newest backup of `name` and its drills.
fn dest_status(
    name: &str,
    dests: &[String],
    s: &state::DbState,
    rt: &tokio::runtime::Runtime,
) -> Vec<DestStatus> {
    dests
        .iter()
        .map(|dest| {
            let (newest, error) = match newest(name, dest, rt) {
                Ok(n) => (n, None),
                Err(e) => (None, Some(redact(&format!("{e:#}")))),
            };
            // Outcomes (and so the drill records) carry the redacted URL.
            let drill = s.drills.get(&redact(dest)).cloned().unwrap_or_default();
            DestStatus {
                destination: redact(dest),
                newest,
                error,
                last_drill_pass: drill.last_pass_ms.map(rfc3339),
                last_drill_pass_id: drill.last_pass_id,
                last_drill_failure: drill.last_failure_ms.map(rfc3339),
                last_drill_error: drill.last_error,
                drill_failed_since_pass: drill.last_failure_ms > drill.last_pass_ms,
            }
        })
        .collect()
}

/// The databases of a `[[directories]]` entry: those the directory holds
/// now (in WAL mode, as the daemon picks them) and those recorded as
/// replicating still (a removed one's replicator not yet stopped).
fn directory_status(
    d: &Directory,
    st: &state::State,
    rt: &tokio::runtime::Runtime,
) -> Vec<DbStatus> {
    let prefix = format!("{}/", d.name);
    let mut names: BTreeSet<String> = st
        .databases
        .iter()
        .filter(|(k, v)| {
            k.starts_with(&prefix) && v.replication.as_ref().is_some_and(|r| r.status.is_live())
        })
        .map(|(k, _)| k[prefix.len()..].to_string())
        .collect();
    if let Ok(found) = crate::replicate::dir::scan(&d.dir, &d.pattern) {
        names.extend(
            crate::replicate::dir::wanted(&found)
                .0
                .into_iter()
                .map(|f| f.name),
        );
    }
    names
        .into_iter()
        .map(|file| {
            let name = format!("{prefix}{file}");
            let s = st.databases.get(&name).cloned().unwrap_or_default();
            DbStatus {
                destinations: dest_status(&file, &d.destinations, &s, rt),
                database: name,
                directory: Some(d.name.clone()),
                source: d.dir.join(&file).display().to_string(),
                schedule: "no scheduled backups (replicated continuously)".into(),
                next_run: "none".into(),
                last_success: None,
                last_failure: None,
                verify_schedule: None,
                next_drill: None,
                replication: Some(replication_view(s.replication.as_ref())),
            }
        })
        .collect()
}

fn status(cfg: &Config, st: &state::State, rt: &tokio::runtime::Runtime) -> Vec<DbStatus> {
    let now = now_ms();
    let mut list: Vec<DbStatus> = cfg
        .databases
        .iter()
        .map(|db| {
            let s = st.databases.get(&db.name).cloned().unwrap_or_default();
            let next = db.schedule.next_due(s.last_start_ms, now);
            let destinations = dest_status(&db.source.catalog_name(), &db.destinations, &s, rt);
            DbStatus {
                directory: None,
                database: db.name.clone(),
                source: describe_source(&db.source),
                schedule: db.schedule.describe(),
                next_run: if next <= now {
                    "now (due)".into()
                } else {
                    rfc3339(next)
                },
                last_success: s.last_success.as_ref().map(run_view),
                last_failure: s.last_failure.as_ref().map(run_view),
                verify_schedule: db.verify.as_ref().map(|v| v.schedule.describe()),
                next_drill: db.verify.as_ref().map(|v| {
                    let t = v.schedule.next_due(s.last_drill_start_ms, now);
                    if t <= now {
                        "now (due)".into()
                    } else {
                        rfc3339(t)
                    }
                }),
                replication: db
                    .replicate
                    .then(|| replication_view(s.replication.as_ref())),
                destinations,
            }
        })
        .collect();
    for d in &cfg.directories {
        list.extend(directory_status(d, st, rt));
    }
    list
}

fn age(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// The scheduled backups' lines of a `[[databases]]` entry.
fn print_runs(d: &DbStatus) {
    println!("  next run:      {}", d.next_run);
    match &d.last_success {
        Some(r) => println!(
            "  last success:  {}  {} ({}) in {:.1}s",
            r.time,
            r.id.as_deref().unwrap_or(""),
            cli::mib(r.bytes),
            r.seconds
        ),
        None => println!("  last success:  never"),
    }
    match &d.last_failure {
        Some(r) => println!(
            "  last failure:  {}  {}",
            r.time,
            r.error.as_deref().unwrap_or("")
        ),
        None => println!("  last failure:  never"),
    }
}

pub fn cli(config_file: PathBuf, json: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, _) = serve::load(&config_file)?;
    let st = state::load(&cfg.state_dir)?;
    let list = status(&cfg, &st, rt);
    if json {
        return cli::print_json(&list);
    }
    for d in &list {
        println!("{}  ({}; {})", d.database, d.source, d.schedule);
        if d.directory.is_none() {
            print_runs(d);
        }
        if let (Some(s), Some(n)) = (&d.verify_schedule, &d.next_drill) {
            println!("  drills:        {s}; next {n}");
        }
        if let Some(r) = &d.replication {
            let mut line = r.state.clone();
            if let Some(g) = &r.generation {
                line += &format!(", generation {g}, txid {} shipped", r.shipped_txid);
            }
            if let Some(t) = &r.last_shipped {
                line += &format!(" (last {t})");
            }
            if let Some(e) = &r.error {
                line += &format!(": {e}");
            }
            if let Some(u) = &r.updated_at {
                line += &format!("; as of {u}");
            }
            println!("  replication:   {line}");
        }
        for x in &d.destinations {
            let newest = match (&x.newest, &x.error) {
                (Some(n), _) => format!(
                    "newest {} ({}, {} old)",
                    n.id,
                    cli::mib(n.stored_size),
                    age(n.age_seconds)
                ),
                (None, Some(e)) => format!("cannot read: {e}"),
                (None, None) => "no backup yet".to_string(),
            };
            println!("  {}  {newest}", x.destination);
            match (&x.last_drill_pass, &x.last_drill_failure) {
                (Some(p), Some(f)) if x.drill_failed_since_pass => println!(
                    "      drill passed {p}; FAILED since {f}: {}",
                    x.last_drill_error.as_deref().unwrap_or("")
                ),
                (Some(p), _) => println!("      drill passed {p}"),
                (None, Some(f)) => println!(
                    "      drill FAILED {f}: {}",
                    x.last_drill_error.as_deref().unwrap_or("")
                ),
                (None, None) => {}
            }
        }
    }
    Ok(())
}
