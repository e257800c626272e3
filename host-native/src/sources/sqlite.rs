//! Consistent online snapshots of a SQLite database. Writers in other
//! processes carry on, and committed content still in the WAL is included.
//!
//! Two ways, the first preferred:
//! - **Pinned** (WAL mode): hold a read transaction and read the database
//!   file itself, streaming it straight into the pipeline (no copy). It is
//!   used only when the file provably holds exactly that transaction's view:
//!   a PASSIVE checkpoint run *after* the transaction began reports every
//!   WAL frame backfilled. Frames a writer adds later cannot be backfilled
//!   while we read (SQLite never checkpoints past a live reader's snapshot),
//!   so the file stays that view until we end the transaction.
//! - **Copy** (rollback-journal mode, or when writers keep the WAL busy):
//!   SQLite's online backup API copies all pages in one step under one read
//!   transaction into a temp file, which the pipeline then reads.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, ffi};

pub struct Snapshot {
    source: Source,
    pub size: u64,
    pub page_size: u32,
}

enum Source {
    Copy(tempfile::NamedTempFile),
    /// The pages are read through the connection's own file handle: opening
    /// and closing a descriptor of our own would drop every POSIX lock this
    /// process holds on the file when it closes, SQLite's included (and an
    /// app that embeds cairn holds its own).
    Pinned(Connection),
}

/// Reads a database through SQLite's VFS handle of a connection that holds
/// a read transaction (see `pin` for why the file is the snapshot).
struct PinnedReader<'a> {
    file: *mut ffi::sqlite3_file,
    pos: u64,
    size: u64,
    _conn: std::marker::PhantomData<&'a Connection>,
}

// Safety: the connection is borrowed for the reader's life and runs nothing
// meanwhile; the unix VFS's xRead is a pread on its descriptor, which is
// safe from another thread.
unsafe impl Send for PinnedReader<'_> {}

impl PinnedReader<'_> {
    fn new(conn: &Connection, size: u64) -> Result<PinnedReader<'_>> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // Safety: FILE_POINTER writes the main database's sqlite3_file* into
        // `file`; the connection outlives the reader (the borrow above).
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            )
        };
        if rc != ffi::SQLITE_OK || file.is_null() || unsafe { (*file).pMethods.is_null() } {
            bail!("cannot reach the database file through SQLite (code {rc})");
        }
        Ok(PinnedReader {
            file,
            pos: 0,
            size,
            _conn: std::marker::PhantomData,
        })
    }

    fn file_size(&self) -> Result<u64> {
        let mut n: ffi::sqlite3_int64 = 0;
        // Safety: a valid sqlite3_file with its methods (checked in new).
        let rc = unsafe {
            match (*(*self.file).pMethods).xFileSize {
                Some(f) => f(self.file, &mut n),
                None => ffi::SQLITE_MISUSE,
            }
        };
        if rc != ffi::SQLITE_OK {
            bail!("cannot size the database file (SQLite code {rc})");
        }
        Ok(n.max(0) as u64)
    }
}

impl std::io::Read for PinnedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.size - self.pos).min(buf.len() as u64).min(1 << 30) as usize;
        if n == 0 {
            return Ok(0);
        }
        // Safety: as in file_size; `buf` holds at least n bytes.
        let rc = unsafe {
            match (*(*self.file).pMethods).xRead {
                Some(f) => f(
                    self.file,
                    buf.as_mut_ptr().cast(),
                    n as i32,
                    self.pos as i64,
                ),
                None => ffi::SQLITE_MISUSE,
            }
        };
        if rc != ffi::SQLITE_OK {
            // Including SQLITE_IOERR_SHORT_READ: the size was checked up front.
            return Err(std::io::Error::other(format!(
                "reading the database at byte {} failed (SQLite code {rc})",
                self.pos
            )));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Snapshot {
    /// The snapshot's bytes, from the first page to the last.
    pub fn reader(&self) -> Result<Box<dyn std::io::Read + Send + '_>> {
        Ok(match &self.source {
            Source::Copy(t) => {
                Box::new(std::fs::File::open(t.path()).context("cannot reopen the snapshot")?)
            }
            Source::Pinned(conn) => Box::new(PinnedReader::new(conn, self.size)?),
        })
    }

    /// How it was taken: "pinned" (read in place) or "copy" (backup API).
    pub fn method(&self) -> &'static str {
        match self.source {
            Source::Copy(_) => "copy",
            Source::Pinned(_) => "pinned",
        }
    }
}

/// Refuses anything that is not a SQLite database, naming what it is.
pub fn check_is_sqlite(db: &Path) -> Result<()> {
    let meta = std::fs::metadata(db).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow!("database {} not found: check the path", db.display())
        }
        _ => anyhow!("cannot read database {}: {e}", db.display()),
    })?;
    if !meta.is_file() {
        bail!(
            "{} is not a file: give the path of a SQLite database file",
            db.display()
        );
    }
    let head = read_head(db).with_context(|| format!("cannot read database {}", db.display()))?;
    if head.is_empty() {
        // SQLite itself (and Python's `sqlite3.connect`) makes a new
        // database as an empty file: it is a valid database with no tables.
        return Ok(());
    }
    let kind = cairn_core::sniff(&head);
    if kind != cairn_core::Kind::Sqlite {
        bail!(
            "{} is not a SQLite database (it looks like {}): check the path",
            db.display(),
            kind.describe()
        );
    }
    Ok(())
}

/// The first 100 bytes of `db` (fewer if it is shorter: the database
/// header), read through SQLite's own file handle.
///
/// Why not `File::open`: POSIX record locks belong to the process, and
/// closing *any* descriptor of a file drops every lock the process holds on
/// it, SQLite's included. A replicator holding its read transaction (or an
/// app embedding cairn) would lose its SHARED lock on the database without
/// knowing; the application's last connection then finds itself alone when
/// it closes, checkpoints the whole WAL and deletes it under the reader
/// (seen: every `sqlite3.connect(...).close()` of an app forced a new
/// generation and a full snapshot). SQLite's unix VFS keeps a descriptor
/// open while other connections of the process hold locks on the file.
pub fn read_head(db: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut r = PinnedReader::new(&conn, 0)?;
    r.size = r.file_size()?.min(100);
    let mut head = Vec::with_capacity(100);
    r.read_to_end(&mut head)?;
    Ok(head)
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
        || e.to_string().contains("disk is full")
        || e.to_string().contains("disk I/O error")
}

/// How long a backup waits, by default, for another process's lock that
/// keeps readers out of the database.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Takes a snapshot of `db`: pinned when that is provably consistent, else
/// a copy in a new temporary file in `temp_dir`. Waits up to `lock_timeout`
/// for another process's lock, saying so at once.
pub fn take(db: &Path, temp_dir: &Path, lock_timeout: Duration) -> Result<Snapshot> {
    check_is_sqlite(db)?;
    wait_readable(db, lock_timeout)?;
    // Any error on the pinned path (a read-only directory, a busy WAL)
    // only means the copy is used.
    if let Ok(Some(snap)) = pin(db, lock_timeout) {
        return Ok(snap);
    }
    copy(db, temp_dir, lock_timeout)
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn locked_error(db: &Path, timeout: Duration) -> anyhow::Error {
    anyhow!(
        "database {} is locked by another process (a write lock: a write transaction, or locking_mode=EXCLUSIVE) for more than {}: retry when that writer is done, or raise --lock-timeout",
        db.display(),
        humantime::format_duration(timeout)
    )
}

/// Polls until a read transaction can start, so that a wait is announced
/// on stderr at once rather than spent silently inside SQLite's busy handler.
fn wait_readable(db: &Path, timeout: Duration) -> Result<()> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {}", db.display()))?;
    // rusqlite's default busy handler would wait 5 s silently: poll instead.
    conn.busy_timeout(Duration::ZERO)?;
    let start = Instant::now();
    let mut said = false;
    loop {
        match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
            Err(e) if is_busy(&e) => {
                if start.elapsed() >= timeout {
                    return Err(locked_error(db, timeout));
                }
                if !said {
                    eprintln!(
                        "waiting for the lock on {}: another process holds a write lock on it (waiting up to {}, --lock-timeout)",
                        db.display(),
                        humantime::format_duration(timeout)
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Other errors are reported by the snapshot itself.
            _ => return Ok(()),
        }
    }
}

/// A read transaction on a WAL database whose file holds exactly its view,
/// or None.
fn pin(db: &Path, lock_timeout: Duration) -> Result<Option<Snapshot>> {
    let reader = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    reader.busy_timeout(lock_timeout)?;
    let mode: String = reader.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(None);
    }
    // The checkpointer writes the database, so it needs a read-write handle.
    let ck = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let checkpoint = || -> Result<bool> {
        let (busy, log, done): (i64, i64, i64) =
            ck.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        Ok(busy == 0 && log >= 0 && log == done)
    };
    // Backfill what is committed now, so the check below usually passes.
    checkpoint()?;
    // BEGIN is deferred: the first read is what takes the snapshot.
    reader.execute_batch("BEGIN")?;
    reader.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let page_size: u32 = reader.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: i64 = reader.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    // Now the transaction holds its snapshot. If every frame in the WAL is
    // in the file, none is newer than the snapshot (a checkpoint cannot
    // pass a live reader), so the file is the snapshot.
    if !checkpoint()? {
        return Ok(None);
    }
    drop(ck);
    let size = page_count.max(0) as u64 * u64::from(page_size);
    if PinnedReader::new(&reader, size)?.file_size()? < size {
        return Ok(None);
    }
    Ok(Some(Snapshot {
        source: Source::Pinned(reader),
        size,
        page_size,
    }))
}

/// Copies `db` into a new temporary file in `temp_dir` (online backup API).
fn copy(db: &Path, temp_dir: &Path, lock_timeout: Duration) -> Result<Snapshot> {
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {}", db.display()))?;
    src.busy_timeout(lock_timeout)?;
    let file = tempfile::Builder::new()
        .prefix(".cairn-snapshot-")
        .suffix(".db")
        .tempfile_in(temp_dir)
        .with_context(|| {
            format!(
                "cannot create a temporary file in {} (set --temp-dir)",
                temp_dir.display()
            )
        })?;
    let mut dst = Connection::open(file.path())?;
    dst.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")?;
    let failed = |e: rusqlite::Error| {
        if is_busy(&e) {
            locked_error(db, lock_timeout)
        } else if is_disk_full(&e) {
            anyhow!(
                "snapshot of {} failed: no space left for the temporary copy in {} ({e}); free space or set --temp-dir",
                db.display(),
                temp_dir.display()
            )
        } else {
            anyhow!("snapshot of {} failed: {e}", db.display())
        }
    };
    {
        let backup = Backup::new(&src, &mut dst).map_err(failed)?;
        let deadline = Instant::now() + lock_timeout;
        loop {
            // -1: all pages in one step, under one read transaction: a consistent copy.
            match backup.step(-1).map_err(failed)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => return Err(locked_error(db, lock_timeout)),
            }
        }
    }
    let page_size: u32 = dst.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    dst.close().map_err(|(_, e)| failed(e))?;
    let size = file.as_file().metadata()?.len();
    Ok(Snapshot {
        source: Source::Copy(file),
        size,
        page_size,
    })
}

/// Page cache for `integrity_check`, in KiB (a negative `cache_size`).
const INTEGRITY_CHECK_CACHE_KIB: i64 = 16 << 10;

/// Runs `PRAGMA integrity_check` on a database file without modifying it.
pub fn integrity_check(path: &Path) -> Result<()> {
    let conn = open_immutable(path)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if rows == ["ok"] {
        Ok(())
    } else {
        bail!("PRAGMA integrity_check failed: {}", rows.join("; "))
    }
}

/// Opens a database file read-only, as immutable (no lock, no -wal or
/// -shm), with the page cache `integrity_check` wants.
pub fn open_immutable(path: &Path) -> Result<Connection> {
    let uri = format!("file:{}?immutable=1", uri_escape(&path.to_string_lossy()));
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // integrity_check looks up every row's index entries: with SQLite's
    // default 2 MiB page cache those lookups are mostly re-reads. 16 MiB
    // halves the check of a 256 MiB database (0.96 s -> 0.51 s here) and
    // keeps peak RSS well under the 64 MiB budget (bench/README.md).
    conn.pragma_update(None, "cache_size", -INTEGRITY_CHECK_CACHE_KIB)?;
    Ok(conn)
}

fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
