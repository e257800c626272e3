//! The checks: decode the archive into memory, then let SQLite judge the
//! image. Everything runs inside this module; the host sees only the report.

use std::io::Read;

use cairn_core::chunk::AeadFactory;
use cairn_core::{Decoder, KeyMaterial, time};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::checks::{self, Findings};
use crate::report::Report;

/// Largest image reserved up front from `--expect-size`: a hint from an
/// untrusted catalog must not make us ask for more than wasm32 can hold.
const MAX_RESERVE: u64 = 3 << 30;
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

pub fn verify(path: &str, key: KeyMaterial, expect_size: Option<u64>, aead: AeadFactory) -> Report {
    let mut report = Report {
        archive: path.to_string(),
        ..Report::default()
    };
    let image = match decode(path, key, expect_size, aead, &mut report) {
        Ok(image) => image,
        Err((stage, code, message)) => return report.fail(stage, code, message),
    };
    match check_database(image, &mut report) {
        Ok(()) => {
            report.ok = true;
            report
        }
        Err(message) => report.fail("sqlite", None, message),
    }
}

type Fail = (&'static str, Option<&'static str>, String);

fn decode(
    path: &str,
    key: KeyMaterial,
    expect_size: Option<u64>,
    aead: AeadFactory,
    report: &mut Report,
) -> Result<Vec<u8>, Fail> {
    let mut file: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| ("read", None, format!("cannot open {path}: {e}")))?,
        )
    };
    let mut dec = Decoder::with_aead(key, aead);
    let mut image = Vec::with_capacity(expect_size.unwrap_or(0).min(MAX_RESERVE) as usize);
    let mut stored = Sha256::new();
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
        stored.update(&buf[..n]);
        stored_len += n as u64;
        let plain = dec.push(&buf[..n]).map_err(core_err)?;
        image.extend_from_slice(&plain);
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
    report.stored_sha256 = Some(cairn_core::header::hex(&stored.finalize()));
    Ok(image)
}

fn check_database(mut image: Vec<u8>, report: &mut Report) -> Result<(), String> {
    if !image.starts_with(SQLITE_MAGIC) {
        return Err(format!(
            "the archive decodes correctly, but what it holds is not a SQLite database (it is {})",
            cairn_core::sniff(&image).describe()
        ));
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
    let mut findings = Findings::default();
    let result = checks::run(&conn, &mut findings);
    report.page_size = findings.page_size;
    report.page_count = findings.page_count;
    report.integrity = findings.integrity;
    report.foreign_key_violations = findings.foreign_key_violations;
    report.tables = findings.tables;
    result
}
