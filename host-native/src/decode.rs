//! Decoding a stored archive with either engine, checked against its catalog entry.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use cairn_core::catalog::Entry;
use cairn_core::{KeyMaterial, Metadata};
use sha2::{Digest, Sha256};

use crate::engine::{EngineKind, SandboxDecoder, sha256_array};
use crate::pipeline::{self, Decoded, READ_PIECE, read_full};
use crate::progress::Progress;
use crate::sandbox::Limits;

/// Decodes `input` into `out`. With `EngineKind::Wasm` every byte of the
/// archive is parsed inside the sandbox, under `limits`. `digest_stored`:
/// see [`pipeline::decode_native`] (the sandbox always hashes them).
pub fn decode(
    engine: EngineKind,
    input: impl Read + Send,
    key: &KeyMaterial,
    out: impl Write,
    progress: &Progress,
    limits: Limits,
    digest_stored: bool,
) -> Result<Decoded> {
    match engine {
        EngineKind::Native => pipeline::decode_native(input, key, out, progress, digest_stored),
        EngineKind::Wasm => decode_sandboxed(input, key, out, progress, limits),
    }
}

fn decode_sandboxed(
    input: impl Read,
    key: &KeyMaterial,
    mut out: impl Write,
    progress: &Progress,
    limits: Limits,
) -> Result<Decoded> {
    let mut dec = SandboxDecoder::new(key, limits)?;
    let (mut input, prefix) = Capture::new(input);
    let mut stored = Sha256::new();
    let mut stored_len = 0u64;
    let mut buf = vec![0u8; READ_PIECE];
    loop {
        let got = read_full(&mut input, &mut buf)?;
        if got == 0 {
            break;
        }
        stored.update(&buf[..got]);
        stored_len += got as u64;
        dec.feed(&buf[..got])??;
        while let Some(plain) = dec.pull()?? {
            out.write_all(&plain)?;
            progress.inc(plain.len() as u64);
        }
    }
    let s = dec.finish()??;
    out.flush()?;
    Ok(Decoded {
        archive_id: s.info.archive_id,
        plain_len: s.plain_len,
        plain_sha256: sha256_array(&s.plain_sha256)?,
        stored_len,
        stored_sha256: Some(stored.finalize().into()),
        header: prefix.header(),
    })
}

/// How much of an archive's start [`Capture`] keeps: the whole header
/// record or header member (at most 17 + 4096 bytes, §2.1, §6.2).
const PREFIX_MAX: usize = 8 << 10;

/// The first bytes of a stream read through a [`Capture`].
#[derive(Clone, Default)]
pub struct Prefix(Arc<Mutex<Vec<u8>>>);

impl Prefix {
    /// The header of the archive that began with these bytes. Called after
    /// a decode accepted them (or on bytes whose SHA-256 the catalog
    /// vouches for), so a failure here only means there is nothing to compare.
    pub fn header(&self) -> Option<Metadata> {
        let bytes = self.0.lock().ok()?.clone();
        header_of(&bytes)
    }
}

/// The header at the start of `bytes`, when they hold a whole one.
pub fn header_of(bytes: &[u8]) -> Option<Metadata> {
    let mut p = cairn_core::FrameParser::new();
    p.push(&bytes[..bytes.len().min(PREFIX_MAX)]);
    match p.next_event() {
        Ok(Some(cairn_core::Event::Header { meta, .. })) => Some(meta),
        _ => None,
    }
}

/// A reader that keeps the first [`PREFIX_MAX`] bytes it passes on.
pub struct Capture<R> {
    inner: R,
    prefix: Prefix,
}

impl<R: Read> Capture<R> {
    pub fn new(inner: R) -> (Self, Prefix) {
        let prefix = Prefix::default();
        (
            Capture {
                inner,
                prefix: prefix.clone(),
            },
            prefix,
        )
    }
}

impl<R: Read> Read for Capture<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut p) = self.prefix.0.lock()
            && p.len() < PREFIX_MAX
        {
            let take = n.min(PREFIX_MAX - p.len());
            p.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
}

/// The entry's copies of header fields (§7.3) must be the header's: an
/// edited catalog whose `body_sha256` was recomputed is caught here.
fn header_mismatch(h: &Metadata, e: &Entry) -> Option<(&'static str, String, String)> {
    let key_id = match h.encryption {
        cairn_core::Encryption::Aes256GcmStream { key_id, .. } => Some(hex::encode(key_id)),
        cairn_core::Encryption::None => None,
    };
    let fields = [
        ("db_name", h.db_name.clone(), e.db_name.clone()),
        ("source", h.source.as_str().to_string(), e.source.clone()),
        (
            "created_at_ms",
            h.created_at_ms.to_string(),
            e.created_at_ms.to_string(),
        ),
        (
            "page_size",
            h.page_size.to_string(),
            e.page_size.to_string(),
        ),
        (
            "compression",
            h.compression.describe(),
            e.compression.clone(),
        ),
        (
            "encryption",
            h.encryption.describe().to_string(),
            e.encryption.clone(),
        ),
        (
            "key_id",
            key_id.unwrap_or_else(|| "(none)".into()),
            e.key_id.clone().unwrap_or_else(|| "(none)".into()),
        ),
    ];
    fields.into_iter().find(|(_, a, b)| a != b)
}

/// Whether a decode for `e` must hash the stored bytes: only when the
/// entry lacks the plaintext's SHA-256 (entries of early v1 catalogs).
pub fn needs_stored_digest(e: &Entry) -> bool {
    e.plain_sha256.is_none()
}

/// A decoded archive must be the very object its catalog entry describes.
pub fn check_against_catalog(d: &Decoded, e: &Entry, object: &str) -> Result<()> {
    let mismatch = if d.archive_id != e.archive_id {
        Some("archive id")
    } else if d.stored_len != e.stored_size
        // Not hashed: only when the plaintext digest stands in for it.
        || d.stored_sha256.map_or(needs_stored_digest(e), |h| {
            hex::encode(h) != e.stored_sha256
        })
    {
        Some("stored size or SHA-256")
    } else if d.plain_len != e.plain_size
        || e.plain_sha256
            .as_ref()
            .is_some_and(|h| *h != hex::encode(d.plain_sha256))
    {
        Some("database size or SHA-256")
    } else {
        None
    };
    if let Some(what) = mismatch {
        return Err(anyhow!(
            "{object}: its {what} differs from the catalog entry {}: the object was replaced or the catalog edited; use another backup with --id",
            e.id
        ));
    }
    if let Some((field, header, entry)) = d.header.as_ref().and_then(|h| header_mismatch(h, e)) {
        return Err(anyhow!(
            "catalog: entry {} says {field} {entry:?} but the header of {object} says {header:?}: the catalog was edited; run `cairn repair` or use another backup with --id",
            e.id
        ));
    }
    Ok(())
}
