//! A local directory as a store. Objects are written to a temp name beside
//! their final name (`.<name>.<host>.<pid>.<random>.tmp`), fsynced, and
//! published with `link()` (create-only: fails if the name exists) or
//! `rename()` (overwrite), then the directory is fsynced.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, Body, ByteStream, Cond, ObjectInfo, Put};

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
        if !key.is_empty() {
            cairn_core::catalog::validate_object_key(key)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            // A link inside the destination (`snapshots/` -> elsewhere) could
            // lead a reader or a writer out of it: none is followed.
            let mut p = self.root.clone();
            for seg in key.split('/') {
                p.push(seg);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{} is a symbolic link, which cairn does not follow inside a destination (it could lead out of it): replace it with the real directory or file",
                                p.display()
                            ),
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Ok(self.root.join(key))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open temp file that removes itself unless published.
struct Temp {
    path: PathBuf,
    file: Option<File>,
}

impl Temp {
    fn create(dest: &Path) -> io::Result<Temp> {
        let dir = dest.parent().expect("a key has a directory");
        fs::create_dir_all(dir)?;
        let name = dest
            .file_name()
            .expect("a key has a file name")
            .to_string_lossy();
        let path = dir.join(super::temp_name(&name));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Temp {
            path,
            file: Some(file),
        })
    }

    /// fsync, then publish under `dest`; `Put::Exists` if create-only found one.
    fn publish(mut self, dest: &Path, cond: &Cond) -> io::Result<Put> {
        let file = self.file.take().expect("published once");
        file.sync_all()?;
        drop(file);
        let r = match cond {
            Cond::Overwrite => fs::rename(&self.path, dest).map(|_| Put::Written),
            Cond::CreateOnly => match fs::hard_link(&self.path, dest) {
                Ok(()) => Ok(Put::Written),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Put::Exists),
                Err(e) => Err(e),
            },
        };
        let put = r?;
        sync_dir(dest.parent().expect("a key has a directory"))?;
        Ok(put)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // After a rename the temp name is gone; after a link both names
        // exist and the temp one goes; after a failure the temp goes.
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs file I/O on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("a file task failed: {e}")))?
}

/// Whether a temp name was left by a process of this host that is gone.
fn dead_writer(name: &str) -> bool {
    // .<final>.<host>.<pid>.<random>.tmp
    let mut parts = name.rsplit('.');
    let (_tmp, _rand, pid, host) = (parts.next(), parts.next(), parts.next(), parts.next());
    let (Some(pid), Some(host)) = (pid.and_then(|p| p.parse::<i32>().ok()), host) else {
        return false;
    };
    if host != super::hostname() || pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Removes the temp files of `final_name` in `dir` (`.<final_name>.<host>.<pid>.<random>.tmp`)
/// whose writer, a process of this host, is gone: what a killed restore or
/// pull leaves beside its target. Nothing else in `dir` is touched.
pub fn sweep_dead_temps_of(dir: &Path, final_name: &str) -> usize {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!(".{final_name}.");
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix)
            && super::is_temp_name(&name)
            && e.file_type().is_ok_and(|t| t.is_file())
            && dead_writer(&name)
            && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// [`sweep_dir`] on `dir` and the directories below it: replication's
/// segments and lease records live four levels down
/// (`generations/<gen>/segments/<LL>/`, `replication/<db>/lease/`).
fn sweep_tree(dir: &Path, cutoff_ms: i64, removed: &mut usize, depth: usize) -> io::Result<()> {
    sweep_dir(dir, cutoff_ms, removed)?;
    if depth >= 4 {
        return Ok(());
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            // Not through symlinks: a sweep stays inside the destination.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                sweep_tree(&e.path(), cutoff_ms, removed, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn sweep_dir(dir: &Path, cutoff_ms: i64, removed: &mut usize) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // A writer racing the sweep may rename its temp between the listing
        // and this look: gone is fine, it is what a sweep wants anyway.
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() || !super::is_temp_name(&name) {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|d| (d.as_millis() as i64) < cutoff_ms);
        if (old || dead_writer(&name)) && fs::remove_file(e.path()).is_ok() {
            *removed += 1;
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalDir {
    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn scheme(&self) -> &'static str {
        "local"
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let p = self.path(key)?;
        blocking(move || match fs::read(&p) {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn read(&self, key: &str) -> io::Result<ByteStream> {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;
        let f = tokio::fs::File::open(self.path(key)?).await?;
        let s = futures::stream::unfold(Some(f), |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; 256 << 10];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(s.boxed())
    }

    async fn put(&self, key: &str, data: Bytes, cond: Cond) -> io::Result<Put> {
        let dest = self.path(key)?;
        blocking(move || {
            let mut t = Temp::create(&dest)?;
            t.file.as_mut().expect("open").write_all(&data)?;
            t.publish(&dest, &cond)
        })
        .await
    }

    async fn upload(&self, key: &str, mut body: Body, cond: Cond) -> io::Result<Put> {
        let dest = self.path(key)?;
        let d = dest.clone();
        let mut t = blocking(move || Temp::create(&d)).await?;
        while let Some(piece) = body.next().await? {
            let mut file = t.file.take().expect("open");
            let (back, r) = tokio::task::spawn_blocking(move || {
                let r = file.write_all(&piece);
                (file, r)
            })
            .await
            .map_err(|e| io::Error::other(format!("a file task failed: {e}")))?;
            t.file = Some(back);
            r?;
        }
        blocking(move || t.publish(&dest, &cond)).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>> {
        let dir = self.root.join(prefix);
        let prefix = prefix.to_string();
        let after = start_after.map(str::to_string);
        blocking(move || {
            let mut out = Vec::new();
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let meta = e.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                let key = format!("{prefix}{name}");
                if after.as_deref().is_some_and(|a| key.as_str() <= a) {
                    continue;
                }
                let modified_ms = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64);
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified_ms,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> io::Result<()> {
        let paths = keys
            .iter()
            .map(|k| self.path(k))
            .collect::<io::Result<Vec<_>>>()?;
        blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for p in paths {
                match fs::remove_file(&p) {
                    Ok(()) => {
                        dirs.insert(p.parent().map(Path::to_path_buf));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            for d in dirs.into_iter().flatten() {
                sync_dir(&d)?;
            }
            Ok(())
        })
        .await
    }

    async fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize> {
        let root = self.root.clone();
        let cutoff = super::now_ms() - older_than_ms;
        blocking(move || {
            let mut removed = 0;
            sweep_tree(&root, cutoff, &mut removed, 0)?;
            Ok(removed)
        })
        .await
    }
}
