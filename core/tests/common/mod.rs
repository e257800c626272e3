#![allow(dead_code)]
use cairn_core::encoder::EncryptionParams;
use cairn_core::{
    Compression, Decoder, Encoder, Kdf, KeyMaterial, MasterKey, SourceKind, WriterParams,
};

pub const CHUNK: u32 = 4096;

pub fn key() -> MasterKey {
    MasterKey([7u8; 32])
}

/// A compression given as a deflate level (0..=9) or as itself.
pub trait Codec {
    fn compression(self) -> Compression;
}

impl Codec for u8 {
    fn compression(self) -> Compression {
        Compression::from_level(self).unwrap()
    }
}

impl Codec for Compression {
    fn compression(self) -> Compression {
        self
    }
}

pub const ZSTD3: Compression = Compression::Zstd { level: 3 };

pub fn params(level: impl Codec, encrypted: bool) -> WriterParams {
    WriterParams {
        archive_id: [0xA1; 16],
        source: SourceKind::Sqlite,
        db_name: "app.db".into(),
        created_at_ms: 1_795_359_662_345,
        page_size: 4096,
        chunk_size: CHUNK,
        compression: level.compression(),
        encryption: encrypted.then(|| EncryptionParams {
            master: key(),
            kdf: Kdf::RawKey,
            salt: [0x5A; 32],
        }),
    }
}

/// Compressible but not trivial: text-like records.
pub fn sample(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x: u32 = 12345;
    while out.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        out.extend_from_slice(
            format!("row {} name-{} value {};", x % 1000, (x >> 8) % 97, x >> 16).as_bytes(),
        );
    }
    out.truncate(len);
    out
}

pub fn encode(p: WriterParams, data: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(p).unwrap();
    let mut out = e.push(data).unwrap();
    out.extend(e.finish().unwrap().0);
    out
}

pub fn decode_with(
    key: KeyMaterial,
    archive: &[u8],
    piece: usize,
) -> Result<Vec<u8>, cairn_core::Error> {
    let mut d = Decoder::new(key);
    let mut out = Vec::new();
    for part in archive.chunks(piece.max(1)) {
        out.extend(d.push(part)?);
    }
    if archive.is_empty() {
        out.extend(d.push(&[])?);
    }
    d.finish()?;
    Ok(out)
}

pub fn decode(archive: &[u8]) -> Result<Vec<u8>, cairn_core::Error> {
    decode_with(KeyMaterial::Key(key()), archive, 1000)
}

/// Byte ranges of each frame: [preamble, chunk 0, chunk 1, ..., final].
pub fn frames(p: &WriterParams, data: &[u8]) -> Vec<Vec<u8>> {
    let w = cairn_core::ArchiveWriter::new(p.clone()).unwrap();
    let mut t = cairn_core::Tally::default();
    let mut out = vec![w.preamble()];
    for (i, c) in data.chunks(p.chunk_size as usize).enumerate() {
        out.push(w.encode_chunk(i as u64, c).unwrap());
        t.add(c);
    }
    out.push(w.finale(&t.trailer(p.archive_id)));
    out
}
