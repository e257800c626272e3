//! The archive header: magic, format version and postcard-encoded metadata,
//! protected by a CRC-32. See docs/FORMAT.md §2.
//!
//! The same header bytes open an encrypted archive and ride in the first gzip
//! member's FEXTRA field of an unencrypted one; when encrypting, every chunk
//! binds them as associated data.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// `\x89CAIRN\r\n\x1a\n`: a high byte (not text), the name, and the
/// line-ending and EOF bytes that catch text-mode transfer damage, as in PNG.
pub const MAGIC: [u8; 10] = [0x89, b'C', b'A', b'I', b'R', b'N', 0x0d, 0x0a, 0x1a, 0x0a];
/// The version of archives compressed with deflate (or not at all).
pub const FORMAT_VERSION: u8 = 1;
/// The version of zstd archives: readers of version 1 only refuse them
/// with "upgrade cairn" instead of misreading the codec.
pub const FORMAT_VERSION_ZSTD: u8 = 2;
/// zstd levels cairn writes and accepts (zstd's 20..22 need a window larger
/// than any chunk, so they buy nothing here).
pub const ZSTD_LEVELS: core::ops::RangeInclusive<u8> = 1..=19;
pub const ZSTD_DEFAULT_LEVEL: u8 = 3;
/// Longest metadata accepted; keeps a hostile header from asking for memory.
pub const MAX_METADATA_LEN: usize = 4096;
pub const MAX_DB_NAME_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    /// A SQLite database file, as written by the online backup API.
    Sqlite,
    /// A PostgreSQL dump (pg_dump custom format).
    Postgres,
    /// Any other byte stream.
    File,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Postgres => "postgres",
            SourceKind::File => "file",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Chunks stored as they are (in a gzip container: deflate "stored" blocks).
    None,
    /// Each chunk a raw deflate stream (RFC 1951) at this level, 1 to 9.
    Deflate { level: u8 },
    /// Each chunk one zstd frame (RFC 8878) at this level, 1 to 19.
    /// Format version 2 (docs/FORMAT.md §14).
    Zstd { level: u8 },
}

impl Compression {
    /// Level 0 means no compression.
    pub fn from_level(level: u8) -> Result<Self> {
        match level {
            0 => Ok(Compression::None),
            1..=9 => Ok(Compression::Deflate { level }),
            _ => Err(Error::param(
                "compression level",
                format!("{level} is not in 0..=9"),
            )),
        }
    }

    /// A zstd level, 1 to 19.
    pub fn zstd(level: u8) -> Result<Self> {
        if !ZSTD_LEVELS.contains(&level) {
            return Err(Error::param(
                "compression level",
                format!("zstd level {level} is not in 1..=19"),
            ));
        }
        Ok(Compression::Zstd { level })
    }

    pub fn level(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Deflate { level } | Compression::Zstd { level } => level,
        }
    }

    pub fn is_zstd(self) -> bool {
        matches!(self, Compression::Zstd { .. })
    }

    /// The header's format version for this codec.
    pub fn format_version(self) -> u8 {
        if self.is_zstd() {
            FORMAT_VERSION_ZSTD
        } else {
            FORMAT_VERSION
        }
    }

    pub fn describe(self) -> String {
        match self {
            Compression::None => "none".into(),
            Compression::Deflate { level } => format!("deflate-{level}"),
            Compression::Zstd { level } => format!("zstd-{level}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kdf {
    /// The master key is a raw 32-byte key.
    RawKey,
    /// The master key is Argon2id(passphrase, salt) with these parameters.
    Argon2id {
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: [u8; 16],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    None,
    /// AES-256-GCM in the STREAM construction, keyed per archive with
    /// HKDF-SHA-256(master key, salt, "cairn-v1 payload" ‖ archive id).
    Aes256GcmStream {
        salt: [u8; 32],
        kdf: Kdf,
        key_id: [u8; 8],
    },
}

impl Encryption {
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Encryption::None)
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::Aes256GcmStream {
                kdf: Kdf::RawKey, ..
            } => "aes-256-gcm (key)",
            Encryption::Aes256GcmStream {
                kdf: Kdf::Argon2id { .. },
                ..
            } => "aes-256-gcm (passphrase)",
        }
    }
}

/// Everything an archive says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub archive_id: [u8; 16],
    pub source: SourceKind,
    pub db_name: String,
    pub created_at_ms: i64,
    pub page_size: u32,
    pub chunk_size: u32,
    pub compression: Compression,
    pub encryption: Encryption,
}

impl Metadata {
    pub fn validate(&self) -> Result<()> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(Error::param(
                "chunk size",
                format!(
                    "{} is not in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                    self.chunk_size
                ),
            ));
        }
        if self.db_name.len() > MAX_DB_NAME_LEN {
            return Err(Error::param(
                "database name",
                format!("longer than {MAX_DB_NAME_LEN} bytes"),
            ));
        }
        if let Compression::Deflate { level } = self.compression
            && !(1..=9).contains(&level)
        {
            return Err(Error::param(
                "compression level",
                format!("{level} is not in 1..=9"),
            ));
        }
        if let Compression::Zstd { level } = self.compression {
            Compression::zstd(level)?;
        }
        if let Encryption::Aes256GcmStream {
            kdf:
                Kdf::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    ..
                },
            ..
        } = self.encryption
        {
            crate::key::check_argon2_params(m_cost_kib, t_cost, p_cost)?;
        }
        Ok(())
    }

    pub fn archive_id_hex(&self) -> String {
        hex(&self.archive_id)
    }

    /// Serializes the header record: magic, version, metadata length and
    /// metadata, CRC-32 of all of it.
    pub fn to_header_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let meta =
            postcard::to_allocvec(self).map_err(|e| Error::param("metadata", e.to_string()))?;
        if meta.len() > MAX_METADATA_LEN {
            return Err(Error::param(
                "metadata",
                format!("{} bytes is over {MAX_METADATA_LEN}", meta.len()),
            ));
        }
        let mut out = Vec::with_capacity(MAGIC.len() + 7 + meta.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.compression.format_version());
        out.extend_from_slice(&(meta.len() as u16).to_le_bytes());
        out.extend_from_slice(&meta);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses a complete header record, as delimited by [`header_len`].
    pub fn from_header_bytes(bytes: &[u8]) -> Result<Self> {
        let total =
            header_len(bytes)?.ok_or_else(|| Error::Truncated("inside the header".into()))?;
        if bytes.len() != total {
            return Err(Error::CorruptHeader(format!(
                "header record is {} bytes, expected {total}",
                bytes.len()
            )));
        }
        let body = &bytes[..total - 4];
        let stored = u32::from_le_bytes(bytes[total - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err(Error::CorruptHeader(
                "header checksum does not match".into(),
            ));
        }
        let (meta, rest): (Metadata, _) = postcard::take_from_bytes(&body[MAGIC.len() + 3..])
            .map_err(|e| Error::CorruptHeader(format!("metadata does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::CorruptHeader(format!(
                "{} unexpected bytes after the metadata",
                rest.len()
            )));
        }
        meta.validate()
            .map_err(|e| Error::CorruptHeader(e.to_string()))?;
        if bytes[MAGIC.len()] != meta.compression.format_version() {
            return Err(Error::CorruptHeader(format!(
                "format version {} does not go with codec {}",
                bytes[MAGIC.len()],
                meta.compression.describe()
            )));
        }
        Ok(meta)
    }
}

/// Given the first bytes of a header record, its total length, or `None` if
/// more bytes are needed to tell.
pub fn header_len(prefix: &[u8]) -> Result<Option<usize>> {
    let fixed = MAGIC.len() + 3;
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(Error::NotAnArchive(
            "the cairn magic bytes are missing".into(),
        ));
    }
    if prefix.len() < fixed {
        return Ok(None);
    }
    let version = prefix[MAGIC.len()];
    if version != FORMAT_VERSION && version != FORMAT_VERSION_ZSTD {
        return Err(Error::UnsupportedVersion(version));
    }
    let meta_len = u16::from_le_bytes([prefix[MAGIC.len() + 1], prefix[MAGIC.len() + 2]]) as usize;
    if meta_len > MAX_METADATA_LEN {
        return Err(Error::CorruptHeader(format!(
            "metadata length {meta_len} is over {MAX_METADATA_LEN}"
        )));
    }
    Ok(Some(fixed + meta_len + 4))
}

/// Lowercase hex, as ids and digests are shown everywhere.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
