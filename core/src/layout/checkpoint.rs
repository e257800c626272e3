//! A checkpoint: the whole state after commit `seq`, so that readers need
//! the newest checkpoint and the few commits after it, not the whole log.
//! Derived data: its content is a pure function of the log up to `seq`, so
//! two writers that make the same checkpoint write the same body, and a
//! damaged one is rebuilt from the log (`cairn repair`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::commit::Checked;
use super::state::{Removed, State};
use crate::catalog::Entry;
use crate::envelope;
use crate::error::{Error, Result};

pub const CHECKPOINT_FORMAT: &str = "cairn-checkpoint";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    /// The time of commit `seq`.
    pub at_ms: i64,
    /// Oldest first, by (`created_at_ms`, `id`).
    pub entries: Vec<Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed>,
    /// The newest orphan-sweep mark of the log (Commit::swept_before_ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swept_before_ms: Option<i64>,
    /// Checks the backups passed (Commit::checked), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<Checked>,
}

impl Checkpoint {
    pub fn of(state: &State) -> Self {
        Checkpoint {
            seq: state.seq,
            at_ms: state.at_ms,
            entries: state.sorted().into_iter().cloned().collect(),
            others: state.others.values().cloned().collect(),
            removed: state.removed.clone(),
            swept_before_ms: (state.swept_before_ms > 0).then_some(state.swept_before_ms),
            checked: state.checked.values().cloned().collect(),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        envelope::render(CHECKPOINT_FORMAT, super::LAYOUT_VERSION, self, false)
    }

    /// Parses the checkpoint stored under `checkpoint_key(seq)`.
    pub fn parse(bytes: &[u8], seq: u64) -> Result<Self> {
        let what = super::checkpoint_key(seq);
        let (_, c): (u32, Checkpoint) =
            envelope::parse(bytes, &what, CHECKPOINT_FORMAT, &[super::LAYOUT_VERSION])?;
        if c.seq != seq {
            return Err(Error::Catalog(format!(
                "{what}: it says it is the state after commit {}, not {seq}",
                c.seq
            )));
        }
        Ok(c)
    }

    pub fn into_state(self) -> Result<State> {
        State::from_checkpoint(self)
    }
}
