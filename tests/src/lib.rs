//! Helpers for cairn's end-to-end tests: the built `cairn` binary, scratch
//! directories, sample databases, and byte surgery on archives.

pub mod postgres;
pub mod proxy;
pub mod servers;
pub mod sinks;
pub mod writer;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::Connection;

/// The `cairn` binary built alongside these tests (or `$CAIRN_BIN`).
pub fn cairn_bin() -> PathBuf {
    built_bin("cairn", "CAIRN_BIN")
}

/// A binary of this workspace built alongside these tests (or `$env`).
pub(crate) fn built_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A scratch directory with a sample database in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "cairn failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts a failure with a single-line message containing every `needle`.
    pub fn fails_with(self, needles: &[&str]) -> Self {
        assert_ne!(
            self.code, 0,
            "cairn should have failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let msg = self.stderr.trim_end();
        assert!(
            msg.starts_with("error: "),
            "message should start with `error: `: {msg}"
        );
        let error_lines: Vec<_> = msg.lines().filter(|l| !l.starts_with("warning:")).collect();
        assert_eq!(error_lines.len(), 1, "the error should be one line: {msg}");
        assert!(
            !msg.contains("panicked") && !msg.contains("backtrace"),
            "no panics: {msg}"
        );
        for n in needles {
            assert!(msg.contains(n), "message should contain {n:?}: {msg}");
        }
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for `cairn` run in this directory, with its own temp and cache dirs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let tmp = self.path(".tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut c = Command::new(cairn_bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env("TMPDIR", &tmp)
            .env_remove("CAIRN_KEY");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("run cairn").into()
    }

    /// A WAL-mode database with `rows` rows of text and numbers and an index.
    pub fn make_db(&self, name: &str, rows: u32) -> PathBuf {
        let p = self.path(name);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, note TEXT);
             CREATE INDEX items_name ON items(name);",
        )
        .unwrap();
        insert_rows(&c, 0, rows);
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// The catalog as JSON, `{"entries": [...]}` oldest first, as
    /// `cairn list --json` reads it (from layout 2's log, or layout 1).
    pub fn catalog(&self, dest: &str) -> serde_json::Value {
        let r = self.run(&["list", dest, "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        serde_json::json!({ "entries": v["backups"].clone() })
    }

    /// The object key of the newest backup in `dest`.
    pub fn latest_object(&self, dest: &str) -> String {
        String::from_utf8(self.read(&format!("{dest}/latest.txt")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Files under `dir` (recursively), relative, sorted.
    pub fn files(&self, dir: &str) -> Vec<String> {
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path(dir), &self.path(dir), &mut out);
        out.sort();
        out
    }
}

pub fn insert_rows(c: &Connection, start: u32, rows: u32) {
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO items(id, name, price, note) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in start..start + rows {
            let name = format!(
                "item-{:06} {}",
                i.wrapping_mul(2_654_435_761) % 100_000,
                ["red", "green", "blue"][i as usize % 3]
            );
            let note = format!("ordered by customer {} on day {}", i % 977, i % 365);
            st.execute(rusqlite::params![
                i,
                name,
                (i % 10_000) as f64 / 100.0,
                note
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

pub fn count_rows(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap()
}

pub fn integrity_ok(db: &Path) -> bool {
    let c = Connection::open(db).unwrap();
    let r: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    r == "ok"
}

/// Byte offsets of an archive's frames (data chunks, then the trailer): each
/// frame carries the archive id, at offset 0 (encrypted) or 16 (gzip member).
pub fn frame_offsets(archive: &[u8], archive_id_hex: &str, encrypted: bool) -> Vec<usize> {
    let id = hex::decode(archive_id_hex).unwrap();
    let back = if encrypted { 0 } else { 16 };
    let mut hits: Vec<usize> = archive
        .windows(16)
        .enumerate()
        .filter(|(_, w)| *w == id.as_slice())
        .map(|(i, _)| i - back)
        .collect();
    hits.remove(0); // the header's own copy
    hits
}

/// The archive with frames `a` and `b` (0-based data chunks) swapped.
pub fn swap_frames(archive: &[u8], offs: &[usize], a: usize, b: usize) -> Vec<u8> {
    assert!(a < b && b + 1 < offs.len());
    let part = |i: usize| &archive[offs[i]..offs[i + 1]];
    let mut out = archive[..offs[a]].to_vec();
    out.extend_from_slice(part(b));
    out.extend_from_slice(&archive[offs[a + 1]..offs[b]]);
    out.extend_from_slice(part(a));
    out.extend_from_slice(&archive[offs[b + 1]..]);
    out
}

pub const TEST_KEY: &str = "8f1c3b5e7a9d2f4c6b8e0a1d3f5c7e9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c";

/// Replaces the object of the latest backup in `./backups` with a hostile
/// archive made by the core itself: `encryption` as given, `pieces` as the
/// plaintext. The catalog keeps describing the backup it replaced, so the
/// archive is judged on its own bytes. Returns the object key.
pub fn plant_archive<'a>(
    s: &Scratch,
    db_name: &str,
    level: u8,
    encryption: Option<cairn_core::encoder::EncryptionParams>,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> String {
    let mut enc = cairn_core::Encoder::new(cairn_core::WriterParams {
        archive_id: [0x66; 16],
        source: cairn_core::SourceKind::Sqlite,
        db_name: db_name.into(),
        created_at_ms: 0,
        page_size: 4096,
        chunk_size: 1 << 20,
        compression: cairn_core::Compression::Deflate { level },
        encryption,
    })
    .unwrap();
    let mut bytes = Vec::new();
    for p in pieces {
        bytes.extend(enc.push(p).unwrap());
    }
    bytes.extend(enc.finish().unwrap().0);
    let object = s.latest_object("backups");
    std::fs::write(s.path(&format!("backups/{object}")), &bytes).unwrap();
    object
}
