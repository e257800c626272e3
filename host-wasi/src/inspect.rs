//! The checks: decode the archive, then let SQLite judge the database.
//! Everything runs inside this module; the host sees only the report.
//!
//! With `--scratch DIR` (what `cairn verify` passes: a private directory the
//! host creates, caps and removes) the database is decoded into a file there
//! and SQLite reads it through the read-only VFS of vfs.rs, so linear memory
//! stays at the page cache and the decoder's buffers whatever its size.
//! Without it, in a runtime that lends no writable directory, the database
//! is decoded into linear memory (wasm32: under 4 GiB).

use std::fs::File;
use std::io::{BufWriter, Read, Write};

use cairn_core::chunk::AeadFactory;
use cairn_core::{DecodeSummary, Decoder, KeyMaterial, Metadata, time};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::checks::{self, Findings};
use crate::claim::ClaimDecoder;
use crate::report::Report;
use crate::vfs;

/// Largest image reserved up front from `--expect-size`: a hint from an
/// untrusted catalog must not make us ask for more than wasm32 can hold.
const MAX_RESERVE: u64 = 3 << 30;
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The scratch file's name inside `--scratch DIR`, once fully decoded (the
/// host hashes it from then on with `--host-digests`) and while decoding.
const SCRATCH_NAME: &str = "database";
const SCRATCH_PART: &str = "database.part";
/// SQLite's page cache for the check, in KiB: integrity_check looks up every
/// row's index entries, and each cache miss is a read through WASI.
const CACHE_KIB: i64 = 64 << 10;

/// How the archive is to be decoded and checked.
pub struct Options<'a> {
    pub expect_size: Option<u64>,
    /// `--scratch DIR`: decode into a file there instead of into memory.
    pub scratch: Option<&'a str>,
    /// `--host-digests`: leave both SHA-256 sums to the host (claim.rs);
    /// the decoded file is then kept for it to hash.
    pub host_digests: bool,
}

pub fn verify(path: &str, key: KeyMaterial, opts: Options, aead: AeadFactory) -> Report {
    let Options {
        expect_size,
        scratch,
        host_digests,
    } = opts;
    let mut report = Report {
        archive: path.to_string(),
        digests_by_host: host_digests,
        ..Report::default()
    };
    let checked = match scratch {
        None => {
            let reserve = expect_size.unwrap_or(0).min(MAX_RESERVE) as usize;
            let mut image = Vec::with_capacity(reserve);
            let dec = AnyDecoder::new(key, aead, host_digests);
            match decode(path, dec, expect_size, &mut image, &mut report) {
                Ok(()) => check_image(image, &mut report),
                Err((stage, code, message)) => return report.fail(stage, code, message),
            }
        }
        Some(dir) => {
            let dir = dir.trim_end_matches('/');
            let (part, db) = (
                format!("{dir}/{SCRATCH_PART}"),
                format!("{dir}/{SCRATCH_NAME}"),
            );
            let dec = AnyDecoder::new(key, aead, host_digests);
            let result = decode_to_file(path, dec, expect_size, &part, &db, &mut report);
            let checked = match result {
                Ok(()) => check_file(&db, &mut report),
                Err((stage, code, message)) => {
                    let _ = std::fs::remove_file(&part);
                    return report.fail(stage, code, message);
                }
            };
            // A user's own --scratch should not keep a copy of the database;
            // the host that hashes it removes its directory itself.
            if !host_digests {
                let _ = std::fs::remove_file(&db);
            }
            checked
        }
    };
    match checked {
        Ok(()) => {
            report.ok = true;
            report
        }
        Err(message) => report.fail("sqlite", None, message),
    }
}

/// Decodes into a new file `part` (refusing to replace one), renamed to
/// `db` once the whole archive has been decoded and checked.
fn decode_to_file(
    path: &str,
    dec: AnyDecoder,
    expect_size: Option<u64>,
    part: &str,
    db: &str,
    report: &mut Report,
) -> Result<(), Fail> {
    let io = |what: &str, e: std::io::Error| ("scratch", None, format!("{what} {part}: {e}"));
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(part)
        .map_err(|e| io("cannot create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    decode(path, dec, expect_size, &mut out, report)?;
    out.flush().map_err(|e| io("cannot write", e))?;
    drop(out);
    std::fs::rename(part, db).map_err(|e| io("cannot rename", e))
}

/// The core's decoder, or the one that leaves the digests to the host.
enum AnyDecoder {
    Full(Decoder),
    Claim(ClaimDecoder),
}

impl AnyDecoder {
    fn new(key: KeyMaterial, aead: AeadFactory, host_digests: bool) -> Self {
        if host_digests {
            AnyDecoder::Claim(ClaimDecoder::new(key, aead))
        } else {
            AnyDecoder::Full(Decoder::with_aead(key, aead))
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), cairn_core::Error> {
        match self {
            AnyDecoder::Full(d) => d.feed(data),
            AnyDecoder::Claim(d) => d.feed(data),
        }
    }

    fn pull(&mut self) -> Result<Option<Vec<u8>>, cairn_core::Error> {
        match self {
            AnyDecoder::Full(d) => d.pull(),
            AnyDecoder::Claim(d) => d.pull(),
        }
    }

    fn metadata(&self) -> Option<&Metadata> {
        match self {
            AnyDecoder::Full(d) => d.metadata(),
            AnyDecoder::Claim(d) => d.metadata(),
        }
    }

    fn finish(self) -> Result<DecodeSummary, cairn_core::Error> {
        match self {
            AnyDecoder::Full(d) => d.finish(),
            AnyDecoder::Claim(d) => d.finish(),
        }
    }
}

type Fail = (&'static str, Option<&'static str>, String);

/// Decodes the archive into `out`, checking every chunk and the trailer.
/// With `expect_size`, a stream that decodes to more is cut off there: the
/// catalog's size is what a valid archive holds, so more is a bomb.
fn decode(
    path: &str,
    mut dec: AnyDecoder,
    expect_size: Option<u64>,
    out: &mut dyn Write,
    report: &mut Report,
) -> Result<(), Fail> {
    let mut file: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| ("read", None, format!("cannot open {path}: {e}")))?,
        )
    };
    let mut plain_len = 0u64;
    let host_digests = matches!(dec, AnyDecoder::Claim(_));
    let mut stored = (!host_digests).then(Sha256::new);
    let mut stored_len = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let core_err = |e: cairn_core::Error| ("decode", Some(e.code().name()), e.to_string());
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ("read", None, format!("reading {path}: {e}")))?;
        if n == 0 {
            break;
        }
        if let Some(h) = &mut stored {
            h.update(&buf[..n]);
        }
        stored_len += n as u64;
        // Fed whole, pulled a chunk at a time: one read of a highly
        // compressed archive (zeroblobs, a bomb) can hold thousands of
        // frames, and only one chunk's plaintext is held at once.
        dec.feed(&buf[..n]).map_err(core_err)?;
        while let Some(plain) = dec.pull().map_err(core_err)? {
            plain_len += plain.len() as u64;
            if let Some(limit) = expect_size
                && plain_len > limit
            {
                return Err((
                    "size",
                    None,
                    format!(
                        "the archive decodes to more than the {limit} bytes expected of it \
                         (--expect-size): it is not the database it claims to be"
                    ),
                ));
            }
            out.write_all(&plain)
                .map_err(|e| ("scratch", None, format!("cannot write the database: {e}")))?;
        }
        if report.archive_id.is_none()
            && let Some(meta) = dec.metadata()
        {
            report.archive_id = Some(meta.archive_id_hex());
            report.db_name = Some(meta.db_name.clone());
            report.created_at = Some(time::rfc3339(meta.created_at_ms));
            report.encryption = Some(meta.encryption.describe().to_string());
        }
    }
    let s = dec.finish().map_err(core_err)?;
    report.chunks = Some(s.chunks);
    report.plain_len = Some(s.plain_len);
    report.plain_sha256 = Some(cairn_core::header::hex(&s.plain_sha256));
    report.stored_len = Some(stored_len);
    report.stored_sha256 = stored.map(|h| cairn_core::header::hex(&h.finalize()));
    Ok(())
}

fn not_sqlite(prefix: &[u8]) -> Option<String> {
    (!prefix.starts_with(SQLITE_MAGIC)).then(|| {
        format!(
            "the archive decodes correctly, but what it holds is not a SQLite database (it is {})",
            cairn_core::sniff(prefix).describe()
        )
    })
}

/// The decoded file, read by SQLite through the read-only VFS.
fn check_file(db: &str, report: &mut Report) -> Result<(), String> {
    let mut prefix = Vec::with_capacity(8 << 10);
    File::open(db)
        .and_then(|f| f.take(8 << 10).read_to_end(&mut prefix))
        .map_err(|e| format!("cannot read the decoded database {db}: {e}"))?;
    if let Some(e) = not_sqlite(&prefix) {
        return Err(e);
    }
    vfs::register();
    let sql = |e: rusqlite::Error| format!("SQLite: {e}");
    let conn = Connection::open_with_flags_and_vfs(
        format!("file:{}?immutable=1", uri_escape(db)),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        vfs::NAME,
    )
    .map_err(sql)?;
    conn.execute_batch(&format!(
        "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{CACHE_KIB}"
    ))
    .map_err(sql)?;
    run_checks(&conn, report)
}

/// `db` as the path part of a `file:` URI.
fn uri_escape(db: &str) -> String {
    let mut out = String::with_capacity(db.len());
    for b in db.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The decoded image in linear memory, for runtimes with no scratch directory.
fn check_image(mut image: Vec<u8>, report: &mut Report) -> Result<(), String> {
    if let Some(e) = not_sqlite(&image) {
        return Err(e);
    }
    // A WAL-mode header would make SQLite look for a -wal file the in-memory
    // image cannot have; the digests above were taken before this.
    if image.len() > 19 && image[18] == 2 && image[19] == 2 {
        image[18] = 1;
        image[19] = 1;
    }
    // The process ends right after the check: leaking the image lets SQLite
    // read it in place, with no second copy.
    let image: &'static [u8] = image.leak();
    let sql = |e: rusqlite::Error| format!("SQLite: {e}");
    let mut conn = Connection::open_with_flags(
        ":memory:",
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.deserialize_bytes("main", image).map_err(sql)?;
    conn.execute_batch("PRAGMA temp_store = MEMORY")
        .map_err(sql)?;
    run_checks(&conn, report)
}

fn run_checks(conn: &Connection, report: &mut Report) -> Result<(), String> {
    let mut findings = Findings::default();
    let result = checks::run(conn, &mut findings);
    report.page_size = findings.page_size;
    report.page_count = findings.page_count;
    report.integrity = findings.integrity;
    report.foreign_key_violations = findings.foreign_key_violations;
    report.tables = findings.tables;
    result
}
