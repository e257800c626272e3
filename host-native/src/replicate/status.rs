//! What a running replicator reports while it runs (read by an embedding
//! application through its handle, and by the daemon for `cairn status`),
//! and where its messages go.

use serde::{Deserialize, Serialize};

use crate::storage::now_ms;

/// Where a replicator's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTo {
    /// `cairn replicate:` lines on stderr (the CLI).
    #[default]
    Stderr,
    /// `tracing` events, to whatever subscriber the process installed
    /// (none is installed by the library).
    Tracing,
}

impl LogTo {
    pub fn info(self, msg: &str) {
        match self {
            LogTo::Stderr => eprintln!("cairn replicate: {msg}"),
            LogTo::Tracing => tracing::info!(target: "cairn::replicate", "{msg}"),
        }
    }

    pub fn warn(self, msg: &str) {
        match self {
            LogTo::Stderr => eprintln!("cairn replicate: {msg}"),
            LogTo::Tracing => tracing::warn!(target: "cairn::replicate", "{msg}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Opening the destinations, taking the leases, the first snapshot.
    #[default]
    Starting,
    /// Shipping every commit within the interval.
    Running,
    /// The last shipment failed; it is being retried every interval.
    Retrying,
    /// Shipping what is committed before it stops.
    Stopping,
    /// Stopped cleanly: everything committed before the stop is shipped.
    Stopped,
    /// Stopped by an error (in `error`).
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// A replicator's state, updated as it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// The generation being written.
    pub generation: Option<String>,
    /// The newest transaction id shipped to every destination.
    pub shipped_txid: u64,
    /// Transactions read from the WAL and segments shipped, this run.
    pub transactions: u64,
    pub segments: u64,
    pub last_shipped_at_ms: Option<i64>,
    /// Why it is retrying, or why it failed.
    pub error: Option<String>,
    /// Segment bytes shipped (to each destination), this run.
    #[serde(default)]
    pub segment_bytes: u64,
    /// Since when transactions read from the WAL wait to be shipped (Unix
    /// ms; none: everything read is shipped): the replication lag's start.
    #[serde(default)]
    pub pending_since_ms: Option<i64>,
}

impl Status {
    pub fn generation(&mut self, id: &str) {
        self.generation = Some(id.to_string());
        if self.state == State::Starting {
            self.state = State::Running;
        }
    }

    pub fn shipped(&mut self, txid: u64, transactions: u64, segments: u64, bytes: u64) {
        self.shipped_txid = txid;
        self.transactions = transactions;
        self.segments = segments;
        self.segment_bytes = bytes;
        self.last_shipped_at_ms = Some(now_ms());
    }

    /// Transactions were read and wait to be shipped (`true`), or every
    /// one read is shipped (`false`).
    pub fn pending(&mut self, waiting: bool) {
        match (waiting, self.pending_since_ms) {
            (true, None) => self.pending_since_ms = Some(now_ms()),
            (false, _) => self.pending_since_ms = None,
            _ => {}
        }
    }

    /// How far the destinations are behind what was read from the WAL.
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        self.pending_since_ms.map_or(0, |t| (now_ms - t).max(0))
    }

    pub fn retrying(&mut self, error: Option<&str>) {
        match error {
            Some(e) => {
                self.state = State::Retrying;
                self.error = Some(e.to_string());
            }
            None if self.state == State::Retrying => {
                self.state = State::Running;
                self.error = None;
            }
            None => {}
        }
    }

    pub fn finished(&mut self, error: Option<String>) {
        self.state = if error.is_some() {
            State::Failed
        } else {
            State::Stopped
        };
        self.error = error;
    }

    /// Still working (not stopped, not failed).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, State::Stopped | State::Failed)
    }
}
