//! Where backups live: one async object-store abstraction ([`Backend`]) with
//! a local directory, S3 and SFTP behind it, and a blocking bridge
//! ([`Dest`]) that the threaded CPU pipeline drives through bounded channels.
//!
//! The contract every backend keeps (docs/FORMAT.md §12.4):
//! - an object becomes visible whole or not at all: uploads go to a temp
//!   name or a multipart upload and are published in one step;
//! - `Cond::CreateOnly` never replaces an existing object (S3
//!   `If-None-Match: *`, `link()` locally, rename-without-overwrite over
//!   SFTP) and reports `Put::Exists` when one is there;
//! - `list` returns every key under a prefix ending in `/` (or the top-level
//!   keys for `""`), sorted, never temp files.

mod bridge;
mod local;
pub mod retry;
mod s3;
mod sftp;
pub mod url;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

pub use bridge::{Branch, Dest, DestReader, DestWriter, Tee};
pub use local::{LocalDir, sweep_dead_temps_of};
pub use url::Location;

/// How a put treats an object already under the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// Replace it (only `latest.txt`, a hint nobody trusts, is written so).
    Overwrite,
    /// Write only if no object has the key.
    CreateOnly,
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Written,
    /// `CreateOnly` found an object under the key; nothing was written.
    Exists,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, ms since the epoch (`None` where the store has none).
    pub modified_ms: Option<i64>,
}

/// A chunk of an upload, or its end. An upload whose channel closes before
/// `End` arrives was abandoned (a failed encode, a killed fan-out branch):
/// the backend discards it and publishes nothing.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    End,
}

/// The body of a streaming upload.
pub struct Body {
    pub(crate) rx: mpsc::Receiver<Chunk>,
}

impl Body {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        Body { rx }
    }

    /// The next piece; `Ok(None)` at a clean end, an error if abandoned.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self.rx.recv().await {
            Some(Chunk::Data(b)) => Ok(Some(b)),
            Some(Chunk::End) => Ok(None),
            None => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the upload was abandoned before its end",
            )),
        }
    }
}

/// A byte stream read from a store.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

#[async_trait]
pub trait Backend: Send + Sync {
    /// The URL of `key` for messages (`""`: the destination itself).
    fn describe(&self, key: &str) -> String;
    /// `"local"`, `"s3"` or `"sftp"`.
    fn scheme(&self) -> &'static str;
    /// A whole object; `Ok(None)` if absent.
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>>;
    /// An object as a stream; `ErrorKind::NotFound` if absent.
    async fn read(&self, key: &str) -> io::Result<ByteStream>;
    /// Writes a small object in one request.
    async fn put(&self, key: &str, data: Bytes, cond: Cond) -> io::Result<Put>;
    /// Streams a large object in; published only after `Chunk::End`.
    async fn upload(&self, key: &str, body: Body, cond: Cond) -> io::Result<Put>;
    /// The objects under `prefix` (ending in `/`, or `""` for the top
    /// level), sorted by key, only keys greater than `start_after`.
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>>;
    /// Deletes objects; an absent one is not an error.
    async fn delete(&self, keys: &[String]) -> io::Result<()>;
    /// Removes what interrupted writers left behind (temp files, multipart
    /// uploads) that started more than `older_than_ms` ago; returns a count.
    async fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize>;
    /// The object as a file on this machine, where the backend keeps it so
    /// (the sandboxed verifier reads it in place).
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

pub type SharedBackend = Arc<dyn Backend>;

/// The backend for a destination URL or path.
pub async fn open(loc: &Location) -> anyhow::Result<SharedBackend> {
    Ok(match loc {
        Location::Local(p) => Arc::new(LocalDir::new(p.clone())),
        Location::S3(c) => Arc::new(s3::S3::connect(c.clone()).await?),
        Location::Sftp(c) => Arc::new(sftp::Sftp::connect(c.clone()).await?),
    })
}

/// A temp name that says who wrote it, so a later run can tell a dead
/// writer's leftovers (`.<name>.<host>.<pid>.<random>.tmp`).
pub fn temp_name(final_name: &str) -> String {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    format!(
        ".{final_name}.{}.{}.{}.tmp",
        hostname(),
        std::process::id(),
        hex::encode(r)
    )
}

/// Whether a file name is one of cairn's temp names.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `key` (relative to a destination) is a name cairn writes: the
/// layout's objects (docs/FORMAT.md §12.1, and layout 1's §7.1). Sweeps of
/// unfinished uploads touch nothing else, since a destination may share its
/// bucket or directory with other programs.
pub fn is_layout_key(key: &str) -> bool {
    use cairn_core::{catalog::SNAPSHOT_PREFIX, layout};
    [
        SNAPSHOT_PREFIX,
        layout::LOG_PREFIX,
        layout::CHECKPOINT_PREFIX,
        cairn_core::segment::GENERATIONS_PREFIX,
        crate::replicate::lease::LEASE_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || [layout::MARKER_KEY, "latest.txt", "catalog.json"].contains(&key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_layout_keys_are_cairns() {
        for k in [
            "snapshots/x.db.gz",
            "log/00000000000000000001.json",
            "checkpoints/1.json",
            "cairn.json",
            "latest.txt",
            "catalog.json",
        ] {
            assert!(super::is_layout_key(k), "{k}");
        }
        for k in [
            "photos/a.jpg",
            "snapshotsx",
            "cairn.json.bak",
            "",
            "other/log/1.json",
        ] {
            assert!(!super::is_layout_key(k), "{k}");
        }
    }
}
