//! What happens after a run, shared by `cairn daemon` and `cairn run-once`:
//! the log line, the state file, the metrics and the notification.

use super::config::{Config, Database, Route};
use super::job::{Kind, Outcome};
use super::metrics::Metrics;
use super::notify::{Event, Notifier};
use super::state;

/// The routes a database reports to.
pub fn routes<'a>(cfg: &'a Config, db: &Database) -> Vec<&'a Route> {
    cfg.routes
        .iter()
        .filter(|r| db.notify.contains(&r.name))
        .collect()
}

/// Notes in the state file that a job started (for missed-run detection).
pub fn started(cfg: &Config, db: &str, kind: Kind, start_ms: i64) {
    let r = state::update(&cfg.state_dir, |s| {
        let e = s.databases.entry(db.to_string()).or_default();
        match kind {
            Kind::Backup => e.last_start_ms = Some(start_ms),
            Kind::Drill => e.last_drill_start_ms = Some(start_ms),
        }
    });
    if let Err(e) = r {
        tracing::error!("cannot record the start of a run: {e:#}");
    }
}

pub struct Finished<'a> {
    pub database: &'a str,
    pub kind: Kind,
    pub outcome: &'a Outcome,
    pub seconds: f64,
    pub end_ms: i64,
}

/// Logs, records and notifies one finished run. Notifications go out on
/// background tasks: this returns at once.
pub fn finished(
    cfg: &Config,
    routes: &[&Route],
    f: Finished<'_>,
    metrics: Option<&std::sync::Mutex<Metrics>>,
    notifier: &mut Notifier,
) {
    let o = f.outcome;
    let job = f.kind.as_str();
    if o.ok {
        tracing::info!(
            database = f.database,
            job,
            id = o.id.as_deref().unwrap_or(""),
            bytes = o.bytes,
            seconds = f.seconds,
            destinations = o.destinations.len(),
            "{job} succeeded"
        );
    } else {
        tracing::error!(
            database = f.database,
            job,
            seconds = f.seconds,
            "{job} failed: {}",
            o.error.as_deref().unwrap_or("unknown error")
        );
    }
    let r = state::update(&cfg.state_dir, |s| {
        let e = s.databases.entry(f.database.to_string()).or_default();
        match f.kind {
            Kind::Backup => {
                let run = state::Run {
                    time_ms: f.end_ms,
                    seconds: f.seconds,
                    outcome: o.clone(),
                };
                if o.ok {
                    e.last_success = Some(run);
                } else {
                    e.last_failure = Some(run);
                }
            }
            Kind::Drill => {
                for d in &o.destinations {
                    let ds = e.drills.entry(d.destination.clone()).or_default();
                    if d.ok {
                        ds.last_pass_ms = Some(f.end_ms);
                        ds.last_pass_id = d.id.clone();
                    } else {
                        ds.last_failure_ms = Some(f.end_ms);
                        ds.last_error = d.error.clone();
                    }
                }
                if o.destinations.is_empty()
                    && let Some(err) = &o.error
                {
                    // The drill could not even start (e.g. the key): every
                    // destination failed it.
                    for d in cfg
                        .databases
                        .iter()
                        .filter(|d| d.name == f.database)
                        .flat_map(|d| d.destinations.iter())
                    {
                        let ds = e.drills.entry(d.clone()).or_default();
                        ds.last_failure_ms = Some(f.end_ms);
                        ds.last_error = Some(err.clone());
                    }
                }
            }
        }
    });
    if let Err(e) = r {
        tracing::error!("cannot record the run in the state file: {e:#}");
    }
    if let Some(m) = metrics
        && let Ok(m) = m.lock()
    {
        m.record(f.kind, f.database, o, f.seconds, f.end_ms);
    }
    notifier.send(
        routes,
        &Event::new(f.kind, f.database, o, f.seconds, f.end_ms),
    );
}
