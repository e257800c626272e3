//! The blocking side of storage: [`Dest`] lets the threaded CPU pipeline
//! (encode, decode, verify) read and write objects of an async [`Backend`]
//! through bounded channels, so memory stays bounded whatever the size.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Backend, Body, ByteStream, Chunk, Cond, Location, ObjectInfo, Put, SharedBackend};

/// Pieces a writer hands to its upload task; with the task's own buffer
/// (at most a few parts) this bounds an upload's memory.
const PIECE: usize = 1 << 20;
const PIECES_IN_FLIGHT: usize = 4;

/// The most cairn reads of one metadata object (catalog.json, a commit, a
/// checkpoint, the marker): docs/FORMAT.md §7.3.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// A destination, opened: its backend and the runtime that drives it.
#[derive(Clone)]
pub struct Dest {
    backend: SharedBackend,
    rt: Handle,
    location: Location,
}

impl Dest {
    /// Connects to the destination (for S3 and SFTP: credentials, host keys).
    pub fn open(location: &Location, rt: &Handle) -> anyhow::Result<Dest> {
        let backend = rt.block_on(super::open(location))?;
        Ok(Dest {
            backend,
            rt: rt.clone(),
            location: location.clone(),
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.rt
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn scheme(&self) -> &'static str {
        self.backend.scheme()
    }

    /// The URL of `key` (`""`: the destination).
    pub fn describe(&self, key: &str) -> String {
        self.backend.describe(key)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        // Only metadata objects are read whole; a huge one is hostile or
        // not cairn's, and a local one is refused before it is read.
        let too_big = |n: u64| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "it is {n} bytes, over the {} MiB cairn reads of a catalog or log object: it is not one cairn wrote",
                    MAX_METADATA_BYTES >> 20
                ),
            )
        };
        if let Some(p) = self.backend.local_path(key)
            && let Ok(m) = std::fs::metadata(&p)
            && m.len() > MAX_METADATA_BYTES
        {
            return Err(too_big(m.len()));
        }
        let got = self.rt.block_on(self.backend.get(key))?;
        match got {
            Some(b) if b.len() as u64 > MAX_METADATA_BYTES => Err(too_big(b.len() as u64)),
            other => Ok(other),
        }
    }

    pub fn put(&self, key: &str, data: Vec<u8>, cond: Cond) -> io::Result<Put> {
        self.rt
            .block_on(self.backend.put(key, Bytes::from(data), cond))
    }

    pub fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>> {
        self.rt.block_on(self.backend.list(prefix, start_after))
    }

    pub fn delete(&self, keys: &[String]) -> io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.rt.block_on(self.backend.delete(keys))
    }

    pub fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize> {
        self.rt.block_on(self.backend.sweep_temps(older_than_ms))
    }

    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.backend.local_path(key)
    }

    /// An object for reading; a local file is read directly.
    pub fn reader(&self, key: &str) -> io::Result<DestReader> {
        if let Some(p) = self.backend.local_path(key) {
            return Ok(DestReader::File(std::fs::File::open(p)?));
        }
        // Fused: `read` may be called again after the end (std's contract).
        let stream = self.rt.block_on(self.backend.read(key))?.fuse().boxed();
        Ok(DestReader::Stream {
            stream,
            rt: self.rt.clone(),
            cur: Bytes::new(),
        })
    }

    /// Starts a streaming upload to `key`, published by `commit`.
    pub fn writer(&self, key: &str, cond: Cond) -> DestWriter {
        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let backend = self.backend.clone();
        let k = key.to_string();
        let task = self
            .rt
            .spawn(async move { backend.upload(&k, Body::new(rx), cond).await });
        DestWriter {
            buf: Vec::with_capacity(PIECE),
            tx: Some(tx),
            task: Some(task),
            rt: self.rt.clone(),
        }
    }
}

/// A blocking reader over an object.
pub enum DestReader {
    File(std::fs::File),
    Stream {
        stream: ByteStream,
        rt: Handle,
        cur: Bytes,
    },
}

impl Read for DestReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            DestReader::File(f) => f.read(out),
            DestReader::Stream { stream, rt, cur } => {
                while cur.is_empty() {
                    match rt.block_on(stream.next()) {
                        Some(Ok(b)) => *cur = b,
                        Some(Err(e)) => return Err(e),
                        None => return Ok(0),
                    }
                }
                let n = out.len().min(cur.len());
                out[..n].copy_from_slice(&cur[..n]);
                *cur = cur.slice(n..);
                Ok(n)
            }
        }
    }
}

/// A blocking writer feeding an upload task. Dropped without `commit`, the
/// upload is abandoned: the backend removes what it wrote, nothing is published.
pub struct DestWriter {
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Chunk>>,
    task: Option<JoinHandle<io::Result<Put>>>,
    rt: Handle,
}

impl DestWriter {
    fn send(&mut self, c: Chunk) -> io::Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.blocking_send(c).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The upload task stopped early: its error is the reason.
        self.tx = None;
        Err(match self.join() {
            Err(e) => e,
            Ok(_) => io::Error::other("the upload ended before its data did"),
        })
    }

    fn join(&mut self) -> io::Result<Put> {
        match self.task.take() {
            Some(t) => match self.rt.block_on(t) {
                Ok(r) => r,
                Err(e) => Err(io::Error::other(format!("the upload task failed: {e}"))),
            },
            None => Err(io::Error::other("the upload already ended")),
        }
    }

    fn flush_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.send(Chunk::Data(Bytes::from(piece)))
    }

    /// Ends the object and waits until it is durable and published.
    pub fn commit(mut self) -> io::Result<Put> {
        self.flush_piece()?;
        self.send(Chunk::End)?;
        self.tx = None;
        self.join()
    }
}

impl Write for DestWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > PIECE && !self.buf.is_empty() {
            self.flush_piece()?;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush_piece()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DestWriter {
    fn drop(&mut self) {
        // Closing the channel without `End` tells the task to clean up;
        // wait (briefly) so that happens before the process exits.
        self.tx = None;
        if let Some(t) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await });
        }
    }
}

/// One encode written to several destinations at once (fan-out). A branch
/// that fails is dropped (its upload abandoned) and the others go on; the
/// write fails only when no branch is left.
pub struct Tee {
    pub branches: Vec<Branch>,
}

pub struct Branch {
    pub writer: Option<DestWriter>,
    pub error: Option<io::Error>,
}

impl Tee {
    pub fn new(writers: Vec<DestWriter>) -> Tee {
        Tee {
            branches: writers
                .into_iter()
                .map(|w| Branch {
                    writer: Some(w),
                    error: None,
                })
                .collect(),
        }
    }
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut alive = 0;
        for b in &mut self.branches {
            if let Some(w) = &mut b.writer {
                match w.write_all(data) {
                    Ok(()) => alive += 1,
                    Err(e) => {
                        b.error = Some(e);
                        b.writer = None;
                    }
                }
            }
        }
        if alive == 0 {
            let first = self.branches.iter().find_map(|b| b.error.as_ref());
            return Err(io::Error::other(match first {
                Some(e) => format!("every destination failed; the first: {e}"),
                None => "no destination to write to".into(),
            }));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
