//! Fencing: one replicator per database and destination. The lease is a
//! series of small immutable objects, `replication/<db>/lease/<seq>.json`,
//! each written create-only: taking, renewing or releasing the lease means
//! creating the next number, so of two replicators racing for it exactly one
//! wins on every store with create-only writes (docs/FORMAT.md §13.6). The
//! newest record says who holds the lease and until when.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::storage::{Cond, Dest, Put, hostname, now_ms};

pub const LEASE_PREFIX: &str = "replication/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub seq: u64,
    pub host: String,
    pub pid: u32,
    pub writer: String,
    pub written_at_ms: i64,
    /// Nobody else may take the lease before this (Unix ms); a release
    /// writes a record that has already expired.
    pub expires_at_ms: i64,
}

impl LeaseRecord {
    pub fn describe(&self) -> String {
        format!(
            "{} until {}",
            self.writer,
            cairn_core::time::rfc3339(self.expires_at_ms)
        )
    }
}

/// `replication/<db>/lease/`: a database name made safe for a key segment.
pub fn lease_prefix(db_name: &str) -> String {
    let safe: String = db_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    format!(
        "{LEASE_PREFIX}{}/lease/",
        if safe.is_empty() { "db" } else { safe }
    )
}

fn key(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:020}.json")
}

/// A lease held by this process on one destination.
pub struct Lease {
    prefix: String,
    seq: u64,
    ttl_ms: i64,
    pub expires_at_ms: i64,
}

/// Whether `pid` is a live process on this host.
fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The newest lease record, if any.
pub fn newest(dest: &Dest, prefix: &str) -> Result<Option<LeaseRecord>> {
    let listed = dest
        .list(prefix, None)
        .with_context(|| format!("cannot list {}", dest.describe(prefix)))?;
    let Some(last) = listed.iter().rev().find(|o| o.key.ends_with(".json")) else {
        return Ok(None);
    };
    let bytes = dest
        .get(&last.key)
        .with_context(|| format!("cannot read {}", dest.describe(&last.key)))?
        .with_context(|| format!("{} vanished while being read", dest.describe(&last.key)))?;
    let rec: LeaseRecord = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a lease record; remove it if nothing else writes there",
            dest.describe(&last.key)
        )
    })?;
    Ok(Some(rec))
}

impl Lease {
    /// Takes the lease, or refuses naming who holds it. An expired lease
    /// is taken over; so is one held by a process of this host that is gone.
    pub fn acquire(dest: &Dest, db_name: &str, ttl_ms: i64) -> Result<Lease> {
        let prefix = lease_prefix(db_name);
        let cur = newest(dest, &prefix)?;
        let now = now_ms();
        if let Some(c) = &cur {
            let same_host_dead =
                c.host == hostname() && c.pid != std::process::id() && !alive(c.pid);
            if c.expires_at_ms > now && !same_host_dead {
                bail!(
                    "replication of {db_name} into {} is held by {} (lease {}); stop that replicator, or wait until it expires",
                    dest.describe(""),
                    c.describe(),
                    dest.describe(&key(&prefix, c.seq))
                );
            }
        }
        let mut lease = Lease {
            prefix,
            seq: cur.map_or(0, |c| c.seq),
            ttl_ms,
            expires_at_ms: 0,
        };
        lease.write_next(dest, now + ttl_ms).map_err(|e| {
            e.context(format!(
                "another replicator took the lease of {db_name} in {} at the same moment",
                dest.describe("")
            ))
        })?;
        Ok(lease)
    }

    fn write_next(&mut self, dest: &Dest, expires_at_ms: i64) -> Result<()> {
        let seq = self.seq + 1;
        let rec = LeaseRecord {
            seq,
            host: hostname(),
            pid: std::process::id(),
            writer: crate::repo::write::writer_id(),
            written_at_ms: now_ms(),
            expires_at_ms,
        };
        let k = key(&self.prefix, seq);
        let body = serde_json::to_vec_pretty(&rec).expect("a lease record serializes");
        match dest
            .put(&k, body, Cond::CreateOnly)
            .with_context(|| format!("cannot write {}", dest.describe(&k)))?
        {
            Put::Written => {}
            Put::Exists => {
                let holder = newest(dest, &self.prefix)
                    .ok()
                    .flatten()
                    .map_or("someone else".to_string(), |r| r.describe());
                bail!("the lease was taken by {holder}");
            }
        }
        // Older records only say who held it before: keep one for people.
        if seq > 2 {
            let _ = dest.delete(&[key(&self.prefix, seq - 2)]);
        }
        self.seq = seq;
        self.expires_at_ms = expires_at_ms;
        Ok(())
    }

    /// Renews when less than half the lease is left; an error means the
    /// lease was lost (taken over after it expired): stop writing.
    pub fn keep(&mut self, dest: &Dest) -> Result<()> {
        let now = now_ms();
        if self.expires_at_ms - now > self.ttl_ms / 2 {
            return Ok(());
        }
        self.write_next(dest, now + self.ttl_ms).with_context(|| {
            format!(
                "lost the replication lease in {}; this replicator stops writing",
                dest.describe("")
            )
        })
    }

    /// Gives the lease up (a record that has already expired).
    pub fn release(mut self, dest: &Dest) -> Result<()> {
        self.write_next(dest, now_ms())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_are_safe_keys() {
        assert_eq!(super::lease_prefix("app.db"), "replication/app.db/lease/");
        assert_eq!(super::lease_prefix("../x y"), "replication/_x_y/lease/");
        assert_eq!(super::lease_prefix(".."), "replication/db/lease/");
    }
}
