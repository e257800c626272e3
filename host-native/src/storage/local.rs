//! A local directory. Objects are written to a hidden temp file beside their
//! final name, fsynced, renamed into place, and the directory fsynced.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{ObjectWriter, Storage};

pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A destination rooted at `root`, which need not exist yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        cairn_core::catalog::validate_object_key(key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(self.root.join(key))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct LocalWriter {
    file: BufWriter<tempfile::NamedTempFile>,
    dest: PathBuf,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(self: Box<Self>) -> io::Result<()> {
        let tmp = self.file.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.dest).map_err(|e| e.error)?;
        sync_dir(self.dest.parent().expect("objects live in a directory"))
    }
}

impl Storage for LocalDir {
    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn open(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(self.path(key)?)?))
    }

    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key)?;
        let dir = dest.parent().expect("a key has a file name");
        fs::create_dir_all(dir)?;
        let name = dest
            .file_name()
            .expect("a key has a file name")
            .to_string_lossy();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        Ok(Box::new(LocalWriter {
            file: BufWriter::with_capacity(1 << 20, tmp),
            dest,
        }))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.root.join(prefix);
        let mut out = Vec::new();
        match fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let name = e?.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') {
                        out.push(format!("{prefix}{name}"));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out)
    }

    fn lock(&self) -> io::Result<Box<dyn Send>> {
        fs::create_dir_all(&self.root)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".cairn.lock"))?;
        if file.try_lock().is_err() {
            eprintln!(
                "waiting for another cairn process writing to {}",
                self.root.display()
            );
            file.lock()?;
        }
        Ok(Box::new(file))
    }
}
