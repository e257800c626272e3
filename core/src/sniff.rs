//! Tells what a file is from its first bytes (16 are enough for all but SQL text).

use crate::frame::{GZIP_FIXED, SUB_HEADER, ZSTD_MAGIC, ZSTD_SKIP_MAGIC};
use crate::header::MAGIC;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A cairn archive in the encrypted container.
    CairnEncrypted,
    /// A gzip file; `cairn` when its first member carries a cairn header.
    Gzip {
        cairn: bool,
    },
    /// A zstd file; `cairn` when it opens with cairn's header frame.
    Zstd {
        cairn: bool,
    },
    /// A SQLite 3 database file.
    Sqlite,
    /// A pg_dump custom-format archive (`pg_dump -Fc`).
    PgDumpCustom,
    /// SQL text, such as `sqlite3 .dump` or plain `pg_dump` output.
    SqlText,
    Unknown,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::CairnEncrypted => "an encrypted cairn archive",
            Kind::Gzip { cairn: true } => "a cairn archive (gzip)",
            Kind::Gzip { cairn: false } => "a gzip file not written by cairn",
            Kind::Zstd { cairn: true } => "a cairn archive (zstd)",
            Kind::Zstd { cairn: false } => "a zstd file not written by cairn",
            Kind::Sqlite => "a SQLite database",
            Kind::PgDumpCustom => "a pg_dump custom-format dump",
            Kind::SqlText => "SQL text",
            Kind::Unknown => "not a format cairn knows",
        }
    }
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const SQL_STARTS: &[&str] = &[
    "--",
    "/*",
    "pragma",
    "begin",
    "create",
    "insert",
    "set",
    "select",
    "drop",
    "alter",
    "commit",
    "with",
    "update",
    "delete",
    "copy",
    "start",
    "\\connect",
    "\\restrict",
];

pub fn sniff(b: &[u8]) -> Kind {
    if b.starts_with(&MAGIC) {
        return Kind::CairnEncrypted;
    }
    if b.len() >= 3 && b[..3] == [0x1f, 0x8b, 0x08] {
        let cairn = b.len() >= 14 && b[..GZIP_FIXED.len()] == GZIP_FIXED && b[12..14] == SUB_HEADER;
        return Kind::Gzip { cairn };
    }
    if b.len() >= 10 && b[..4] == ZSTD_SKIP_MAGIC && b[8..10] == SUB_HEADER {
        return Kind::Zstd { cairn: true };
    }
    if b.starts_with(&ZSTD_MAGIC) {
        return Kind::Zstd { cairn: false };
    }
    if b.starts_with(SQLITE_MAGIC) {
        return Kind::Sqlite;
    }
    if b.starts_with(b"PGDMP") {
        return Kind::PgDumpCustom;
    }
    if looks_like_sql(b) {
        return Kind::SqlText;
    }
    Kind::Unknown
}

fn looks_like_sql(b: &[u8]) -> bool {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    // Text: UTF-8 (a sequence cut at the end of the prefix is fine), no NUL.
    let text = match core::str::from_utf8(b) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    if text.contains('\0') {
        return false;
    }
    let start = text.trim_start().as_bytes();
    SQL_STARTS.iter().any(|kw| {
        start.len() >= kw.len()
            && start[..kw.len()].eq_ignore_ascii_case(kw.as_bytes())
            && start
                .get(kw.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric() || kw.len() <= 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_formats_apart() {
        assert_eq!(sniff(b"SQLite format 3\0\x10\x00"), Kind::Sqlite);
        assert_eq!(sniff(b"PGDMP\x01\x0e\x00"), Kind::PgDumpCustom);
        assert_eq!(
            sniff(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"),
            Kind::Gzip { cairn: false }
        );
        assert_eq!(sniff(&MAGIC), Kind::CairnEncrypted);
        assert_eq!(
            sniff(b"\x28\xb5\x2f\xfd\x20\x05"),
            Kind::Zstd { cairn: false }
        );
        assert_eq!(
            sniff(b"\x5c\x2a\x4d\x18\x40\x00\x00\x00CH\x89CAIRN"),
            Kind::Zstd { cairn: true }
        );
        assert_eq!(
            sniff(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;"),
            Kind::SqlText
        );
        assert_eq!(sniff(b"--\n-- PostgreSQL database dump\n"), Kind::SqlText);
        assert_eq!(sniff(b"  create table t(x);"), Kind::SqlText);
        assert_eq!(sniff(b"settings = 1"), Kind::Unknown);
        assert_eq!(sniff(b"hello world"), Kind::Unknown);
        assert_eq!(sniff(b"\x00\x01\x02"), Kind::Unknown);
        assert_eq!(sniff(b""), Kind::Unknown);
    }
}
