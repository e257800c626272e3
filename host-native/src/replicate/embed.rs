//! A replicator inside an application: [`Replicator::start`] runs one in
//! the caller's own (multi-thread) tokio runtime and returns a
//! [`ReplicatorHandle`]; [`ReplicatorHandle::shutdown`] ships everything
//! committed, releases the leases and returns the run's report or error.
//!
//! The replication loop is blocking (SQLite connections, the CPU
//! pipeline), so it runs on one of the runtime's blocking threads and
//! drives the storage backends through the runtime's handle; the
//! application's async tasks are never blocked. Messages are `tracing`
//! events: they go to the application's subscriber.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

use super::config::ReplicatorConfig;
use super::{LogTo, Report, State, Status};
use crate::storage::{Dest, Location};

/// Starts replicators; see [`Replicator::start`].
pub struct Replicator;

/// A running replicator. Dropping it without [`shutdown`](Self::shutdown)
/// still asks it to stop (it finishes on its blocking thread), but nobody
/// learns the outcome.
pub struct ReplicatorHandle {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<Status>>,
    task: Option<JoinHandle<Result<Report>>>,
}

impl Replicator {
    /// Opens the destinations, takes their leases, takes the first
    /// generation's snapshot, and returns once replication is running;
    /// any error on the way (not in WAL mode, a lease held by another
    /// replicator, an unreachable destination, a bad key) is returned here.
    /// Must be called inside a multi-thread tokio runtime.
    pub async fn start(config: ReplicatorConfig) -> Result<ReplicatorHandle> {
        let mut h = Self::spawn(config, LogTo::Tracing)?;
        loop {
            match h.status().state {
                State::Starting if !h.is_finished() => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                State::Starting | State::Failed => {
                    // It ended before it ran: its error is the answer.
                    h.join().await?;
                    bail!("the replicator stopped while starting");
                }
                _ => return Ok(h),
            }
        }
    }

    /// Starts a replicator without waiting for it to run (the daemon's
    /// way): its status says `starting`, then `running`, or `failed`.
    pub fn spawn(config: ReplicatorConfig, log: LogTo) -> Result<ReplicatorHandle> {
        let rt = Handle::try_current()
            .map_err(|_| anyhow!("Replicator::start must be called inside a tokio runtime"))?;
        if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
            bail!(
                "Replicator::start needs a multi-thread tokio runtime (#[tokio::main] or Builder::new_multi_thread): the replicator blocks one thread and drives storage on the others"
            );
        }
        let locations = config
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| Location::parse(d).map_err(|e| anyhow!("destinations[{i}]: {e:#}")))
            .collect::<Result<Vec<_>>>()?;
        let opts = config.options(log)?;
        let status = opts.status.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                let dests = locations
                    .iter()
                    .map(|l| Dest::open(l, &rt))
                    .collect::<Result<Vec<_>>>();
                match dests {
                    Ok(dests) => super::run(&dests, &opts, &stop),
                    Err(e) => {
                        opts.status.lock().unwrap().finished(Some(format!("{e:#}")));
                        Err(e)
                    }
                }
            })
        };
        Ok(ReplicatorHandle {
            stop,
            status,
            task: Some(task),
        })
    }
}

impl ReplicatorHandle {
    /// A copy of the replicator's current status.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap().clone()
    }

    /// Whether it stopped (by an error, unless [`shutdown`](Self::shutdown)
    /// was called): then `status().error` says why, and `shutdown` returns it.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks it to stop without waiting (then [`shutdown`](Self::shutdown)
    /// waits).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops: ships every transaction committed before this call, releases
    /// the leases, and returns what the run did, or the error that stopped
    /// it (a replicator that failed earlier returns its error here too).
    pub async fn shutdown(mut self) -> Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    async fn join(&mut self) -> Result<Report> {
        let Some(t) = self.task.take() else {
            bail!("the replicator was already stopped");
        };
        match t.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!("the replicator's thread failed: {e}")),
        }
    }
}

impl Drop for ReplicatorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
