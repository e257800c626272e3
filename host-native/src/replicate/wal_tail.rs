//! Following a live database's WAL without ever missing a frame.
//!
//! SQLite restarts its WAL (frames from 1 again, new salts) only when every
//! frame is in the database file and no reader is using the WAL. So we
//! always hold a read transaction: two connections take turns, the new one
//! starting before the old one ends, and the WAL is read to its end in
//! between. A checkpoint cannot copy frames past our newest read
//! transaction into the file, so the log can only restart once we have read
//! all of it: a restart we see is then a continuation, and anything else (a
//! jump of the salts, a WAL that shrank or vanished under us, another
//! database file) means frames may have been missed (docs/FORMAT.md §13.7).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_core::wal::{Continuity, Txn, WAL_HEADER_LEN, WalCursor, WalHeader};
use rusqlite::{Connection, OpenFlags};

/// What one look at the WAL found.
pub enum Poll {
    /// Transactions committed since the last poll (possibly none).
    Txns(Vec<Txn>),
    /// Frames may have been missed: start a new generation.
    Lost(String),
}

pub struct WalTail {
    db: PathBuf,
    wal: PathBuf,
    pins: [Connection; 2],
    /// Which of `pins` holds the current read transaction.
    held: Option<usize>,
    checkpointer: Connection,
    /// The log being followed (None: no WAL yet, or an empty one).
    pub cursor: Option<WalCursor>,
    ino: u64,
    pub page_size: u32,
}

fn open(db: &Path, flags: OpenFlags) -> Result<Connection> {
    let c = Connection::open_with_flags(db, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open database {}", db.display()))?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

impl WalTail {
    pub fn open(db: &Path) -> Result<WalTail> {
        crate::snapshot::check_is_sqlite(db)?;
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE;
        let checkpointer = open(db, rw)?;
        // A RESTART checkpoint waits for the application's readers; a short
        // wait keeps shipping on time (it is tried again later).
        checkpointer.busy_timeout(Duration::from_millis(200))?;
        let mode: String = checkpointer
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .with_context(|| format!("cannot read the journal mode of {}", db.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "{} is not in WAL mode (journal_mode is {mode}); replication follows the WAL: run `sqlite3 {} 'PRAGMA journal_mode=WAL'` once",
                db.display(),
                db.display()
            );
        }
        let page_size: u32 = checkpointer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pins = [open(db, rw)?, open(db, rw)?];
        for c in pins.iter().chain([&checkpointer]) {
            // Our connections never write, but never let them checkpoint on close either.
            c.execute_batch("PRAGMA wal_autocheckpoint=0")?;
        }
        let ino = std::fs::metadata(db)?.ino();
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let mut t = WalTail {
            db: db.to_path_buf(),
            wal: PathBuf::from(wal),
            pins,
            held: None,
            checkpointer,
            cursor: None,
            ino,
            page_size,
        };
        t.hold()?;
        Ok(t)
    }

    /// Takes a new read transaction on the spare connection and returns
    /// the old one, to be ended (by [`end`](Self::end)) only after the WAL
    /// was read: so one is always held while we read.
    fn begin(&mut self) -> Result<Option<usize>> {
        let old = self.held;
        let next = old.map_or(0, |h| 1 - h);
        let c = &self.pins[next];
        c.execute_batch("BEGIN")?;
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .with_context(|| format!("cannot read {}", self.db.display()))?;
        self.held = Some(next);
        Ok(old)
    }

    fn end(&mut self, old: Option<usize>) -> Result<()> {
        if let Some(o) = old {
            self.pins[o].execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn hold(&mut self) -> Result<()> {
        let old = self.begin()?;
        self.end(old)
    }

    fn release_all(&mut self) -> Result<()> {
        if let Some(h) = self.held.take() {
            self.pins[h].execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    fn header(&self) -> Result<Option<(WalHeader, File)>> {
        let f = match File::open(&self.wal) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open {}", self.wal.display()));
            }
        };
        let mut b = [0u8; WAL_HEADER_LEN];
        match f.read_exact_at(&mut b, 0) {
            Ok(()) => {}
            // Empty (truncated by a checkpoint): no log yet.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.wal.display())),
        }
        let h = WalHeader::parse(&b).with_context(|| format!("{}", self.wal.display()))?;
        Ok(Some((h, f)))
    }

    fn read_from(&mut self, f: &File) -> Result<Vec<Txn>> {
        let c = self.cursor.as_mut().expect("a cursor");
        let len = f.metadata()?.len();
        let at = c.offset();
        if len <= at {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (len - at) as usize];
        f.read_exact_at(&mut buf, at)
            .with_context(|| format!("cannot read {}", self.wal.display()))?;
        Ok(c.read(&buf))
    }

    /// Starts following the WAL as it is now, from its first frame (a new
    /// generation: its snapshot is taken while this read transaction holds
    /// the log in place). Returns the header seen.
    pub fn restart_from_scratch(&mut self) -> Result<Option<WalHeader>> {
        if self.held.is_none() {
            self.hold()?;
        }
        self.ino = std::fs::metadata(&self.db)?.ino();
        let h = self.header()?.map(|(h, _)| h);
        self.cursor = h.map(WalCursor::new);
        Ok(h)
    }

    /// The header now, to compare with the one seen before a snapshot.
    pub fn header_now(&self) -> Result<Option<WalHeader>> {
        Ok(self.header()?.map(|(h, _)| h))
    }

    /// Reads what was committed since the last poll.
    pub fn poll(&mut self) -> Result<Poll> {
        let old = self.begin()?;
        let r = self.poll_inner();
        self.end(old)?;
        r
    }

    fn poll_inner(&mut self) -> Result<Poll> {
        match std::fs::metadata(&self.db) {
            Ok(m) if m.ino() == self.ino => {}
            _ => return Ok(Poll::Lost(format!("{} was replaced", self.db.display()))),
        }
        let Some((h, f)) = self.header()? else {
            return Ok(match &self.cursor {
                // A WAL that vanished or was emptied while we held a read
                // transaction on it: someone forced it (TRUNCATE by another
                // process cannot pass us; a deleted file can).
                Some(c) if c.next_frame > 1 => Poll::Lost(format!(
                    "{} was emptied or removed by another process",
                    self.wal.display()
                )),
                _ => Poll::Txns(Vec::new()),
            });
        };
        match self.cursor.map(|c| c.header.continuity(&h)) {
            None => self.cursor = Some(WalCursor::new(h)),
            Some(Continuity::Same) => {}
            Some(Continuity::Restarted) => self.cursor = Some(WalCursor::new(h)),
            Some(Continuity::Replaced) => {
                return Ok(Poll::Lost(format!(
                    "{} was reset by another process (its salts changed)",
                    self.wal.display()
                )));
            }
        }
        if f.metadata()?.len() < self.cursor.expect("set").offset() {
            return Ok(Poll::Lost(format!(
                "{} shrank under a live reader",
                self.wal.display()
            )));
        }
        Ok(Poll::Txns(self.read_from(&f)?))
    }

    /// Closes the connections before the database is followed anew: the
    /// last connection to close deletes the `-wal` file by name, which must
    /// happen before a new database's WAL can be there.
    pub fn close(&mut self) -> Result<()> {
        self.held = None;
        for c in self.pins.iter_mut().chain([&mut self.checkpointer]) {
            let old = std::mem::replace(c, Connection::open_in_memory()?);
            drop(old);
        }
        Ok(())
    }

    /// Bytes of the log in use up to what we have read (the file itself
    /// keeps its size after a restart, so that is not the measure).
    pub fn log_bytes(&self) -> u64 {
        self.cursor.map_or(0, |c| c.offset())
    }

    /// Copies what it can into the database file (never waits on writers).
    pub fn checkpoint_passive(&mut self) -> Result<()> {
        self.checkpointer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .with_context(|| format!("checkpoint of {} failed", self.db.display()))
    }

    /// Restarts the log so the WAL stops growing: ends our read
    /// transactions, checkpoints in RESTART mode, then reads the frames
    /// committed between our last read and the checkpoint (still in the file:
    /// the restart only takes effect at the next write). Returns them, or
    /// `Lost` if a writer overwrote them first.
    pub fn checkpoint_restart(&mut self) -> Result<Poll> {
        self.release_all()?;
        let r: rusqlite::Result<(i64, i64, i64)> =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
        let (busy, log, _) = match r {
            Ok(x) => x,
            Err(e) => {
                self.hold()?;
                return Err(e)
                    .with_context(|| format!("checkpoint of {} failed", self.db.display()));
            }
        };
        if busy != 0 || log < 0 {
            // Readers or a writer held it off: nothing restarted; go on.
            self.hold()?;
            return Ok(Poll::Txns(Vec::new()));
        }
        // Every frame up to `log` is in the database file now, and the next
        // writer starts the log again from frame 1. Read what we had not
        // read with the old salts: frames still in the file check out, frames
        // already overwritten end the log early.
        let txns = match self.cursor {
            Some(c) => {
                let f = File::open(&self.wal)
                    .with_context(|| format!("cannot open {}", self.wal.display()))?;
                let t = self.read_from(&f)?;
                let end = self.cursor.expect("set").next_frame - 1;
                if end < log as u64 {
                    self.hold()?;
                    return Ok(Poll::Lost(format!(
                        "frames {}..{log} of {} were overwritten before they were read (log at frame {})",
                        end + 1,
                        self.wal.display(),
                        c.next_frame - 1
                    )));
                }
                t
            }
            None if log > 0 => {
                self.hold()?;
                return Ok(Poll::Lost(format!(
                    "{} held frames no reader had followed",
                    self.wal.display()
                )));
            }
            None => Vec::new(),
        };
        self.hold()?;
        Ok(Poll::Txns(txns))
    }
}
