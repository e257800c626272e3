//! `pg_dump -Fc -Z0` as a running child whose stdout is the backup stream:
//! no temporary file, memory bounded by the pipeline's queues. pg_dump
//! compresses nothing (`-Z0`); cairn's parallel deflate does. Its stream
//! counts only once it has exited 0 ([`PgDump::finish`]): a pg_dump killed
//! half-way ends its stdout like a finished one.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow, bail};

use super::tools::{self, Running};
use super::{PgSource, header};
use crate::sources::Finished;

/// Bytes of the stream's start kept for the header (its strings are short).
const HEAD_KEEP: usize = 8 << 10;

pub struct PgDump {
    child: Running,
    source: String,
    head: Arc<Mutex<Vec<u8>>>,
}

impl PgDump {
    /// Starts pg_dump on `pg`; its output is read through [`PgDump::reader`].
    pub fn start(pg: &PgSource) -> Result<PgDump> {
        pg.validate()?;
        let bin = tools::find("pg_dump")?;
        let mut cmd = Command::new(bin);
        cmd.args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--dbname={}", pg.conninfo()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        pg.apply_env(&mut cmd);
        Ok(PgDump {
            child: Running::spawn("pg_dump", cmd)?,
            source: pg.display_name(),
            head: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// pg_dump's stdout, keeping a copy of its first bytes.
    pub fn reader(&mut self) -> Result<Box<dyn Read + Send + '_>> {
        let out = self
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("pg_dump's output was already read"))?;
        Ok(Box::new(HeadCopy {
            inner: out,
            head: self.head.clone(),
        }))
    }

    /// Waits for pg_dump: only an exit status of 0 with a custom-format
    /// dump on stdout makes the stream a backup.
    pub fn finish(self) -> Result<Finished> {
        let PgDump {
            child,
            source,
            head,
        } = self;
        child
            .finish()
            .map_err(|e| anyhow!("backup of {source} failed: {e:#}"))?;
        let head = head
            .lock()
            .map_err(|_| anyhow!("a reader thread panicked"))?;
        let Some(h) = header::parse(&head) else {
            bail!(
                "backup of {source} failed: pg_dump exited 0 but its output is not a custom-format dump (it starts {:?})",
                String::from_utf8_lossy(&head[..head.len().min(16)])
            );
        };
        Ok(Finished {
            dump_format: Some(h.describe_format()),
            server_version: h.server_version,
            pg_dump_version: h.pg_dump_version,
        })
    }
}

struct HeadCopy<R> {
    inner: R,
    head: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for HeadCopy<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut h) = self.head.lock()
            && h.len() < HEAD_KEEP
        {
            let take = n.min(HEAD_KEEP - h.len());
            h.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
}
