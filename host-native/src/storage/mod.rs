//! Where backups live. Every backend offers the same small set of
//! operations on keys ("catalog.json", "snapshots/<id>.db.gz"), and the one
//! guarantee the catalog protocol needs: an object becomes visible whole or
//! not at all (`ObjectWriter::commit`), so a crash never leaves `latest.txt`
//! naming a partial object. S3 and SFTP backends implement the same trait.

mod local;

use std::io::{self, Read, Write};

pub use local::LocalDir;

/// An object being written; dropping it without `commit` discards it.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its key.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

pub trait Storage: Send + Sync {
    /// A human-readable location for messages: a path or URL.
    fn describe(&self, key: &str) -> String;
    /// Opens an object for streaming; `ErrorKind::NotFound` if absent.
    fn open(&self, key: &str) -> io::Result<Box<dyn Read + Send>>;
    /// Starts writing an object (replacing any old one on commit).
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Keys under a prefix.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// The object as a file on this machine, where the backend keeps it so
    /// (the sandboxed verifier reads it in place); `None` means fetch it.
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// Takes the destination's writer lock, waiting if another cairn holds it.
    fn lock(&self) -> io::Result<Box<dyn Send>>;

    /// A small object read whole; `None` if absent.
    fn get_small(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.open(key) {
            Ok(mut r) => {
                const LIMIT: u64 = 64 << 20;
                let mut v = Vec::new();
                r.by_ref().take(LIMIT + 1).read_to_end(&mut v)?;
                if v.len() as u64 > LIMIT {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{key} is over 64 MiB, too large for a cairn metadata file"),
                    ));
                }
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a small object atomically.
    fn put_small(&self, key: &str, data: &[u8]) -> io::Result<()> {
        let mut w = self.create(key)?;
        w.write_all(data)?;
        w.commit()
    }
}
