//! What happens to one chunk: deflate, then (when encrypting) AES-256-GCM
//! with a STREAM nonce; and the trailer that closes an archive. See
//! docs/FORMAT.md §4–§5.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::header::Compression;

pub const TAG_LEN: usize = 16;
pub const TRAILER_LEN: usize = 64;

/// STREAM nonce: 11-byte big-endian chunk counter ‖ 1-byte last-chunk flag.
pub fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

pub fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

pub fn seal(cipher: &Aes256Gcm, index: u64, last: bool, aad: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let n = nonce(index, last);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(n), aad, body.as_mut_slice().into())
        .expect("AES-GCM seals any message under 64 GiB");
    body.extend_from_slice(&tag);
    body
}

/// AES-256-GCM decryption under one payload key. The core's own is
/// RustCrypto's ([`SoftAead`]); a host that runs the core inside a sandbox
/// may lend a faster one (docs/EMBEDDING.md): it is a pure function of its
/// inputs, while framing, key checks and every decision stay in the core.
pub trait ChunkAead: Send + Sync {
    /// The plaintext of `sealed` (ciphertext ‖ 16-byte tag), or `None` if
    /// the tag does not authenticate it.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>>;
}

/// Makes the [`ChunkAead`] for a payload key.
pub type AeadFactory = fn(&[u8; 32]) -> Box<dyn ChunkAead>;

/// RustCrypto's AES-256-GCM: AES-NI natively, constant-time software in wasm.
pub struct SoftAead(Aes256Gcm);

impl ChunkAead for SoftAead {
    fn open(&self, nonce: &[u8; 12], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (ct, tag) = sealed.split_at(sealed.len().checked_sub(TAG_LEN)?);
        let mut body = ct.to_vec();
        self.0
            .decrypt_inout_detached(
                &Nonce::from(*nonce),
                aad,
                body.as_mut_slice().into(),
                tag.try_into().ok()?,
            )
            .ok()?;
        Some(body)
    }
}

/// The default [`AeadFactory`].
pub fn soft_aead(key: &[u8; 32]) -> Box<dyn ChunkAead> {
    Box::new(SoftAead(cipher(key)))
}

pub fn open(
    aead: &dyn ChunkAead,
    index: u64,
    last: bool,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>> {
    if sealed.len() < TAG_LEN {
        return Err(Error::corrupt(index, "shorter than an authentication tag"));
    }
    aead.open(&nonce(index, last), aad, sealed).ok_or_else(|| {
        Error::corrupt(
            index,
            "authentication failed: its bytes were changed, or it was moved from another position or archive",
        )
    })
}

/// Raw deflate at `compression`'s level (level 0: stored blocks), with
/// libdeflate: whole-buffer compression suits independent chunks, and it is
/// about 3× faster than zlib-class encoders at the same ratio (bench/README.md).
/// The output depends only on the input and the level (no CPU-specific
/// paths decide a match), so native and wasm builds write the same bytes.
pub fn deflate(data: &[u8], compression: Compression) -> Vec<u8> {
    use libdeflater::{CompressionLvl, Compressor};
    thread_local! {
        // A compressor's tables are worth keeping between chunks.
        static CACHED: RefCell<Option<(u8, Compressor)>> = const { RefCell::new(None) };
    }
    let level = compression.level();
    CACHED.with_borrow_mut(|cached| {
        let c = match cached {
            Some((l, c)) if *l == level => c,
            _ => {
                let lvl = CompressionLvl::new(level.into()).expect("levels 0..=9 are valid");
                &mut cached.insert((level, Compressor::new(lvl))).1
            }
        };
        let mut out = vec![0u8; c.deflate_compress_bound(data.len())];
        let n = c
            .deflate_compress(data, &mut out)
            .expect("the buffer is the compressor's own bound");
        out.truncate(n);
        out
    })
}

/// Inflates a chunk, refusing to produce more than `limit` bytes (a deflate
/// bomb cannot make the reader allocate more than one chunk).
pub fn inflate(index: u64, data: &[u8], limit: usize) -> Result<Vec<u8>> {
    use libdeflater::{DecompressionError, Decompressor};
    let mut out = vec![0u8; limit];
    match Decompressor::new().deflate_decompress(data, &mut out) {
        Ok(n) => {
            out.truncate(n);
            Ok(out)
        }
        Err(DecompressionError::InsufficientSpace) => Err(Error::corrupt(
            index,
            format!(
                "deflate data is invalid (it inflates to more than the chunk size, {limit} bytes)"
            ),
        )),
        Err(DecompressionError::BadData) => Err(Error::corrupt(
            index,
            "deflate data is invalid (not a valid deflate stream)",
        )),
    }
}

/// One zstd frame at `level`, with the content size and a content checksum
/// in its header (so plain `zstd -d` checks each chunk too). Compressed as
/// one buffer with known size: the output depends only on the input, the
/// level and the zstd version, not on the CPU.
pub fn zstd_compress(data: &[u8], level: u8) -> Vec<u8> {
    use zstd::bulk::Compressor;
    thread_local! {
        static CACHED: RefCell<Option<(u8, Compressor<'static>)>> = const { RefCell::new(None) };
    }
    CACHED.with_borrow_mut(|cached| {
        let c = match cached {
            Some((l, c)) if *l == level => c,
            _ => {
                let mut c = Compressor::new(level.into()).expect("zstd makes a context");
                c.include_checksum(true).expect("a valid zstd parameter");
                c.include_contentsize(true).expect("a valid zstd parameter");
                &mut cached.insert((level, c)).1
            }
        };
        c.compress(data)
            .expect("zstd compresses into its own bound")
    })
}

/// Decompresses a chunk that must be exactly one zstd frame, refusing to
/// produce more than `limit` bytes: the output buffer is allocated once at
/// `limit` and zstd decodes into it, so a hostile frame (huge window, huge
/// claimed size) cannot make the reader allocate more.
pub fn zstd_decompress(index: u64, data: &[u8], limit: usize) -> Result<Vec<u8>> {
    use zstd::zstd_safe;
    thread_local! {
        static DCTX: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
    }
    let invalid = |why: &str| Error::corrupt(index, format!("zstd data is invalid ({why})"));
    if data.len() < 4 || data[..4] != zstd_safe::MAGICNUMBER.to_le_bytes() {
        return Err(invalid("not a zstd frame"));
    }
    match zstd_safe::find_frame_compressed_size(data) {
        Ok(n) if n == data.len() => {}
        Ok(_) => return Err(invalid("not exactly one frame")),
        Err(_) => return Err(invalid("its frame is cut short or damaged")),
    }
    if let Ok(Some(n)) = zstd_safe::get_frame_content_size(data)
        && n > limit as u64
    {
        return Err(invalid(&format!(
            "it decompresses to more than the chunk size, {limit} bytes"
        )));
    }
    let mut out: Vec<u8> = Vec::with_capacity(limit);
    DCTX.with_borrow_mut(|d| {
        let d = d.get_or_insert_with(zstd_safe::DCtx::create);
        match d.decompress(&mut out, data) {
            Ok(_) => Ok(out),
            Err(code) if zstd_safe::get_error_name(code).contains("too small") => Err(invalid(
                &format!("it decompresses to more than the chunk size, {limit} bytes"),
            )),
            Err(code) => Err(invalid(zstd_safe::get_error_name(code))),
        }
    })
}

/// The end-of-archive record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub archive_id: [u8; 16],
    pub data_chunks: u64,
    pub plain_len: u64,
    pub sha256: [u8; 32],
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[..16].copy_from_slice(&self.archive_id);
        out[16..24].copy_from_slice(&self.data_chunks.to_le_bytes());
        out[24..32].copy_from_slice(&self.plain_len.to_le_bytes());
        out[32..].copy_from_slice(&self.sha256);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != TRAILER_LEN {
            return Err(Error::CorruptTrailer(format!(
                "{} bytes, expected {TRAILER_LEN}",
                b.len()
            )));
        }
        Ok(Trailer {
            archive_id: b[..16].try_into().expect("16"),
            data_chunks: u64::from_le_bytes(b[16..24].try_into().expect("8")),
            plain_len: u64::from_le_bytes(b[24..32].try_into().expect("8")),
            sha256: b[32..].try_into().expect("32"),
        })
    }
}

/// Running count, length and SHA-256 of the plaintext, in chunk order.
#[derive(Clone, Default)]
pub struct Tally {
    chunks: u64,
    len: u64,
    hasher: Sha256,
}

impl Tally {
    pub fn add(&mut self, plain: &[u8]) {
        self.chunks += 1;
        self.len += plain.len() as u64;
        self.hasher.update(plain);
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    pub fn trailer(&self, archive_id: [u8; 16]) -> Trailer {
        Trailer {
            archive_id,
            data_chunks: self.chunks,
            plain_len: self.len,
            sha256: self.sha256(),
        }
    }

    /// Compares what was decoded with what the trailer promises.
    pub fn check(&self, t: &Trailer) -> Result<()> {
        if t.data_chunks != self.chunks {
            return Err(Error::Truncated(format!(
                "the trailer lists {} chunks but {} were read",
                t.data_chunks, self.chunks
            )));
        }
        if t.plain_len != self.len {
            return Err(Error::ChecksumMismatch(format!(
                "decoded {} bytes, the trailer says {}",
                self.len, t.plain_len
            )));
        }
        if t.sha256 != self.sha256() {
            return Err(Error::ChecksumMismatch(
                "the SHA-256 of the decoded data differs from the one in the trailer".into(),
            ));
        }
        Ok(())
    }
}
