//! What a backup reads: a SQLite database file ([`sqlite`]) or a PostgreSQL
//! database through `pg_dump` ([`postgres`]). Either gives the pipeline one
//! byte stream; a source that can fail after its last byte (a child
//! process) says so in [`Stream::finish`], before anything is published.

pub mod postgres;
pub mod sqlite;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;
use cairn_core::SourceKind;

pub use postgres::PgSource;

/// A backup source, as given on the command line or in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, dumped with `pg_dump -Fc`.
    Postgres(PgSource),
}

impl From<PathBuf> for Source {
    fn from(p: PathBuf) -> Self {
        Source::Sqlite(p)
    }
}

impl From<PgSource> for Source {
    fn from(p: PgSource) -> Self {
        Source::Postgres(p)
    }
}

impl Source {
    /// `postgres://…` or `postgresql://…` is a PostgreSQL database;
    /// anything else is the path of a SQLite file.
    pub fn parse(arg: &str) -> Result<Source> {
        if postgres::is_url(arg) {
            Ok(Source::Postgres(PgSource::from_url(arg)?))
        } else {
            Ok(Source::Sqlite(PathBuf::from(arg)))
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Sqlite(_) => SourceKind::Sqlite,
            Source::Postgres(_) => SourceKind::Postgres,
        }
    }

    /// The database's name in the catalog (`db_name`, what `list` shows and
    /// `--db` and retention group by): a SQLite file's name, or
    /// `postgres://host:port/database` (no user, no password).
    pub fn catalog_name(&self) -> String {
        match self {
            Source::Sqlite(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Postgres(pg) => pg.display_name(),
        }
    }

    /// How the source is named in messages and reports (never a password).
    pub fn describe(&self) -> String {
        match self {
            Source::Sqlite(p) => p.display().to_string(),
            Source::Postgres(pg) => pg.display_name(),
        }
    }

    /// Cheap checks before any destination is touched: the file is a SQLite
    /// database; the PostgreSQL settings are valid and pg_dump is installed.
    pub fn check(&self) -> Result<()> {
        match self {
            Source::Sqlite(p) => sqlite::check_is_sqlite(p),
            Source::Postgres(pg) => {
                pg.validate()?;
                postgres::tools::find("pg_dump").map(|_| ())
            }
        }
    }

    /// Starts reading: a SQLite snapshot (temp copy in `temp_dir` if
    /// needed; another process's lock waited for up to `lock_timeout`), or
    /// a running `pg_dump`.
    pub fn open(&self, temp_dir: &Path, lock_timeout: std::time::Duration) -> Result<Stream> {
        Ok(match self {
            Source::Sqlite(p) => {
                let snap = sqlite::take(p, temp_dir, lock_timeout)?;
                Stream {
                    size: Some(snap.size),
                    page_size: snap.page_size,
                    inner: Inner::Sqlite(snap),
                }
            }
            Source::Postgres(pg) => Stream {
                size: None,
                page_size: 0,
                inner: Inner::Postgres(postgres::dump::PgDump::start(pg)?),
            },
        })
    }
}

/// An open source: its bytes, then a verdict.
pub struct Stream {
    inner: Inner,
    /// The length, when known before reading (SQLite).
    pub size: Option<u64>,
    /// SQLite's page size; 0 for other sources.
    pub page_size: u32,
}

enum Inner {
    Sqlite(sqlite::Snapshot),
    Postgres(postgres::dump::PgDump),
}

/// What a source established once its stream ended well.
#[derive(Debug, Default, Clone)]
pub struct Finished {
    pub server_version: Option<String>,
    pub dump_format: Option<String>,
    pub pg_dump_version: Option<String>,
}

impl Stream {
    /// The bytes to archive. Call once.
    pub fn reader(&mut self) -> Result<Box<dyn Read + Send + '_>> {
        match &mut self.inner {
            Inner::Sqlite(s) => s.reader(),
            Inner::Postgres(d) => d.reader(),
        }
    }

    /// How the bytes were taken: "pinned" or "copy" (SQLite), "pg_dump".
    pub fn method(&self) -> &'static str {
        match &self.inner {
            Inner::Sqlite(s) => s.method(),
            Inner::Postgres(_) => "pg_dump",
        }
    }

    /// Whether the stream that was read is the whole, good source: for
    /// PostgreSQL, pg_dump exited 0 and wrote a custom-format dump. An
    /// error here must keep the backup from being published.
    pub fn finish(self) -> Result<Finished> {
        match self.inner {
            Inner::Sqlite(_) => Ok(Finished::default()),
            Inner::Postgres(d) => d.finish(),
        }
    }
}
