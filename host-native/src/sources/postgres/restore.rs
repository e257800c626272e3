//! Restoring into PostgreSQL: a writer that takes the decoded stream,
//! decides from its first bytes what it holds (never from the catalog), and
//! feeds the right client:
//!
//! - a pg_dump custom-format dump → `pg_restore --single-transaction`,
//!   streamed; with `--jobs N` it is written to a temp file first (parallel
//!   pg_restore needs a seekable file) and restored once fully checked;
//! - plain SQL text → `psql --single-transaction`, only when allowed;
//! - a SQLite database or anything else → refused.
//!
//! A streamed restore commits only when its input ends: cairn holds back the
//! stream's last bytes (without them the client cannot reach its COMMIT),
//! sends them and closes the child's stdin only after every chunk, the
//! trailer and the catalog entry have been checked, and kills the child
//! otherwise, so a bad archive restores nothing.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use cairn_core::Kind;

use super::PgSource;
use super::tools::{self, Running};

/// How to restore, from `cairn restore --to`.
pub struct Target<'a> {
    pub pg: &'a PgSource,
    /// Drop the dump's objects before recreating them (`--clean --if-exists`).
    pub clean: bool,
    /// CREATE DATABASE the target first (connecting to `postgres`).
    pub create: bool,
    /// Parallel pg_restore from a temp file.
    pub jobs: Option<u32>,
    pub allow_sql_fallback: bool,
    pub temp_dir: &'a Path,
    /// The backup id, for messages.
    pub backup: &'a str,
}

/// How it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    /// What the archive held: "pg_dump custom format" or "SQL text".
    pub content: &'static str,
    /// "pg_restore" or "psql".
    pub tool: &'static str,
    /// "streamed, one transaction" or "from a temp file, N jobs".
    pub method: String,
    /// The target database was created by this restore (`--create`).
    pub created: bool,
}

enum State {
    Sniffing(Vec<u8>),
    Pipe(Running),
    File(BufWriter<tempfile::NamedTempFile>),
    Refused,
}

pub struct Sink<'a> {
    t: Target<'a>,
    state: State,
    /// The newest bytes for a piped client, not yet sent.
    held: Vec<u8>,
    kind: Option<Kind>,
    created: bool,
    refused: Option<anyhow::Error>,
}

const SNIFF: usize = 4096;
/// Bytes held back from a piped client until the archive checked out.
const HOLD: usize = 64 << 10;

impl<'a> Sink<'a> {
    pub fn new(t: Target<'a>) -> Self {
        Sink {
            t,
            state: State::Sniffing(Vec::new()),
            held: Vec::new(),
            kind: None,
            created: false,
            refused: None,
        }
    }

    /// The decision, once enough bytes (or all of them) are in.
    fn start(&mut self) -> Result<()> {
        let State::Sniffing(head) = std::mem::replace(&mut self.state, State::Refused) else {
            return Ok(());
        };
        let kind = cairn_core::sniff(&head);
        let id = self.t.backup;
        match kind {
            Kind::PgDumpCustom => {}
            Kind::SqlText if !self.t.allow_sql_fallback => bail!(
                "backup {id} holds plain SQL text, not a pg_dump custom-format dump: pass --allow-sql-fallback to run it with psql (one transaction, stopping at the first error)"
            ),
            Kind::SqlText if self.t.clean || self.t.jobs.is_some() => bail!(
                "backup {id} holds plain SQL text: --clean and --jobs apply only to pg_dump custom-format dumps; leave them out"
            ),
            Kind::SqlText => {}
            Kind::Sqlite => bail!(
                "backup {id} holds a SQLite database, not a PostgreSQL dump: restore it to a file with -o PATH instead of --to"
            ),
            other => bail!(
                "backup {id} holds {}, not a PostgreSQL dump: restore it to a file with -o PATH",
                other.describe()
            ),
        }
        self.kind = Some(kind);
        // The client programs must be there before anything is created.
        let tool = if kind == Kind::SqlText {
            "psql"
        } else {
            "pg_restore"
        };
        let bin = tools::find(tool)?;
        if self.t.create {
            create_database(self.t.pg)?;
            self.created = true;
        }
        self.state = match (kind, self.t.jobs) {
            (Kind::PgDumpCustom, Some(_)) => {
                let f = tempfile::Builder::new()
                    .prefix(".cairn-restore-")
                    .suffix(".pgdump")
                    .tempfile_in(self.t.temp_dir)
                    .with_context(|| {
                        format!(
                            "cannot create a temporary file in {} for --jobs; set --temp-dir",
                            self.t.temp_dir.display()
                        )
                    })?;
                State::File(BufWriter::with_capacity(1 << 20, f))
            }
            (Kind::PgDumpCustom, None) => {
                let mut cmd = Command::new(bin);
                cmd.args(["--single-transaction", "--exit-on-error", "--no-password"]);
                if self.t.clean {
                    cmd.args(["--clean", "--if-exists"]);
                }
                cmd.arg(format!("--dbname={}", self.t.pg.conninfo()));
                State::Pipe(self.spawn("pg_restore", cmd)?)
            }
            _ => {
                let mut cmd = Command::new(bin);
                cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"])
                    .args(["--no-password", "-f", "-"])
                    .arg(format!("--dbname={}", self.t.pg.conninfo()));
                State::Pipe(self.spawn("psql", cmd)?)
            }
        };
        self.forward(&head)
    }

    fn spawn(&self, what: &'static str, mut cmd: Command) -> Result<Running> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::null());
        self.t.pg.apply_env(&mut cmd);
        Running::spawn(what, cmd)
    }

    fn forward(&mut self, buf: &[u8]) -> Result<()> {
        match &mut self.state {
            State::Pipe(c) => {
                self.held.extend_from_slice(buf);
                if self.held.len() < 2 * HOLD {
                    return Ok(());
                }
                let n = self.held.len() - HOLD;
                c.stdin
                    .as_mut()
                    .expect("stdin is open until finish")
                    .write_all(&self.held[..n])
                    .map_err(|e| anyhow!("cannot write to {}: {e}", c.what))?;
                self.held.drain(..n);
                Ok(())
            }
            State::File(f) => f.write_all(buf).with_context(|| {
                format!(
                    "cannot write the temporary dump in {}",
                    self.t.temp_dir.display()
                )
            }),
            State::Sniffing(_) | State::Refused => Ok(()),
        }
    }

    fn fail(&mut self, e: anyhow::Error) -> std::io::Error {
        self.refused = Some(e);
        std::io::Error::other("the restore stopped")
    }

    /// The stream decoded and matched its catalog entry: let the client
    /// finish (and commit), or run the parallel restore from the file.
    pub fn finish(mut self) -> Result<Restored> {
        let result = self.finish_inner();
        self.after(result)
    }

    fn finish_inner(&mut self) -> Result<Restored> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        if matches!(self.state, State::Sniffing(_)) {
            self.start()?;
        }
        let kind = self.kind.expect("decided in start");
        let content = if kind == Kind::SqlText {
            "SQL text"
        } else {
            "pg_dump custom format"
        };
        match std::mem::replace(&mut self.state, State::Refused) {
            State::Pipe(mut child) => {
                let tool = child.what;
                let sent = child
                    .stdin
                    .as_mut()
                    .expect("stdin is open until finish")
                    .write_all(&self.held);
                // A client that stopped early says why in its stderr.
                child.finish()?;
                sent.map_err(|e| anyhow!("cannot write to {tool}: {e}"))?;
                Ok(Restored {
                    content,
                    tool,
                    method: "streamed, one transaction".into(),
                    created: self.created,
                })
            }
            State::File(f) => {
                let f = f
                    .into_inner()
                    .map_err(|e| anyhow!("cannot write the temporary dump: {}", e.error()))?;
                let jobs = self.t.jobs.unwrap_or(1).max(1);
                let mut cmd = Command::new(tools::find("pg_restore")?);
                cmd.args(["--exit-on-error", "--no-password"])
                    .arg(format!("--jobs={jobs}"));
                if self.t.clean {
                    cmd.args(["--clean", "--if-exists"]);
                }
                cmd.arg(format!("--dbname={}", self.t.pg.conninfo()))
                    .arg(f.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                self.t.pg.apply_env(&mut cmd);
                Running::spawn("pg_restore", cmd)?.finish()?;
                Ok(Restored {
                    content,
                    tool: "pg_restore",
                    method: format!("from a temp file, {jobs} jobs"),
                    created: self.created,
                })
            }
            State::Sniffing(_) | State::Refused => Err(anyhow!("the restore did not start")),
        }
    }

    /// Decoding failed (damage, a wrong key, a catalog mismatch) or the
    /// client stopped: stop the client before its input ends, so its
    /// transaction rolls back, and say which failure came first.
    pub fn abort(mut self, e: anyhow::Error) -> anyhow::Error {
        let result = self.abort_inner(e);
        match self.after(Err(result)) {
            Err(e) => e,
            Ok(_) => unreachable!("after keeps an error"),
        }
    }

    fn abort_inner(&mut self, e: anyhow::Error) -> anyhow::Error {
        if let Some(r) = self.refused.take() {
            return r;
        }
        match std::mem::replace(&mut self.state, State::Refused) {
            State::Pipe(mut child) => {
                if child.has_exited() {
                    // It stopped on its own (a bad dump, a failing
                    // statement): its stderr says why.
                    if let Err(ce) = child.finish() {
                        return ce;
                    }
                    return e;
                }
                let what = child.what;
                child.kill();
                anyhow!(
                    "{e:#}; {what} was stopped before the end of its input, so its transaction was rolled back: nothing was restored"
                )
            }
            _ => anyhow!("{e:#}; nothing was restored"),
        }
    }

    /// On failure, a database this restore created is dropped again.
    fn after(&self, r: Result<Restored>) -> Result<Restored> {
        match r {
            Err(e) if self.created => {
                let name = &self.t.pg.database;
                match drop_database(self.t.pg) {
                    Ok(()) => Err(anyhow!(
                        "{e:#} (the database {name} that --create made was dropped again)"
                    )),
                    Err(d) => Err(anyhow!(
                        "{e:#} (and dropping the database {name} that --create made failed too: {d:#})"
                    )),
                }
            }
            r => r,
        }
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.refused.is_some() {
            return Err(std::io::Error::other("the restore stopped"));
        }
        if let State::Sniffing(head) = &mut self.state {
            head.extend_from_slice(buf);
            if head.len() >= SNIFF
                && let Err(e) = self.start()
            {
                return Err(self.fail(e));
            }
            return Ok(buf.len());
        }
        if let Err(e) = self.forward(buf) {
            return Err(self.fail(e));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `"name"` as a PostgreSQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Runs one statement with psql on the server's `postgres` database.
fn admin(pg: &PgSource, sql: &str) -> Result<()> {
    let maintenance = pg.with_database("postgres");
    let mut cmd = Command::new(tools::find("psql")?);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"])
        .arg(format!("--dbname={}", maintenance.conninfo()))
        .args(["-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    pg.apply_env(&mut cmd);
    Running::spawn("psql", cmd)?.finish()
}

fn create_database(pg: &PgSource) -> Result<()> {
    admin(
        pg,
        &format!("CREATE DATABASE {}", quote_ident(&pg.database)),
    )
    .map_err(|e| {
        anyhow!(
            "--create: cannot create database {} on {}: {e:#}",
            pg.database,
            pg.display_name()
        )
    })
}

fn drop_database(pg: &PgSource) -> Result<()> {
    admin(pg, &format!("DROP DATABASE {}", quote_ident(&pg.database)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("shop"), "\"shop\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
