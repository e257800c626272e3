//! The daemon's continuous replicators (`replicate = true`): one per
//! database, run in the daemon's process beside the scheduled backups.
//! Started with the daemon, restarted after a failure (with a back-off) and
//! when a reload changed its settings, stopped gracefully (everything
//! committed shipped, the lease released) on SIGTERM/SIGINT or when a
//! reload removed it. Each one's state goes to the state file, where
//! `cairn status` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::replicate::config::ReplicatorConfig;
use crate::replicate::embed::{Replicator, ReplicatorHandle};
use crate::replicate::{LogTo, State, Status};
use crate::storage::now_ms;

use super::config::{Config, Database, Source};
use super::state::{self, ReplicationState};

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the shipped position is written to the state file while
/// nothing else changes (not every shipment: that can be 20 a second).
const RECORD_EVERY: Duration = Duration::from_secs(10);

struct Slot {
    config: ReplicatorConfig,
    fingerprint: String,
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
    c.codec = Some(db.codec);
    c.level = Some(db.level);
    c.temp_dir = temp_dir.map(Path::to_path_buf);
    Some(c)
}

impl Replicators {
    pub fn new(state_dir: &Path) -> Replicators {
        Replicators {
            state_dir: state_dir.to_path_buf(),
            slots: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Brings the running set in line with `cfg`: starts new ones,
    /// restarts changed ones, stops removed ones.
    pub async fn apply(&mut self, cfg: &Config) {
        self.state_dir = cfg.state_dir.clone();
        let wanted: BTreeMap<String, ReplicatorConfig> = cfg
            .databases
            .iter()
            .filter_map(|d| Some((d.name.clone(), config_for(d, cfg.temp_dir.as_deref())?)))
            .collect();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let same = wanted
                .get(&name)
                .is_some_and(|w| format!("{w:?}") == self.slots[&name].fingerprint);
            if !same {
                let why = if wanted.contains_key(&name) {
                    "its settings changed"
                } else {
                    "it is no longer configured"
                };
                tracing::info!(database = %name, "stopping replication: {why}");
                let slot = self.slots.remove(&name).expect("listed");
                self.stop(&name, slot).await;
            }
        }
        for (name, config) in wanted {
            if self.slots.contains_key(&name) {
                continue;
            }
            let mut slot = Slot {
                fingerprint: format!("{config:?}"),
                config,
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

    fn start(&self, name: &str, slot: &mut Slot) {
        slot.started_at_ms = now_ms();
        slot.retry_at = None;
        slot.recorded = None;
        match Replicator::spawn(slot.config.clone(), LogTo::Tracing) {
            Ok(h) => {
                tracing::info!(database = %name, "replication starting");
                slot.handle = Some(h);
            }
            Err(e) => self.failed(name, slot, Status::default(), format!("{e:#}")),
        }
    }

    fn failed(&self, name: &str, slot: &mut Slot, mut status: Status, error: String) {
        tracing::error!(
            database = %name,
            "replication failed: {error}; starting again in {}",
            humantime::format_duration(slot.backoff)
        );
        status.finished(Some(error));
        self.record(name, slot, &status);
        slot.retry_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    /// Looks at each replicator: records what changed, restarts a failed
    /// one once its back-off is over.
    pub async fn tick(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let mut slot = self.slots.remove(&name).expect("listed");
            match slot.handle.take() {
                Some(h) if h.is_finished() => {
                    let status = h.status();
                    let error = match h.shutdown().await {
                        Err(e) => format!("{e:#}"),
                        Ok(_) => "the replicator stopped by itself".into(),
                    };
                    self.failed(&name, &mut slot, status, error);
                }
                Some(h) => {
                    let status = h.status();
                    if status.state == State::Running {
                        slot.backoff = FIRST_BACKOFF;
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
