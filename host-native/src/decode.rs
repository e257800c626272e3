//! Decoding a stored archive with either engine, checked against its catalog entry.

use std::io::{Read, Write};

use anyhow::{Result, anyhow};
use cairn_core::KeyMaterial;
use cairn_core::catalog::Entry;
use sha2::{Digest, Sha256};

use crate::engine::{EngineKind, SandboxDecoder, sha256_array};
use crate::pipeline::{self, Decoded, READ_PIECE, read_full};
use crate::progress::Progress;
use crate::sandbox::Limits;

/// Decodes `input` into `out`. With `EngineKind::Wasm` every byte of the
/// archive is parsed inside the sandbox, under `limits`.
pub fn decode(
    engine: EngineKind,
    input: impl Read + Send,
    key: &KeyMaterial,
    out: impl Write,
    progress: &Progress,
    limits: Limits,
) -> Result<Decoded> {
    match engine {
        EngineKind::Native => pipeline::decode_native(input, key, out, progress),
        EngineKind::Wasm => decode_sandboxed(input, key, out, progress, limits),
    }
}

fn decode_sandboxed(
    mut input: impl Read,
    key: &KeyMaterial,
    mut out: impl Write,
    progress: &Progress,
    limits: Limits,
) -> Result<Decoded> {
    let mut dec = SandboxDecoder::new(key, limits)?;
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
        let plain = dec.push(&buf[..got])??;
        out.write_all(&plain)?;
        progress.inc(plain.len() as u64);
    }
    let s = dec.finish()??;
    out.flush()?;
    Ok(Decoded {
        archive_id: s.info.archive_id,
        plain_len: s.plain_len,
        plain_sha256: sha256_array(&s.plain_sha256)?,
        stored_len,
        stored_sha256: stored.finalize().into(),
    })
}

/// A decoded archive must be the very object its catalog entry describes.
pub fn check_against_catalog(d: &Decoded, e: &Entry, object: &str) -> Result<()> {
    let mismatch = if d.archive_id != e.archive_id {
        Some("archive id")
    } else if d.stored_len != e.stored_size || hex::encode(d.stored_sha256) != e.stored_sha256 {
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
    match mismatch {
        Some(what) => Err(anyhow!(
            "{object}: its {what} differs from the catalog entry {}: the object was replaced or the catalog edited; use another backup with --id",
            e.id
        )),
        None => Ok(()),
    }
}
