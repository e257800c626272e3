//! `cairn daemon`: the long-lived scheduler. Each database's backups (and
//! restore drills) run on their schedules, each in a child process with a
//! deadline; never two runs of one job at once; at most `max_parallel`
//! runs at a time; jobs missed while the daemon was down run once at
//! start-up. SIGTERM/SIGINT: no new runs, running ones get the grace period,
//! then are stopped; exit 0. SIGHUP: reload the config (an invalid one is
//! refused and the running one kept). Databases with `replicate = true`
//! also get a continuous replicator in this process ([`replication`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::config::{self, Config, Route};
use super::job::{Kind, Outcome};
use super::metrics::Metrics;
use super::notify::Notifier;
use super::replication::Replicators;
use super::schedule::{Schedule, rfc3339};
use super::{logging, record, runner, state};
use crate::storage::now_ms;

type Key = (String, Kind);

struct Done {
    key: Key,
    outcome: Outcome,
    seconds: f64,
    routes: Vec<Route>,
}

/// Reads the config for the daemon or run-once: the text too, for the
/// job processes. Invalid: every problem in one error.
pub fn load(path: &Path) -> Result<(Config, Arc<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let cfg = config::parse(&text, path).map_err(|p| anyhow!("{p}"))?;
    Ok((cfg, Arc::new(text)))
}

pub fn cli(config_file: PathBuf, rt: &tokio::runtime::Runtime) -> Result<()> {
    let (cfg, text) = load(&config_file)?;
    logging::init(&cfg.log_level, cfg.log_format);
    rt.block_on(Daemon::new(config_file, cfg, text).run())
}

fn schedule_of<'a>(cfg: &'a Config, key: &Key) -> Option<(&'a Schedule, Duration)> {
    let db = cfg.databases.iter().find(|d| d.name == key.0)?;
    match key.1 {
        Kind::Backup => Some((&db.schedule, db.timeout)),
        Kind::Drill => db.verify.as_ref().map(|v| (&v.schedule, v.timeout)),
    }
}

fn jobs(cfg: &Config) -> Vec<Key> {
    let mut v = Vec::new();
    for d in &cfg.databases {
        v.push((d.name.clone(), Kind::Backup));
        if d.verify.is_some() {
            v.push((d.name.clone(), Kind::Drill));
        }
    }
    v
}

/// When each job is next due, from the state file's record of its last start.
fn due_times(cfg: &Config, st: &state::State, now: i64) -> BTreeMap<Key, i64> {
    jobs(cfg)
        .into_iter()
        .filter_map(|k| {
            let (s, _) = schedule_of(cfg, &k)?;
            let db = st.databases.get(&k.0);
            let last = match k.1 {
                Kind::Backup => db.and_then(|d| d.last_start_ms),
                Kind::Drill => db.and_then(|d| d.last_drill_start_ms),
            };
            Some((k, s.next_due(last, now)))
        })
        .collect()
}

struct Daemon {
    file: PathBuf,
    cfg: Config,
    text: Arc<String>,
    due: BTreeMap<Key, i64>,
    running: HashMap<Key, i64>,
    waiting_logged: std::collections::HashSet<Key>,
    notifier: Notifier,
    metrics: Arc<Mutex<Metrics>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    abort_tx: watch::Sender<bool>,
    replicators: Replicators,
}

impl Daemon {
    fn new(file: PathBuf, cfg: Config, text: Arc<String>) -> Daemon {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (abort_tx, _) = watch::channel(false);
        let replicators = Replicators::new(&cfg.state_dir);
        Daemon {
            replicators,
            file,
            cfg,
            text,
            due: BTreeMap::new(),
            running: HashMap::new(),
            waiting_logged: Default::default(),
            notifier: Notifier::default(),
            metrics: Arc::new(Mutex::new(Metrics::new())),
            done_tx,
            done_rx,
            abort_tx,
        }
    }

    async fn run(mut self) -> Result<()> {
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        if let Some(addr) = self.cfg.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (daemon.metrics_listen)"))?;
            tracing::info!("metrics on http://{addr}/metrics");
            tokio::spawn(super::metrics::serve(l, self.metrics.clone()));
        }
        let st = state::load(&self.cfg.state_dir).unwrap_or_else(|e| {
            tracing::error!("{e:#}; treating every job as never run");
            state::State::default()
        });
        self.due = due_times(&self.cfg, &st, now_ms());
        tracing::info!(
            config = %self.file.display(),
            databases = self.cfg.databases.len(),
            state_dir = %self.cfg.state_dir.display(),
            "cairn daemon started"
        );
        self.log_schedule();
        self.replicators.apply(&self.cfg).await;
        loop {
            let wake = self.start_due();
            // Replicators are looked after every second (their state, restarts).
            let most = if self.replicators.is_empty() {
                60_000
            } else {
                1_000
            };
            let sleep = Duration::from_millis(wake.saturating_sub(now_ms()).clamp(10, most) as u64);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(d) = self.done_rx.recv() => self.finish(d),
                _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
                _ = int.recv() => { tracing::info!("SIGINT received"); break; }
                _ = hup.recv() => self.reload().await,
            }
            self.replicators
                .tick(&mut self.notifier, &self.metrics)
                .await;
        }
        self.shutdown(&mut term, &mut int).await;
        Ok(())
    }

    fn log_schedule(&self) {
        let now = now_ms();
        for ((db, kind), t) in &self.due {
            let when = if *t <= now {
                "now".to_string()
            } else {
                rfc3339(*t)
            };
            let sched = schedule_of(&self.cfg, &(db.clone(), *kind))
                .map(|(s, _)| s.describe())
                .unwrap_or_default();
            tracing::info!(database = %db, job = kind.as_str(), schedule = %sched, "next run {when}");
        }
    }

    /// Starts what is due; returns when to look again.
    fn start_due(&mut self) -> i64 {
        let now = now_ms();
        let mut ready: Vec<(i64, Key)> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, t)| (*t, k.clone()))
            .collect();
        ready.sort();
        for (_, key) in ready {
            let Some((sched, timeout)) = schedule_of(&self.cfg, &key) else {
                self.due.remove(&key);
                continue;
            };
            let next = sched.next_after(now).unwrap_or(i64::MAX);
            if let Some(started) = self.running.get(&key) {
                tracing::warn!(
                    database = %key.0,
                    job = key.1.as_str(),
                    "skipped: the previous run (started {}) is still going",
                    rfc3339(*started)
                );
                self.due.insert(key, next);
                continue;
            }
            if self.running.len() >= self.cfg.max_parallel {
                if self.waiting_logged.insert(key.clone()) {
                    tracing::info!(
                        database = %key.0,
                        job = key.1.as_str(),
                        "due; waiting for a free slot (max_parallel = {})",
                        self.cfg.max_parallel
                    );
                }
                continue;
            }
            self.waiting_logged.remove(&key);
            self.due.insert(key.clone(), next);
            self.spawn(key, timeout, now);
        }
        // Jobs waiting for a slot wake on a finished run; the caller caps
        // the sleep anyway, in case the clock jumps.
        self.due
            .values()
            .filter(|t| **t > now)
            .min()
            .copied()
            .unwrap_or(now + 60_000)
    }

    fn spawn(&mut self, key: Key, timeout: Duration, now: i64) {
        record::started(&self.cfg, &key.0, key.1, now);
        self.running.insert(key.clone(), now);
        tracing::info!(database = %key.0, job = key.1.as_str(), "{} started", key.1.as_str());
        let routes: Vec<Route> = self
            .cfg
            .databases
            .iter()
            .find(|d| d.name == key.0)
            .map(|d| record::routes(&self.cfg, d).into_iter().cloned().collect())
            .unwrap_or_default();
        let text = self.text.clone();
        let file = self.file.clone();
        let tx = self.done_tx.clone();
        let abort = self.abort_tx.subscribe();
        tokio::spawn(async move {
            let spec = runner::Spec {
                config_text: &text,
                config_file: &file,
                database: &key.0,
                kind: key.1,
                timeout,
            };
            let (outcome, seconds) = runner::run(spec, abort).await;
            let _ = tx.send(Done {
                key,
                outcome,
                seconds,
                routes,
            });
        });
    }

    fn finish(&mut self, d: Done) {
        self.running.remove(&d.key);
        let routes: Vec<&Route> = d.routes.iter().collect();
        record::finished(
            &self.cfg,
            &routes,
            record::Finished {
                database: &d.key.0,
                kind: d.key.1,
                outcome: &d.outcome,
                seconds: d.seconds,
                end_ms: now_ms(),
            },
            Some(&self.metrics),
            &mut self.notifier,
        );
    }

    async fn reload(&mut self) {
        tracing::info!(config = %self.file.display(), "SIGHUP: reloading the config");
        let (cfg, text) = match load(&self.file) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("the new config is invalid; keeping the running one: {e:#}");
                return;
            }
        };
        let st = state::load(&cfg.state_dir).unwrap_or_default();
        let fresh = due_times(&cfg, &st, now_ms());
        let mut due = BTreeMap::new();
        for (k, t) in fresh {
            // A job whose schedule did not change keeps its slot.
            let same = schedule_of(&self.cfg, &k)
                .zip(schedule_of(&cfg, &k))
                .is_some_and(|((a, _), (b, _))| a.describe() == b.describe());
            match self.due.get(&k) {
                Some(old) if same => due.insert(k, *old),
                _ => due.insert(k, t),
            };
        }
        if cfg.metrics_listen != self.cfg.metrics_listen
            || cfg.log_level != self.cfg.log_level
            || cfg.log_format != self.cfg.log_format
        {
            tracing::warn!("daemon.metrics_listen and the log settings apply at the next restart");
        }
        self.cfg = cfg;
        self.text = text;
        self.due = due;
        tracing::info!(databases = self.cfg.databases.len(), "config reloaded");
        self.log_schedule();
        self.replicators.apply(&self.cfg).await;
    }

    async fn shutdown(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) {
        // Replicators first: they stop within an interval, shipping what
        // is committed, and release their leases.
        self.replicators.shutdown().await;
        let grace = self.cfg.shutdown_grace;
        if !self.running.is_empty() {
            tracing::info!(
                running = self.running.len(),
                "stopping: letting running jobs finish (at most {})",
                humantime::format_duration(grace)
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        let mut aborted = false;
        while !self.running.is_empty() {
            tokio::select! {
                Some(d) = self.done_rx.recv() => self.finish(d),
                _ = tokio::time::sleep_until(deadline), if !aborted => {
                    tracing::warn!(running = self.running.len(), "grace period over: stopping the running jobs");
                    let _ = self.abort_tx.send(true);
                    aborted = true;
                }
                _ = term.recv(), if !aborted => {
                    tracing::warn!("second signal: stopping the running jobs now");
                    let _ = self.abort_tx.send(true);
                    aborted = true;
                }
                _ = int.recv(), if !aborted => {
                    tracing::warn!("second signal: stopping the running jobs now");
                    let _ = self.abort_tx.send(true);
                    aborted = true;
                }
            }
        }
        self.notifier.drain(Duration::from_secs(15)).await;
        tracing::info!("cairn daemon stopped");
    }
}
