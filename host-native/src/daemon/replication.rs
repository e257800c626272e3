//! The daemon's continuous replicators (`replicate = true`, and one per
//! database found in a `[[directories]]` entry's directory, looked at every
//! `scan_interval`): run in the daemon's process beside the scheduled
//! backups. A replicator that fails (or keeps retrying a shipment for
//! [`ALERT_AFTER`]) is notified once, through the entry's routes, and its
//! recovery once; per-database metrics are kept up to date.
//! Started with the daemon, restarted after a failure (with a back-off) and
//! when a reload changed its settings, stopped gracefully (everything
//! committed shipped, the lease released) on SIGTERM/SIGINT or when a
//! reload removed it. Each one's state goes to the state file, where
//! `cairn status` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::replicate::config::ReplicatorConfig;
use crate::replicate::embed::{Replicator, ReplicatorHandle};
use crate::replicate::{LogTo, State, Status};
use crate::storage::now_ms;

use super::config::{Config, Database, Directory, Route, Source, Tuning};
use super::metrics::Metrics;
use super::notify::{Event, Notifier};
use super::state::{self, ReplicationState};

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the shipped position is written to the state file while
/// nothing else changes (not every shipment: that can be 20 a second).
const RECORD_EVERY: Duration = Duration::from_secs(10);
/// A shipment failing for this long is notified like a failed replicator.
pub const ALERT_AFTER: Duration = Duration::from_secs(60);

struct Slot {
    config: ReplicatorConfig,
    fingerprint: String,
    /// Where its failures and recovery are notified.
    routes: Vec<Route>,
    /// A failure was notified and no recovery yet.
    alerted: bool,
    /// Since when its shipments have been failing (state `retrying`).
    retrying_since: Option<Instant>,
    /// What the metrics counted of this run so far (segments, bytes, generation).
    counted: (u64, u64, Option<String>),
    handle: Option<ReplicatorHandle>,
    started_at_ms: i64,
    /// After a failure: when to start again.
    retry_at: Option<Instant>,
    backoff: Duration,
    recorded: Option<(State, Option<String>, Option<String>, u64)>,
    recorded_at: Instant,
}

pub struct Replicators {
    state_dir: PathBuf,
    slots: BTreeMap<String, Slot>,
    /// The configured directories, and when each was last looked at.
    dirs: Vec<(Directory, Option<Instant>)>,
    routes: Vec<Route>,
    /// What each directory's last look found to replicate.
    found: BTreeMap<String, Vec<(String, ReplicatorConfig)>>,
    /// Directory problems already logged (not WAL, name clashes).
    warned: BTreeMap<PathBuf, String>,
    temp_dir: Option<PathBuf>,
    /// Notifications and failure counts waiting for the next tick.
    outbox: Vec<(Vec<Route>, Event)>,
    failures: Vec<String>,
}

fn tune(c: &mut ReplicatorConfig, t: &Tuning) {
    if let Some(v) = t.interval {
        c.interval = v;
    }
    if let Some(v) = t.snapshot_interval {
        c.snapshot_interval = v;
    }
    if let Some(v) = t.wal_limit {
        c.wal_limit = v;
    }
    if let Some(v) = t.lease_ttl {
        c.lease_ttl = v;
    }
}

/// The replicators a directory entry wants now, named `NAME/FILE`.
fn scan_dir(
    d: &Directory,
    temp_dir: Option<&Path>,
    warned: &mut BTreeMap<PathBuf, String>,
) -> Option<Vec<(String, ReplicatorConfig)>> {
    use crate::replicate::dir;
    let found = match dir::scan(&d.dir, &d.pattern) {
        Ok(f) => f,
        Err(e) => {
            let m = format!("directories {}: {e:#}", d.name);
            if warned.get(&d.dir) != Some(&m) {
                tracing::error!("{m}; its replicators keep running, looking again");
            }
            warned.insert(d.dir.clone(), m);
            return None;
        }
    };
    warned.remove(&d.dir);
    let (ok, problems) = dir::wanted(&found);
    for (p, m) in problems {
        if warned.get(&p) != Some(&m) {
            tracing::warn!(directory = %d.name, "{m}");
        }
        warned.insert(p, m);
    }
    Some(
        ok.into_iter()
            .map(|f| {
                let mut c = ReplicatorConfig::new(f.path.clone(), d.destinations.clone());
                c.key = d.key.clone();
                c.codec = d.codec;
                c.level = d.level;
                c.temp_dir = temp_dir.map(Path::to_path_buf);
                tune(&mut c, &d.tuning);
                (format!("{}/{}", d.name, f.name), c)
            })
            .collect(),
    )
}

/// Whether `name` is a directory's database whose file is gone (or no
/// longer a WAL-mode database): its replicator ending is a stop.
fn removed(name: &str, c: &ReplicatorConfig) -> bool {
    name.contains('/')
        && crate::replicate::dir::kind_of(&c.source) != crate::replicate::dir::Kind::Wal
}

/// What the replicator of `db` runs with (`None`: it does not replicate).
pub fn config_for(db: &Database, temp_dir: Option<&Path>) -> Option<ReplicatorConfig> {
    let Source::Sqlite(p) = &db.source else {
        return None; // refused by the config check
    };
    if !db.replicate {
        return None;
    }
    let mut c = ReplicatorConfig::new(p.clone(), db.destinations.clone());
    c.key = db.key.clone();
    c.codec = db.replica_codec;
    c.level = db.replica_level;
    c.temp_dir = temp_dir.map(Path::to_path_buf);
    tune(&mut c, &db.tuning);
    Some(c)
}

impl Replicators {
    pub fn new(state_dir: &Path) -> Replicators {
        Replicators {
            state_dir: state_dir.to_path_buf(),
            slots: BTreeMap::new(),
            dirs: Vec::new(),
            routes: Vec::new(),
            found: BTreeMap::new(),
            warned: BTreeMap::new(),
            temp_dir: None,
            outbox: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.dirs.is_empty()
    }

    /// Brings the running set in line with `cfg`: starts new ones,
    /// restarts changed ones, stops removed ones.
    pub async fn apply(&mut self, cfg: &Config) {
        self.state_dir = cfg.state_dir.clone();
        self.dirs = cfg.directories.iter().map(|d| (d.clone(), None)).collect();
        self.found.clear();
        let mut wanted: BTreeMap<String, (ReplicatorConfig, Vec<Route>)> = BTreeMap::new();
        for d in &cfg.databases {
            if let Some(c) = config_for(d, cfg.temp_dir.as_deref()) {
                let routes = super::record::routes(cfg, d).into_iter().cloned().collect();
                wanted.insert(d.name.clone(), (c, routes));
            }
        }
        self.routes = cfg.routes.clone();
        self.temp_dir = cfg.temp_dir.clone();
        self.add_dirs(&mut wanted, true);
        self.reconcile(wanted).await;
    }

    /// Adds the directories' databases to `wanted`: from a new look at
    /// each whose scan interval is over (`all`: at each), else from the
    /// last look.
    fn add_dirs(
        &mut self,
        wanted: &mut BTreeMap<String, (ReplicatorConfig, Vec<Route>)>,
        all: bool,
    ) {
        for (d, last) in self.dirs.iter_mut() {
            if all || last.is_none_or(|t| t.elapsed() >= d.scan_interval) {
                *last = Some(Instant::now());
                if let Some(f) = scan_dir(d, self.temp_dir.as_deref(), &mut self.warned) {
                    self.found.insert(d.name.clone(), f);
                }
            }
            let routes: Vec<Route> = self
                .routes
                .iter()
                .filter(|r| d.notify.contains(&r.name))
                .cloned()
                .collect();
            for (name, c) in self.found.get(&d.name).into_iter().flatten() {
                wanted
                    .entry(name.clone())
                    .or_insert_with(|| (c.clone(), routes.clone()));
            }
        }
    }

    /// Starts, restarts and stops replicators so that `wanted` run.
    async fn reconcile(&mut self, wanted: BTreeMap<String, (ReplicatorConfig, Vec<Route>)>) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let same = wanted
                .get(&name)
                .is_some_and(|(w, _)| format!("{w:?}") == self.slots[&name].fingerprint);
            if !same {
                let why = if wanted.contains_key(&name) {
                    "its settings changed"
                } else if name.contains('/') {
                    "its database is gone from the directory"
                } else {
                    "it is no longer configured"
                };
                tracing::info!(database = %name, "stopping replication: {why}");
                let slot = self.slots.remove(&name).expect("listed");
                self.stop(&name, slot).await;
            }
        }
        for (name, (config, routes)) in wanted {
            if let Some(s) = self.slots.get_mut(&name) {
                s.routes = routes;
                continue;
            }
            let mut slot = Slot {
                fingerprint: format!("{config:?}"),
                config,
                routes,
                alerted: false,
                retrying_since: None,
                counted: (0, 0, None),
                handle: None,
                started_at_ms: 0,
                retry_at: None,
                backoff: FIRST_BACKOFF,
                recorded: None,
                recorded_at: Instant::now(),
            };
            self.start(&name, &mut slot);
            self.slots.insert(name, slot);
        }
    }

    fn start(&mut self, name: &str, slot: &mut Slot) {
        slot.started_at_ms = now_ms();
        slot.retry_at = None;
        slot.recorded = None;
        slot.counted = (0, 0, None);
        slot.retrying_since = None;
        match Replicator::spawn(slot.config.clone(), LogTo::Tracing) {
            Ok(h) => {
                tracing::info!(database = %name, "replication starting");
                slot.handle = Some(h);
            }
            Err(e) => self.failed(name, slot, Status::default(), format!("{e:#}")),
        }
    }

    fn failed(&mut self, name: &str, slot: &mut Slot, mut status: Status, error: String) {
        tracing::error!(
            database = %name,
            "replication failed: {error}; starting again in {}",
            humantime::format_duration(slot.backoff)
        );
        self.failures.push(name.to_string());
        self.alert(name, slot, &error);
        status.finished(Some(error));
        self.record(name, slot, &status);
        slot.retry_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    /// Queues the failure notification, unless one was sent and no
    /// recovery since: a replicator failing every back-off notifies once.
    fn alert(&mut self, name: &str, slot: &mut Slot, error: &str) {
        if slot.alerted {
            return;
        }
        slot.alerted = true;
        let routes: Vec<Route> = slot
            .routes
            .iter()
            .filter(|r| r.on_failure)
            .cloned()
            .collect();
        self.outbox
            .push((routes, Event::replication(name, Some(error.to_string()))));
    }

    /// Queues the recovery notification after a failure was notified, to
    /// the routes that got the failure.
    fn recovered(&mut self, name: &str, slot: &mut Slot) {
        if !slot.alerted {
            return;
        }
        slot.alerted = false;
        tracing::info!(database = %name, "replication recovered");
        let routes: Vec<Route> = slot
            .routes
            .iter()
            .filter(|r| r.on_failure)
            .cloned()
            .collect();
        self.outbox.push((routes, Event::replication(name, None)));
    }

    /// Looks at each replicator: records what changed, restarts a failed
    /// one once its back-off is over, picks up and drops databases of the
    /// directories, sends the notifications and updates the metrics.
    pub async fn tick(&mut self, notifier: &mut Notifier, metrics: &Mutex<Metrics>) {
        if !self.dirs.is_empty() {
            let mut wanted: BTreeMap<String, (ReplicatorConfig, Vec<Route>)> = self
                .slots
                .iter()
                .filter(|(n, _)| {
                    !self
                        .dirs
                        .iter()
                        .any(|(d, _)| n.starts_with(&format!("{}/", d.name)))
                })
                .map(|(n, s)| (n.clone(), (s.config.clone(), s.routes.clone())))
                .collect();
            self.add_dirs(&mut wanted, false);
            self.reconcile(wanted).await;
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let mut slot = self.slots.remove(&name).expect("listed");
            match slot.handle.take() {
                Some(h) if h.is_finished() && removed(&name, &slot.config) => {
                    // A directory's database removed under its replicator
                    // (which noticed first): a stop, not a failure.
                    let said = match h.shutdown().await {
                        Err(e) => format!("; it said: {e:#}"),
                        Ok(_) => String::new(),
                    };
                    tracing::info!(database = %name, "replication stopped: removed (its database is gone from the directory{said})");
                    for v in self.found.values_mut() {
                        v.retain(|(n, _)| n != &name);
                    }
                    let mut st = Status::default();
                    st.finished(None);
                    self.record(&name, &slot, &st);
                    continue;
                }
                Some(h) if h.is_finished() => {
                    let status = h.status();
                    self.count(&name, &mut slot, &status, metrics);
                    let error = match h.shutdown().await {
                        Err(e) => format!("{e:#}"),
                        Ok(_) => "the replicator stopped by itself".into(),
                    };
                    self.failed(&name, &mut slot, status, error);
                }
                Some(h) => {
                    let status = h.status();
                    self.count(&name, &mut slot, &status, metrics);
                    match status.state {
                        State::Running => {
                            slot.backoff = FIRST_BACKOFF;
                            slot.retrying_since = None;
                            self.recovered(&name, &mut slot);
                        }
                        State::Retrying => {
                            let since = *slot.retrying_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= ALERT_AFTER {
                                let e = format!(
                                    "shipping has failed for {}: {}",
                                    humantime::format_duration(Duration::from_secs(
                                        since.elapsed().as_secs()
                                    )),
                                    status.error.as_deref().unwrap_or("unknown error")
                                );
                                self.alert(&name, &mut slot, &e);
                            }
                        }
                        _ => {}
                    }
                    self.record_if_changed(&name, &mut slot, &status);
                    slot.handle = Some(h);
                }
                None => {
                    if slot.retry_at.is_some_and(|t| Instant::now() >= t) {
                        self.start(&name, &mut slot);
                    }
                }
            }
            self.slots.insert(name, slot);
        }
        let m = metrics.lock().unwrap();
        for name in self.failures.drain(..) {
            m.replication_failed(&name);
        }
        for (name, slot) in &self.slots {
            if slot.handle.is_none() {
                m.replication_down(name);
            }
        }
        drop(m);
        for (routes, ev) in self.outbox.drain(..) {
            let r: Vec<&Route> = routes.iter().collect();
            notifier.send_all(&r, &ev);
        }
    }

    /// Brings the metrics of one replicator up to date with its status.
    fn count(&self, name: &str, slot: &mut Slot, st: &Status, metrics: &Mutex<Metrics>) {
        let (segs, bytes, ref generation) = slot.counted;
        let new_generation = st.generation.is_some() && st.generation != *generation;
        metrics.lock().unwrap().replication(
            name,
            st,
            st.segments.saturating_sub(segs),
            st.segment_bytes.saturating_sub(bytes),
            new_generation,
        );
        slot.counted = (st.segments, st.segment_bytes, st.generation.clone());
    }

    /// Stops them all, each shipping what is committed first.
    pub async fn shutdown(&mut self) {
        for s in self.slots.values() {
            if let Some(h) = &s.handle {
                h.request_stop();
            }
        }
        let slots = std::mem::take(&mut self.slots);
        for (name, slot) in slots {
            self.stop(&name, slot).await;
        }
    }

    async fn stop(&self, name: &str, mut slot: Slot) {
        let Some(h) = slot.handle.take() else {
            let mut st = Status::default();
            st.finished(None);
            self.record(name, &slot, &st);
            return;
        };
        let status = h.status();
        let res = h.shutdown().await;
        let mut fin = status;
        match res {
            Ok(r) => {
                tracing::info!(
                    database = %name,
                    transactions = r.transactions,
                    segments = r.segments,
                    "replication stopped: everything committed is shipped"
                );
                fin.transactions = r.transactions;
                fin.segments = r.segments;
                fin.finished(None);
            }
            Err(e) if removed(name, &slot.config) => {
                // Its database went away under it, which may end it with
                // an error (the file it follows is gone): that is the stop.
                tracing::info!(database = %name, "replication stopped: removed (its database is gone from the directory; it said: {e:#})");
                fin.finished(None);
            }
            Err(e) => {
                tracing::error!(database = %name, "replication stopped with an error: {e:#}");
                fin.finished(Some(format!("{e:#}")));
            }
        }
        self.record(name, &slot, &fin);
    }

    fn record_if_changed(&self, name: &str, slot: &mut Slot, st: &Status) {
        let key = (
            st.state,
            st.generation.clone(),
            st.error.clone(),
            st.shipped_txid,
        );
        let Some(old) = &slot.recorded else {
            self.record(name, slot, st);
            slot.recorded = Some(key);
            slot.recorded_at = Instant::now();
            return;
        };
        let changed = (old.0, &old.1, &old.2) != (key.0, &key.1, &key.2);
        let moved = old.3 != key.3 && slot.recorded_at.elapsed() >= RECORD_EVERY;
        if changed || moved {
            self.record(name, slot, st);
            slot.recorded = Some(key);
            slot.recorded_at = Instant::now();
        }
    }

    fn record(&self, name: &str, slot: &Slot, st: &Status) {
        let rec = ReplicationState {
            pid: std::process::id(),
            started_at_ms: slot.started_at_ms,
            updated_at_ms: now_ms(),
            status: st.clone(),
        };
        if let Err(e) = state::update(&self.state_dir, |s| {
            s.databases.entry(name.to_string()).or_default().replication = Some(rec);
        }) {
            tracing::error!(database = %name, "cannot record the replication state: {e:#}");
        }
    }
}
