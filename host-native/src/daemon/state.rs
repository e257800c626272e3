//! The daemon's small state file, `state.json` in the state directory:
//! when each job last started (to run missed jobs once at start-up), the
//! last success and failure of each database, and each destination's last
//! restore drill. Written whole under a lock: temp file, fsync, rename.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::job::Outcome;

pub const FILE: &str = "state.json";
const LOCK: &str = "state.lock";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub databases: BTreeMap<String, DbState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DbState {
    /// When the last backup run started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Run>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Run>,
    /// When the last restore drill started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_start_ms: Option<i64>,
    /// Per destination (as written in the config, expanded, its password
    /// redacted: this file must hold no secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drills: BTreeMap<String, DrillState>,
    /// The daemon's replicator for this database (`replicate = true`), as
    /// it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationState>,
}

/// A replicator run by the daemon, as last recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicationState {
    /// The daemon process running it (a live state with a gone process is stale).
    pub pid: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(flatten)]
    pub status: crate::replicate::Status,
}

/// One finished run, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub time_ms: i64,
    pub seconds: f64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the state (empty if there is none yet).
pub fn load(dir: &Path) -> Result<State> {
    let p = path(dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "state file {} is damaged; move it aside (cairn then treats every job as never run)",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", p.display())),
    }
}

/// Read, change and write back the state under an exclusive lock, so a
/// `cairn run-once` next to the daemon does not lose the daemon's update.
pub fn update<T>(dir: &Path, f: impl FnOnce(&mut State) -> T) -> Result<T> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .with_context(|| format!("cannot open {}", dir.join(LOCK).display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", dir.join(LOCK).display()));
    }
    let mut s = load(dir)?;
    let r = f(&mut s);
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, &s)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path(dir))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path(dir).display(), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    drop(lock);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_round_trips_and_missing_is_empty() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().databases.is_empty());
        update(d.path(), |s| {
            s.databases.entry("app".into()).or_default().last_start_ms = Some(42);
        })
        .unwrap();
        let s = load(d.path()).unwrap();
        assert_eq!(s.databases["app"].last_start_ms, Some(42));
        std::fs::write(path(d.path()), "{").unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }
}
