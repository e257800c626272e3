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
}

impl Status {
    pub fn generation(&mut self, id: &str) {
        self.generation = Some(id.to_string());
        if self.state == State::Starting {
            self.state = State::Running;
        }
    }

    pub fn shipped(&mut self, txid: u64, transactions: u64, segments: u64) {
        self.shipped_txid = txid;
        self.transactions = transactions;
        self.segments = segments;
        self.last_shipped_at_ms = Some(now_ms());
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
