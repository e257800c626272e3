//! [`ReplicatorConfig`]: what an application (or the daemon) gives an
//! embedded replicator, built in code or read from a TOML string whose
//! field names are those of a `[[databases]]` entry in cairn.toml
//! (`source`, `destinations`, `key_file`, `codec`, `level`, …) plus the
//! `cairn replicate` options (`interval`, `snapshot_interval`, …).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;

use super::{LogTo, ReplicateOptions};
use crate::keys::KeyArgs;
use crate::storage::Location;

/// How to replicate one SQLite database. [`ReplicatorConfig::new`] gives
/// the defaults of `cairn replicate`.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// The SQLite database (in WAL mode).
    pub source: PathBuf,
    /// Destination URLs: directories, `s3://…`, `sftp://…`.
    pub destinations: Vec<String>,
    /// The key (or passphrase) segments and snapshots are sealed with; none: unencrypted.
    pub key: KeyArgs,
    /// Segment and snapshot codec; none: zstd (replica objects are read
    /// by cairn only, so unlike `cairn backup` not gzip without a key).
    pub codec: Option<crate::backup::Codec>,
    /// Compression level: gzip 0 to 9, zstd 1 to 19; none: the codec's
    /// default (6; 3, and 19 for small level-0 segments).
    pub level: Option<u8>,
    /// How often the WAL is looked at: the bound on replication lag.
    pub interval: Duration,
    /// A new generation (a fresh snapshot) this often.
    pub snapshot_interval: Duration,
    /// How long the replication lease lasts without renewal.
    pub lease_ttl: Duration,
    /// The WAL size past which cairn restarts it (checkpoint RESTART).
    pub wal_limit: u64,
    /// Where snapshots are staged [default: the system temp dir].
    pub temp_dir: Option<PathBuf>,
    /// Compaction into levels (docs/FORMAT.md §13.9); `None`: off.
    pub compaction: Option<cairn_core::compact::Policy>,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(75);
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_WAL_LIMIT: u64 = 64 << 20;

impl ReplicatorConfig {
    pub fn new(source: impl Into<PathBuf>, destinations: Vec<String>) -> ReplicatorConfig {
        ReplicatorConfig {
            source: source.into(),
            destinations,
            key: KeyArgs::default(),
            codec: None,
            level: None,
            interval: DEFAULT_INTERVAL,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            lease_ttl: DEFAULT_LEASE_TTL,
            wal_limit: DEFAULT_WAL_LIMIT,
            temp_dir: None,
            compaction: Some(cairn_core::compact::Policy::default()),
        }
    }

    /// Reads a config from TOML, e.g.
    ///
    /// ```toml
    /// source = "app.db"
    /// destinations = ["/var/backups/app", "s3://${BUCKET}/app"]
    /// key_file = "/etc/app/cairn.key"
    /// interval = "75ms"
    /// ```
    ///
    /// `${VAR}` in `source` and `destinations` comes from the environment;
    /// relative paths are from the current directory. An unknown or
    /// malformed field is an error naming it.
    pub fn from_toml(text: &str) -> Result<ReplicatorConfig> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            anyhow!(
                "invalid replicator config: {}",
                e.message().lines().next().unwrap_or("").trim()
            )
        })?;
        let expand = |field: &str, s: &str| {
            crate::daemon::expand::expand_env(s).map_err(|e| anyhow!("{field}: {e}"))
        };
        let Some(source) = raw.source else {
            bail!("source: missing: the SQLite file, e.g. source = \"/srv/app/app.db\"");
        };
        let source = crate::storage::url::expand_home(&expand("source", &source)?);
        let mut destinations = Vec::new();
        for (i, d) in raw.destinations.unwrap_or_default().iter().enumerate() {
            destinations.push(expand(&format!("destinations[{i}]"), d)?);
        }
        let mut c = ReplicatorConfig::new(source, destinations);
        c.key = KeyArgs {
            key_file: raw.key_file,
            key_env: raw.key_env,
            passphrase_file: raw.passphrase_file,
            passphrase_env: raw.passphrase_env,
        };
        if let Some(k) = raw.codec {
            c.codec =
                Some(crate::backup::Codec::parse(&k).ok_or_else(|| {
                    anyhow!("codec: {k:?} is not a codec: use \"gzip\" or \"zstd\"")
                })?);
        }
        if let Some(l) = raw.level {
            c.level = Some(
                u8::try_from(l)
                    .ok()
                    .filter(|l| *l <= 19)
                    .ok_or_else(|| anyhow!("level: {l} is out of range (0 to 19)"))?,
            );
        }
        let dur = |field: &str, v: Option<String>, default: Duration| -> Result<Duration> {
            let Some(s) = v else { return Ok(default) };
            match humantime::parse_duration(s.trim()) {
                Ok(d) if !d.is_zero() => Ok(d),
                _ => bail!("{field}: {s:?} is not a duration like 50ms, 30s or 24h"),
            }
        };
        c.interval = dur("interval", raw.interval, c.interval)?;
        c.snapshot_interval = dur(
            "snapshot_interval",
            raw.snapshot_interval,
            c.snapshot_interval,
        )?;
        c.lease_ttl = dur("lease_ttl", raw.lease_ttl, c.lease_ttl)?;
        if let Some(w) = raw.wal_limit {
            c.wal_limit = super::parse_bytes(&w).map_err(|e| anyhow!("wal_limit: {e}"))?;
        }
        c.temp_dir = raw.temp_dir;
        if raw.compact.is_some() || raw.keep_compacted.is_some() {
            let keep = dur(
                "keep_compacted",
                raw.keep_compacted,
                Duration::from_secs(3600),
            )?;
            c.compaction =
                super::compact::parse_policy(raw.compact.as_deref().unwrap_or("30s,1h,24h"), keep)
                    .map_err(|e| anyhow!("compact: {e:#}"))?;
        }
        c.check()?;
        Ok(c)
    }

    /// What can be checked without touching the database or a destination.
    pub fn check(&self) -> Result<()> {
        if self.source.as_os_str().is_empty() {
            bail!("source: is empty");
        }
        if self.destinations.is_empty() {
            bail!("destinations: give at least one, e.g. destinations = [\"/var/backups/app\"]");
        }
        for (i, d) in self.destinations.iter().enumerate() {
            Location::parse(d).map_err(|e| anyhow!("destinations[{i}]: {e:#}"))?;
        }
        self.compression()?;
        if self.lease_ttl < Duration::from_secs(2) {
            bail!("lease_ttl: must be at least 2s");
        }
        Ok(())
    }

    /// The compression of the replica's objects and of its small level-0
    /// segments ([`super::shipper::replica_compression`]).
    fn compression(&self) -> Result<(cairn_core::Compression, cairn_core::Compression)> {
        super::shipper::replica_compression(self.codec, self.level)
            .map_err(|e| anyhow!("level: {e}"))
    }

    /// The options `replicate::run` takes (the key is loaded here).
    pub fn options(&self, log: LogTo) -> Result<ReplicateOptions> {
        self.check()?;
        let key = self.key.load()?;
        let (compression, small_segments) = self.compression()?;
        Ok(ReplicateOptions {
            db: self.source.clone(),
            compression,
            small_segments,
            key,
            interval: self.interval.max(Duration::from_millis(1)),
            snapshot_interval: self.snapshot_interval,
            lease_ttl: self.lease_ttl,
            wal_limit: self.wal_limit,
            temp_dir: self.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
            compaction: self.compaction.clone(),
            log,
            status: Arc::default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(alias = "path")]
    source: Option<String>,
    destinations: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    key_env: Option<String>,
    passphrase_file: Option<PathBuf>,
    passphrase_env: Option<String>,
    codec: Option<String>,
    level: Option<i64>,
    interval: Option<String>,
    snapshot_interval: Option<String>,
    lease_ttl: Option<String>,
    wal_limit: Option<String>,
    temp_dir: Option<PathBuf>,
    compact: Option<String>,
    keep_compacted: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_fields_and_defaults() {
        let c = ReplicatorConfig::from_toml(
            "source = \"app.db\"\ndestinations = [\"/tmp/x\"]\ninterval = \"20ms\"\nwal_limit = \"1MiB\"\nlevel = 3",
        )
        .unwrap();
        assert_eq!(c.source, PathBuf::from("app.db"));
        assert_eq!(c.interval, Duration::from_millis(20));
        assert_eq!(c.wal_limit, 1 << 20);
        assert_eq!(c.level, Some(3));
        // zstd with or without a key; a level given applies to every segment.
        let z3 = cairn_core::Compression::Zstd { level: 3 };
        assert_eq!(c.compression().unwrap(), (z3, z3));
        let c = ReplicatorConfig::from_toml("source = \"a.db\"\ndestinations = [\"/x\"]").unwrap();
        assert_eq!(
            c.compression().unwrap(),
            (z3, cairn_core::Compression::Zstd { level: 19 })
        );
        let c = ReplicatorConfig::from_toml(
            "source = \"a.db\"\ndestinations = [\"/x\"]\ncodec = \"gzip\"",
        )
        .unwrap();
        let d6 = cairn_core::Compression::Deflate { level: 6 };
        assert_eq!(c.compression().unwrap(), (d6, d6));
        let c = ReplicatorConfig::from_toml(
            "source = \"a.db\"\ndestinations = [\"/x\"]\ncodec = \"zstd\"\nlevel = 19",
        )
        .unwrap();
        let z19 = cairn_core::Compression::Zstd { level: 19 };
        assert_eq!(c.compression().unwrap(), (z19, z19));
        assert_eq!(c.snapshot_interval, DEFAULT_SNAPSHOT_INTERVAL);
        assert_eq!(c.compaction, Some(cairn_core::compact::Policy::default()));
        let c = ReplicatorConfig::from_toml(
            "source = \"a.db\"\ndestinations = [\"/x\"]\ncompact = \"1s,1m\"\nkeep_compacted = \"5s\"",
        )
        .unwrap();
        let p = c.compaction.unwrap();
        assert_eq!(
            (p.intervals_ms, p.keep_covered_ms),
            (vec![1000, 60_000], vec![Some(5000)])
        );
        let c = ReplicatorConfig::from_toml(
            "source = \"a.db\"\ndestinations = [\"/x\"]\ncompact = \"off\"",
        )
        .unwrap();
        assert_eq!(c.compaction, None);
        // `path` is accepted for `source`.
        let c =
            ReplicatorConfig::from_toml("path = \"a.db\"\ndestinations = [\"/tmp/x\"]").unwrap();
        assert_eq!(c.source, PathBuf::from("a.db"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = |t: &str| format!("{:#}", ReplicatorConfig::from_toml(t).unwrap_err());
        assert!(e("destinations = [\"/x\"]").starts_with("source:"));
        assert!(e("source = \"a.db\"").starts_with("destinations:"));
        assert!(
            e("source = \"a.db\"\ndestinations = [\"/x\"]\ninterval = \"soon\"")
                .starts_with("interval:")
        );
        assert!(
            e("source = \"a.db\"\ndestinations = [\"/x\"]\ncodec = \"gzip\"\nlevel = 12")
                .starts_with("level: 12 is out of range for gzip")
        );
        assert!(e("source = \"a.db\"\ndestinations = [\"/x\"]\nlevel = 0").starts_with("level:"));
        assert!(e("source = \"a.db\"\ndestinations = [\"/x\"]\nlevel = 20").starts_with("level:"));
        assert!(
            e("source = \"a.db\"\ndestinations = [\"/x\"]\ncodec = \"lz4\"").starts_with("codec:")
        );
        assert!(e("source = \"a.db\"\ndestinations = [\"/x\"]\nbogus = 1").contains("bogus"));
        assert!(
            e("source = \"a.db\"\ndestinations = [\"/x\"]\ncompact = \"often\"")
                .starts_with("compact:")
        );
        assert!(
            e("source = \"a.db\"\ndestinations = [\"ftp://x/y\"]").starts_with("destinations[0]:")
        );
    }
}
