//! A commit: one immutable record in `log/`, written create-only at the next
//! free sequence number. It adds backups (their full catalog entries, so the
//! record alone describes each archive) and removes them (prune).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{Catalog, Entry, validate_object_key};
use crate::envelope;
use crate::error::{Error, Result};

pub const COMMIT_FORMAT: &str = "cairn-commit";

/// A check a backup passed after it was written (`cairn verify`): SQLite's
/// `integrity_check` over the very bytes whose SHA-256 is `stored_sha256`.
/// A restore that reproduces those bytes (it checks them against the entry)
/// has then restored a checked database, and need not run the check again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub id: String,
    /// The archive's SHA-256 when it was checked; the record applies only
    /// while the entry still names these bytes.
    pub stored_sha256: String,
    /// What passed: `integrity_check` (with `foreign_key_check`).
    pub check: String,
    pub at_ms: i64,
}

/// The `check` of a passed SQLite integrity_check.
pub const INTEGRITY_CHECK: &str = "integrity_check";

/// A backup taken out of the destination, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub id: String,
    /// The object to delete; kept so a later prune can delete it again.
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// Equal to the number in the record's key: a record copied to another
    /// slot is refused.
    pub seq: u64,
    pub created_at: String,
    pub created_at_ms: i64,
    /// Who wrote it (host, process, cairn version): for people reading the log.
    pub writer: String,
    /// A random token of the writer's: on a store without conditional
    /// writes, the writer reads its record back and compares it.
    pub nonce: String,
    /// Applied before `add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Removal>,
    /// Catalog entries, each with a `kind`. Kinds this cairn does not know
    /// are kept as they are (State::others), never dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set by a prune whose orphan sweep examined every archive whose key's
    /// time is before this: later sweeps start near it (State::sweep_start_key)
    /// instead of listing all of `snapshots/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swept_before_ms: Option<i64>,
    /// Checks that backups passed (`cairn verify`), applied after `add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checked: Vec<Checked>,
}

impl Commit {
    pub fn new(created_at_ms: i64, writer: String, nonce: [u8; 8]) -> Self {
        Commit {
            seq: 0,
            created_at: crate::time::rfc3339(created_at_ms),
            created_at_ms,
            writer,
            nonce: crate::header::hex(&nonce),
            remove: Vec::new(),
            add: Vec::new(),
            note: None,
            swept_before_ms: None,
            checked: Vec::new(),
        }
    }

    pub fn add_entry(&mut self, e: &Entry) -> Result<()> {
        validate_object_key(&e.object)?;
        self.add
            .push(serde_json::to_value(e).expect("an entry always serializes"));
        Ok(())
    }

    /// The commit that carries a layout 1 catalog into layout 2: every entry.
    pub fn import_v1(
        catalog: &Catalog,
        created_at_ms: i64,
        writer: String,
        nonce: [u8; 8],
    ) -> Self {
        let mut c = Commit::new(created_at_ms, writer, nonce);
        for e in &catalog.entries {
            c.add
                .push(serde_json::to_value(e).expect("an entry always serializes"));
        }
        c.note = Some(format!(
            "upgraded from layout 1: {} backups imported from catalog.json",
            catalog.entries.len()
        ));
        c
    }

    /// The record's bytes, for `log_key(seq)`.
    pub fn render(&self) -> Vec<u8> {
        envelope::render(COMMIT_FORMAT, super::LAYOUT_VERSION, self, false)
    }

    /// Parses the record stored under `log_key(seq)`.
    pub fn parse(bytes: &[u8], seq: u64) -> Result<Self> {
        let what = super::log_key(seq);
        let (_, c): (u32, Commit) =
            envelope::parse(bytes, &what, COMMIT_FORMAT, &[super::LAYOUT_VERSION])?;
        if c.seq != seq {
            return Err(Error::Catalog(format!(
                "{what}: it says it is commit {}, not {seq}: it was copied or renamed",
                c.seq
            )));
        }
        for r in &c.remove {
            validate_object_key(&r.object)?;
        }
        for a in &c.add {
            let id = a.get("id").and_then(Value::as_str);
            let kind = a.get("kind").and_then(Value::as_str);
            if id.is_none_or(str::is_empty) || kind.is_none() {
                return Err(Error::Catalog(format!(
                    "{what}: an added entry has no id or kind"
                )));
            }
            if let Some(o) = a.get("object").and_then(Value::as_str) {
                validate_object_key(o)?;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_moved_record() {
        let mut c = Commit::new(5, "test".into(), [1; 8]);
        c.seq = 3;
        c.remove.push(Removal {
            id: "a".into(),
            object: "snapshots/a.db.gz".into(),
            reason: "test".into(),
        });
        let bytes = c.render();
        assert_eq!(Commit::parse(&bytes, 3).unwrap(), c);
        let e = Commit::parse(&bytes, 4).unwrap_err().to_string();
        assert!(e.contains("copied or renamed"), "{e}");
        c.remove[0].object = "../x".into();
        assert!(Commit::parse(&c.render(), 3).is_err());
    }
}
