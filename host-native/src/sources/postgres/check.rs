//! `cairn verify` of a PostgreSQL backup: the decoded stream goes into
//! `pg_restore --list`, which must read the dump's header and table of
//! contents. pg_restore stops reading after the TOC; the rest of the stream
//! is still decoded (every chunk and sum is checked) and discarded.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{Result, anyhow, bail};
use cairn_core::Kind;

use super::tools::{self, Running};

/// What `pg_restore --list` established.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgChecked {
    pub server_version: Option<String>,
    pub dump_format: Option<String>,
    /// Entries in the dump's table of contents.
    pub toc_entries: u64,
    /// Tables with data (TOC entries of type TABLE DATA), schema-qualified.
    pub tables: Vec<String>,
}

/// A writer that sniffs, then feeds `pg_restore --list`.
pub struct ListSink {
    head: Vec<u8>,
    child: Option<Running>,
    listing: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// pg_restore closed its stdin (it has read what it needs).
    closed: bool,
    /// Why the stream was refused (not a custom-format dump).
    pub refused: Option<anyhow::Error>,
}

const SNIFF: usize = 4096;

impl Default for ListSink {
    fn default() -> Self {
        Self::new()
    }
}

impl ListSink {
    pub fn new() -> Self {
        ListSink {
            head: Vec::new(),
            child: None,
            listing: None,
            closed: false,
            refused: None,
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        let kind = cairn_core::sniff(&self.head);
        if kind != Kind::PgDumpCustom {
            self.refused = Some(anyhow!(
                "the backup holds {}, not a pg_dump custom-format dump",
                kind.describe()
            ));
            return Err(std::io::Error::other("refused"));
        }
        let started = (|| -> Result<Running> {
            let mut cmd = Command::new(tools::find("pg_restore")?);
            cmd.arg("--list")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            Running::spawn("pg_restore --list", cmd)
        })();
        let mut child = match started {
            Ok(c) => c,
            Err(e) => {
                self.refused = Some(e);
                return Err(std::io::Error::other("refused"));
            }
        };
        let mut out = child.stdout.take().expect("stdout is piped");
        self.listing = Some(std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        }));
        self.child = Some(child);
        let head = std::mem::take(&mut self.head);
        self.forward(&head)
    }

    fn forward(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let Some(stdin) = self.child.as_mut().and_then(|c| c.stdin.as_mut()) else {
            return Ok(());
        };
        match stdin.write_all(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }

    /// After the whole stream decoded and matched its catalog entry: close
    /// pg_restore's input and judge its exit and listing.
    pub fn finish(mut self) -> Result<PgChecked> {
        if self.child.is_none() && self.refused.is_none() {
            self.start().ok();
        }
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let child = self.child.take().expect("started above");
        child.finish()?;
        let listing = self
            .listing
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        parse_listing(&String::from_utf8_lossy(&listing))
    }
}

impl Write for ListSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.refused.is_some() {
            return Err(std::io::Error::other("refused"));
        }
        if self.child.is_none() {
            self.head.extend_from_slice(buf);
            if self.head.len() >= SNIFF {
                self.start()?;
            }
            return Ok(buf.len());
        }
        self.forward(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads `pg_restore --list` output: `;` lines are comments (the header
/// block names the versions), others are TOC entries like
/// `3350; 0 16390 TABLE DATA public pgbench_accounts postgres`.
pub fn parse_listing(text: &str) -> Result<PgChecked> {
    let mut c = PgChecked::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(comment) = l.strip_prefix(';') {
            let comment = comment.trim();
            if let Some(v) = comment.strip_prefix("Dumped from database version:") {
                c.server_version = Some(v.trim().to_string());
            } else if let Some(v) = comment.strip_prefix("Format:") {
                c.dump_format = Some(format!("pg_dump {}", v.trim().to_ascii_lowercase()));
            }
            continue;
        }
        if l.is_empty() {
            continue;
        }
        c.toc_entries += 1;
        if let Some((_, rest)) = l.split_once(" TABLE DATA ") {
            let mut words = rest.split_whitespace();
            if let (Some(schema), Some(name)) = (words.next(), words.next()) {
                c.tables.push(format!("{schema}.{name}"));
            }
        }
    }
    if c.toc_entries == 0 {
        bail!("pg_restore --list found no entries in the dump");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing() {
        let text = ";\n; Archive created at 2026-11-24 10:00:00 UTC\n;     dbname: shop\n;     Format: CUSTOM\n;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)\n;\n\n215; 1259 16389 TABLE public pgbench_accounts postgres\n3350; 0 16390 TABLE DATA public pgbench_accounts postgres\n3351; 0 16391 TABLE DATA public pgbench_branches postgres\n";
        let c = parse_listing(text).unwrap();
        assert_eq!(c.toc_entries, 3);
        assert_eq!(
            c.tables,
            ["public.pgbench_accounts", "public.pgbench_branches"]
        );
        assert_eq!(
            c.server_version.as_deref(),
            Some("15.18 (Debian 15.18-0+deb12u1)")
        );
        assert_eq!(c.dump_format.as_deref(), Some("pg_dump custom"));
        assert!(parse_listing(";\n;\n").is_err());
    }
}
