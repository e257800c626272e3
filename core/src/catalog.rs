//! The catalog: the list of backups kept in the destination itself, so that
//! a restore needs nothing but the storage (and the key). See
//! docs/FORMAT.md §7 for the layout of a destination.
//!
//! The catalog is JSON, readable with `jq`, and carries the SHA-256 of its
//! own body so damage is caught on read. Entries have a `kind` so WAL
//! segments can join snapshots later without a format change.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::header::{Metadata, hex};

pub const CATALOG_KEY: &str = "catalog.json";
pub const LATEST_KEY: &str = "latest.txt";
pub const SNAPSHOT_PREFIX: &str = "snapshots/";
pub const CATALOG_FORMAT: &str = "cairn-catalog";
pub const CATALOG_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    Snapshot,
}

/// One stored object and what is known of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub kind: EntryKind,
    /// Key of the object, relative to the destination root.
    pub object: String,
    pub created_at: String,
    pub created_at_ms: i64,
    pub source: String,
    pub db_name: String,
    pub page_size: u32,
    pub plain_size: u64,
    /// SHA-256 of the database; omitted for encrypted backups, where it
    /// would let anyone confirm a guess of the contents (the encrypted
    /// trailer still carries and checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub compression: String,
    pub encryption: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub archive_id: String,
    /// PostgreSQL backups: the server's version, as pg_dump recorded it in
    /// the dump's header (absent for other sources and older entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// PostgreSQL backups: the dump's format and archive version, e.g.
    /// `pg_dump custom 1.14`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_format: Option<String>,
    /// PostgreSQL backups: the version of the pg_dump that wrote the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_dump_version: Option<String>,
    /// Fields this cairn does not know, kept so that rewriting an entry
    /// written by a newer cairn does not drop them.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    /// The catalog entry for an archive with this metadata and these sums.
    pub fn for_snapshot(
        id: String,
        object: String,
        meta: &Metadata,
        plain: (u64, [u8; 32]),
        stored: (u64, [u8; 32]),
    ) -> Self {
        let key_id = match meta.encryption {
            crate::header::Encryption::Aes256GcmStream { key_id, .. } => Some(hex(&key_id)),
            crate::header::Encryption::None => None,
        };
        Entry {
            id,
            kind: EntryKind::Snapshot,
            object,
            created_at: crate::time::rfc3339(meta.created_at_ms),
            created_at_ms: meta.created_at_ms,
            source: meta.source.as_str().into(),
            db_name: meta.db_name.clone(),
            page_size: meta.page_size,
            plain_size: plain.0,
            plain_sha256: (!meta.encryption.is_encrypted()).then(|| hex(&plain.1)),
            stored_size: stored.0,
            stored_sha256: hex(&stored.1),
            compression: meta.compression.describe(),
            encryption: meta.encryption.describe().into(),
            key_id,
            archive_id: meta.archive_id_hex(),
            server_version: None,
            dump_format: None,
            pg_dump_version: None,
            extra: Default::default(),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption != "none"
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Bumped on every write; lets a writer notice a concurrent one.
    pub generation: u64,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'a str,
    version: u32,
    body_sha256: String,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    format: String,
    version: u32,
    body_sha256: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

impl Catalog {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Catalog("the catalog file is empty".into()));
        }
        let env: EnvelopeIn<'_> = serde_json::from_slice(bytes)
            .map_err(|e| Error::Catalog(format!("not valid catalog JSON ({e})")))?;
        if env.format != CATALOG_FORMAT {
            return Err(Error::Catalog(format!(
                "format is {:?}, expected {CATALOG_FORMAT:?}",
                env.format
            )));
        }
        if env.version != CATALOG_VERSION {
            return Err(Error::Catalog(format!(
                "catalog version {} is not supported (this cairn reads version {CATALOG_VERSION}); upgrade cairn",
                env.version
            )));
        }
        let body = env.body.get();
        if hex(&Sha256::digest(body.as_bytes())) != env.body_sha256 {
            return Err(Error::Catalog(
                "the body's SHA-256 does not match body_sha256: the file was damaged or edited"
                    .into(),
            ));
        }
        let cat: Catalog = serde_json::from_str(body)
            .map_err(|e| Error::Catalog(format!("body does not decode ({e})")))?;
        cat.validate()?;
        Ok(cat)
    }

    pub fn render(&self) -> Vec<u8> {
        let body = serde_json::to_string_pretty(self).expect("a catalog always serializes");
        let raw = RawValue::from_string(body).expect("serde_json output is valid JSON");
        let env = EnvelopeOut {
            format: CATALOG_FORMAT,
            version: CATALOG_VERSION,
            body_sha256: hex(&Sha256::digest(raw.get().as_bytes())),
            body: &raw,
        };
        let mut out = serde_json::to_vec(&env).expect("an envelope always serializes");
        out.push(b'\n');
        out
    }

    pub fn validate(&self) -> Result<()> {
        let mut ids = std::collections::BTreeSet::new();
        for e in &self.entries {
            if !ids.insert(e.id.as_str()) {
                return Err(Error::Catalog(format!("entry id {} appears twice", e.id)));
            }
            validate_object_key(&e.object)?;
        }
        Ok(())
    }

    /// Adds an entry, keeping the list ordered oldest first.
    pub fn add(&mut self, entry: Entry) -> Result<()> {
        validate_object_key(&entry.object)?;
        if self.find(&entry.id).is_some() {
            return Err(Error::Catalog(format!(
                "entry id {} already exists",
                entry.id
            )));
        }
        let at = self
            .entries
            .partition_point(|e| (e.created_at_ms, &e.id) <= (entry.created_at_ms, &entry.id));
        self.entries.insert(at, entry);
        self.generation += 1;
        Ok(())
    }

    pub fn find(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    pub fn find_object(&self, object: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.object == object)
    }

    /// The newest entry by (`created_at_ms`, `id`), whatever the file's order.
    pub fn newest(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .max_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)))
    }
}

/// A snapshot id: creation time, then 8 hex digits from the host's randomness.
pub fn snapshot_id(created_at_ms: i64, random: [u8; 4]) -> String {
    format!("{}-{}", crate::time::compact(created_at_ms), hex(&random))
}

/// Where a snapshot object lives in the destination.
pub fn snapshot_object_key(id: &str, encrypted: bool) -> String {
    object_key(id, crate::SourceKind::Sqlite, encrypted)
}

/// Where a backup of `source` lives: the extension tells people what a
/// decoded copy is (`.db` a SQLite file, `.pgdump` a pg_dump archive).
pub fn object_key(id: &str, source: crate::SourceKind, encrypted: bool) -> String {
    archive_object_key(id, source, encrypted, false)
}

/// [`object_key`] for any codec: an unencrypted zstd archive ends in `.zst`
/// (it opens with `zstd -d`), an unencrypted deflate one in `.gz`.
pub fn archive_object_key(
    id: &str,
    source: crate::SourceKind,
    encrypted: bool,
    zstd: bool,
) -> String {
    let what = match source {
        crate::SourceKind::Postgres => "pgdump",
        crate::SourceKind::Sqlite | crate::SourceKind::File => "db",
    };
    let ext = match (encrypted, zstd) {
        (true, _) => "cairn",
        (false, true) => "zst",
        (false, false) => "gz",
    };
    format!("{SNAPSHOT_PREFIX}{id}.{what}.{ext}")
}

/// The contents of `latest.txt`: the newest object's key and a newline.
pub fn latest_pointer(entry: &Entry) -> Vec<u8> {
    format!("{}\n", entry.object).into_bytes()
}

pub fn parse_latest_pointer(bytes: &[u8]) -> Result<String> {
    let text =
        core::str::from_utf8(bytes).map_err(|_| Error::Catalog("latest.txt is not text".into()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(Error::Catalog("latest.txt is empty".into()));
    }
    validate_object_key(key)?;
    Ok(key.to_string())
}

/// Object keys are relative paths of plain segments: a hostile catalog must
/// not be able to point a reader outside the destination.
pub fn validate_object_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Catalog(format!(
            "object key {key:?} is not a safe relative path"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample entry of `app.db` (the layout tests' builder).
    fn entry(id: &str, at: i64) -> Entry {
        crate::layout::test_entry(id, "app.db", at)
    }

    #[test]
    fn round_trips_and_orders() {
        let mut c = Catalog::default();
        c.add(entry("b", 2)).unwrap();
        c.add(entry("a", 1)).unwrap();
        assert_eq!(c.entries[0].id, "a");
        assert_eq!(c.generation, 2);
        let parsed = Catalog::parse(&c.render()).unwrap();
        assert_eq!(parsed, c);
        assert_eq!(parsed.newest().unwrap().id, "b");
        assert!(c.add(entry("a", 3)).is_err());
    }

    #[test]
    fn postgres_fields_are_optional_and_kept() {
        let mut e = entry("a", 1);
        let old = serde_json::to_value(&e).unwrap();
        assert!(old.get("server_version").is_none());
        let parsed: Entry = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.server_version, None);
        e.server_version = Some("15.14".into());
        e.dump_format = Some("pg_dump custom 1.14".into());
        let back: Entry = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            object_key("x", crate::SourceKind::Postgres, false),
            "snapshots/x.pgdump.gz"
        );
        assert_eq!(
            object_key("x", crate::SourceKind::Sqlite, true),
            "snapshots/x.db.cairn"
        );
    }

    #[test]
    fn detects_damage_and_bad_keys() {
        let mut c = Catalog::default();
        c.add(entry("a", 1)).unwrap();
        let text = String::from_utf8(c.render())
            .unwrap()
            .replace("app.db", "evil.db");
        assert!(
            Catalog::parse(text.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("SHA-256")
        );
        assert!(
            Catalog::parse(b"")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(validate_object_key("../etc/passwd").is_err());
        assert!(validate_object_key("/abs").is_err());
        assert!(parse_latest_pointer(b"snapshots/x.db.gz\n").is_ok());
    }
}
