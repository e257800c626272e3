//! Layout 2 of a destination (docs/FORMAT.md §12): the object names and the
//! small JSON records that say which backups a destination holds, built for
//! object stores and for several writers at once.
//!
//! ```text
//! cairn.json                       the destination marker (create-only, never changes)
//! log/<seq, 20 digits>.json        commits: backups added and removed (create-only)
//! checkpoints/<seq>.json           the state after commit <seq> (create-only, derived)
//! snapshots/<id>.db.gz|.db.cairn   archives (create-only)
//! latest.txt                       a hint for people and scripts: the newest archive's key
//! ```
//!
//! Nothing here does I/O: the host lists, reads and writes objects and hands
//! the bytes to these functions. A destination's state is a fold of its log
//! over its newest checkpoint ([`State`]); every record carries its own
//! SHA-256 (the [`crate::envelope`]).

mod checkpoint;
mod commit;
mod marker;
mod state;

pub use checkpoint::Checkpoint;
pub use commit::{Checked, Commit, INTEGRITY_CHECK, Removal};
pub use marker::Marker;
#[cfg(test)]
pub(crate) use state::tests::entry as test_entry;
pub use state::{GenerationRef, GroupPlan, Removed, State};

/// The destination marker: its presence makes a destination layout 2.
pub const MARKER_KEY: &str = "cairn.json";
pub const LOG_PREFIX: &str = "log/";
pub const CHECKPOINT_PREFIX: &str = "checkpoints/";
/// The layout version this cairn writes and reads (layout 1 is `catalog.json`).
pub const LAYOUT_VERSION: u32 = 2;
/// A writer that leaves this many commits after the newest checkpoint writes a new one.
pub const CHECKPOINT_EVERY: u64 = 16;
/// How long a removal stays in the state, so that later prunes delete its
/// object again if the first delete did not happen (a crash, a failed request).
pub const REMOVED_KEEP_MS: i64 = 7 * 86_400_000;
/// How far before the last orphan sweep's mark the next sweep starts
/// listing: covers writers whose clocks lag by up to two days.
pub const SWEEP_MARGIN_MS: i64 = 2 * 86_400_000;

/// `log/00000000000000000042.json`: fixed width, so keys sort by number.
pub fn log_key(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}.json")
}

pub fn checkpoint_key(seq: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{seq:020}.json")
}

/// The sequence number in a `log/` or `checkpoints/` key, or `None` for a
/// name that is not one (a temp file, something a person put there).
pub fn parse_seq_key(prefix: &str, key: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_number() {
        assert_eq!(log_key(42), "log/00000000000000000042.json");
        assert_eq!(parse_seq_key(LOG_PREFIX, &log_key(42)), Some(42));
        assert_eq!(
            parse_seq_key(CHECKPOINT_PREFIX, &checkpoint_key(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(log_key(9) < log_key(10));
        for bad in [
            "log/42.json",
            "log/0000000000000000004x.json",
            "log/00000000000000000000.json",
            "log/.00000000000000000042.json.tmp",
            "checkpoints/00000000000000000042.json",
        ] {
            assert_eq!(parse_seq_key(LOG_PREFIX, bad), None, "{bad}");
        }
    }
}
