//! Shipping segments: committed transactions become one segment object,
//! encoded once and written create-only to every destination. A segment is
//! kept until every destination has it; what commits meanwhile waits for
//! the next one, so transaction ids stay gap-free in each destination.
//! [`replica_compression`] is how replica objects are compressed.

use anyhow::{Context, Result, anyhow};
use cairn_core::encoder::EncryptionParams;
use cairn_core::segment::{Segment, segment_ext, segment_key_ext};
use cairn_core::wal::Txn;
use cairn_core::{Compression, SourceKind, WriterParams};

use crate::backup::Codec;
use crate::storage::{Cond, Dest, Put, now_ms};

/// Level-0 segment bodies up to this size get [`SMALL_LEVEL`] when zstd
/// runs at its default level. At 200 commits/s a 75 ms poll makes bodies
/// of ~30–45 KiB, which zstd-19 compresses in ~2 ms (24 MB/s measured
/// here) and ~2–3 % smaller than zstd-3; the bound keeps the cost under
/// ~10 ms, so a burst's big segments do not add to the lag.
pub const SMALL_BODY: usize = 64 << 10;
/// zstd's highest level cairn writes (docs/FORMAT.md §14.1).
pub const SMALL_LEVEL: u8 = 19;

/// How a replicator compresses its objects (docs/FORMAT.md §13.3): `codec`
/// or zstd, with or without a key (replica objects are read by cairn
/// only, so they need not be gunzip-compatible); `level` or the codec's
/// default. Also the compression of small level-0 segments: zstd-19 when
/// the codec is zstd and no level is given, else the same. `Err` is the
/// level's problem, for the caller to prefix with its flag or field.
pub fn replica_compression(
    codec: Option<Codec>,
    level: Option<u8>,
) -> std::result::Result<(Compression, Compression), String> {
    let codec = codec.unwrap_or(Codec::Zstd);
    let base = codec.compression(level.unwrap_or(codec.default_level()))?;
    let small = match (codec, level) {
        (Codec::Zstd, None) => codec.compression(SMALL_LEVEL)?,
        _ => base,
    };
    Ok((base, small))
}

pub struct Shipper {
    pub db_name: String,
    pub compression: Compression,
    /// For level-0 segments whose body is at most [`SMALL_BODY`] bytes.
    pub small: Compression,
    /// The key (derived once, for a passphrase); each segment gets its own salt.
    pub encryption: Option<EncryptionParams>,
    /// Counters for the report.
    pub segments: u64,
    pub bytes: u64,
    pub requests: u64,
}

/// An encoded segment waiting to be on every destination.
pub struct Ready {
    pub key: String,
    pub bytes: Vec<u8>,
    pub max_txid: u64,
    /// Which destinations have it.
    pub done: Vec<bool>,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut r = [0u8; N];
    getrandom::fill(&mut r).map_err(|e| anyhow!("the OS random generator failed: {e}"))?;
    Ok(r)
}

impl Shipper {
    /// Encodes `txns` as the segment starting at `first_txid`.
    pub fn encode(
        &self,
        generation: &str,
        first_txid: u64,
        page_size: u32,
        txns: &[Txn],
        ndest: usize,
    ) -> Result<Ready> {
        let seg = Segment::from_txns(generation, first_txid, page_size, now_ms(), txns)?;
        let encryption = match &self.encryption {
            None => None,
            Some(e) => Some(EncryptionParams {
                salt: random()?,
                ..e.clone()
            }),
        };
        let encrypted = encryption.is_some();
        let body_len =
            cairn_core::segment::SEGMENT_HEAD_LEN + seg.pages.len() * (4 + page_size as usize);
        let compression = if body_len <= SMALL_BODY {
            self.small
        } else {
            self.compression
        };
        let bytes = seg.build(WriterParams {
            archive_id: random()?,
            source: SourceKind::File,
            db_name: self.db_name.clone(),
            created_at_ms: seg.info.time_ms,
            page_size,
            chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
            compression,
            encryption,
        })?;
        Ok(Ready {
            key: segment_key_ext(
                generation,
                0,
                seg.info.min_txid,
                seg.info.max_txid,
                segment_ext(encrypted, compression),
            ),
            bytes,
            max_txid: seg.info.max_txid,
            done: vec![false; ndest],
        })
    }

    /// Writes `r` to every destination that lacks it; true when all have it.
    /// An object already under the key is ours (an earlier try that got
    /// through): only the lease holder writes this generation.
    pub fn ship(&mut self, dests: &[Dest], r: &mut Ready) -> Result<bool> {
        let mut first_err = None;
        for (d, done) in dests.iter().zip(r.done.iter_mut()) {
            if *done {
                continue;
            }
            self.requests += 1;
            match d
                .put(&r.key, r.bytes.clone(), Cond::CreateOnly)
                .with_context(|| format!("cannot write {}", d.describe(&r.key)))
            {
                Ok(Put::Written) | Ok(Put::Exists) => {
                    *done = true;
                    self.bytes += r.bytes.len() as u64;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.segments += 1;
        Ok(true)
    }
}
