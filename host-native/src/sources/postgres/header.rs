//! The header of a pg_dump custom-format archive (PostgreSQL's
//! `pg_backup_archiver.c`, `ReadHead`): its version, the dumped database's
//! name and the server and pg_dump versions. Read from the first bytes of
//! the stream as it passes, so the catalog can record them.

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpHeader {
    /// Archive format version, e.g. (1, 14, 0).
    pub version: (u8, u8, u8),
    /// 1 custom, 3 tar, 5 directory (`-Fc` is 1).
    pub format: u8,
    pub database: Option<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
}

impl DumpHeader {
    /// `pg_dump custom 1.14`.
    pub fn describe_format(&self) -> String {
        let kind = match self.format {
            1 => "custom",
            3 => "tar",
            5 => "directory",
            _ => "unknown",
        };
        let (a, b, c) = self.version;
        if c == 0 {
            format!("pg_dump {kind} {a}.{b}")
        } else {
            format!("pg_dump {kind} {a}.{b}.{c}")
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    /// A sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self) -> Option<i64> {
        let sign = self.byte()?;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.byte()?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        Some(if sign != 0 { -v } else { v })
    }

    /// An int length (negative: NULL), then that many bytes.
    fn string(&mut self) -> Option<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        let bytes = self.b.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Parses the header from the first bytes of a dump; None if they are not
/// a (complete) custom-format header.
pub fn parse(b: &[u8]) -> Option<DumpHeader> {
    let rest = b.strip_prefix(b"PGDMP")?;
    let mut c = Cursor {
        b: rest,
        pos: 0,
        int_size: 4,
    };
    let major = c.byte()?;
    let minor = c.byte()?;
    let rev = if major > 1 || (major == 1 && minor > 0) {
        c.byte()?
    } else {
        0
    };
    let v = (major, minor, rev);
    let int_size = c.byte()?;
    if !(1..=32).contains(&int_size) {
        return None;
    }
    c.int_size = int_size as usize;
    if v >= (1, 7, 0) {
        c.byte()?; // offset size
    }
    let format = c.byte()?;
    if v >= (1, 15, 0) {
        c.byte()?; // compression algorithm
    } else if v >= (1, 4, 0) {
        c.int()?; // compression level
    } else if v >= (1, 2, 0) {
        c.byte()?;
    }
    let mut header = DumpHeader {
        version: v,
        format,
        database: None,
        server_version: None,
        pg_dump_version: None,
    };
    if v >= (1, 4, 0) {
        for _ in 0..7 {
            c.int()?; // creation time: sec, min, hour, mday, mon, year, isdst
        }
        header.database = c.string()?;
    }
    if v >= (1, 10, 0) {
        header.server_version = c.string()?;
        header.pg_dump_version = c.string()?;
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Vec<u8> {
        let mut out = vec![u8::from(v < 0)];
        out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        out
    }

    fn string(s: &str) -> Vec<u8> {
        let mut out = int(s.len() as i64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    /// The header pg_dump 15 writes for `-Fc -Z0`.
    fn sample() -> Vec<u8> {
        let mut b = b"PGDMP".to_vec();
        b.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        b.extend(int(0));
        for v in [5, 4, 3, 2, 1, 126, 0] {
            b.extend(int(v));
        }
        b.extend(string("shop"));
        b.extend(string("15.18 (Debian 15.18-0+deb12u1)"));
        b.extend(string("15.18 (Debian 15.18-0+deb12u1)"));
        b.extend_from_slice(b"rest of the TOC");
        b
    }

    #[test]
    fn reads_a_pg15_header() {
        let h = parse(&sample()).unwrap();
        assert_eq!(h.version, (1, 14, 0));
        assert_eq!(h.database.as_deref(), Some("shop"));
        assert_eq!(
            h.server_version.as_deref(),
            Some("15.18 (Debian 15.18-0+deb12u1)")
        );
        assert_eq!(h.describe_format(), "pg_dump custom 1.14");
    }

    #[test]
    fn refuses_short_or_foreign_bytes() {
        let s = sample();
        for n in 0..60 {
            assert_eq!(parse(&s[..n]), None, "{n} bytes");
        }
        assert_eq!(parse(b"SQLite format 3\0"), None);
        let mut huge = s.clone();
        huge[8] = 200; // int size
        assert_eq!(parse(&huge), None);
    }
}
