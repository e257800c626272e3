//! Reading archives. [`FrameParser`] cuts frames, [`ArchiveReader`] opens one
//! frame with no shared state (so hosts can decode on every core), and
//! [`Tally`] checks the result against the trailer. [`Decoder`] is the
//! sequential state machine combining them.

use crate::chunk::{self, AeadFactory, ChunkAead, Trailer};
use crate::error::{Error, Result};
use crate::frame::{Event, FrameParser, RawChunk};
use crate::header::{Compression, Encryption, Metadata};
use crate::key::KeyMaterial;

pub use crate::chunk::Tally;

pub struct ArchiveReader {
    meta: Metadata,
    header: Vec<u8>,
    cipher: Option<Box<dyn ChunkAead>>,
}

impl ArchiveReader {
    /// Prepares to open an archive's chunks. Checks the key against the
    /// header's key id first, so a wrong key is never mistaken for damage.
    pub fn new(header: Vec<u8>, meta: Metadata, key: &KeyMaterial) -> Result<Self> {
        Self::with_aead(header, meta, key, chunk::soft_aead)
    }

    /// Like [`new`](Self::new), opening chunks with the AES-256-GCM that
    /// `aead` makes (see [`ChunkAead`]).
    pub fn with_aead(
        header: Vec<u8>,
        meta: Metadata,
        key: &KeyMaterial,
        aead: AeadFactory,
    ) -> Result<Self> {
        let cipher = match meta.encryption {
            Encryption::None => None,
            Encryption::Aes256GcmStream { salt, kdf, key_id } => {
                let master = key.master_for(&kdf)?;
                if master.key_id() != key_id {
                    return Err(Error::WrongKey {
                        expected: crate::header::hex(&key_id),
                        given: master.key_id_hex(),
                    });
                }
                Some(aead(&master.payload_key(&salt, &meta.archive_id)))
            }
        };
        Ok(ArchiveReader {
            meta,
            header,
            cipher,
        })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The plaintext of a data chunk.
    pub fn open_chunk(&self, c: &RawChunk) -> Result<Vec<u8>> {
        if c.last {
            return Err(Error::corrupt(
                c.index,
                "expected a data chunk, found the trailer",
            ));
        }
        let limit = self.meta.chunk_size as usize;
        let plain = match &self.cipher {
            Some(cipher) => {
                let body = chunk::open(cipher.as_ref(), c.index, false, &self.header, &c.body)?;
                match self.meta.compression {
                    Compression::None => body,
                    Compression::Deflate { .. } => chunk::inflate(c.index, &body, limit)?,
                    Compression::Zstd { .. } => chunk::zstd_decompress(c.index, &body, limit)?,
                }
            }
            None => {
                let plain = if self.meta.compression.is_zstd() {
                    chunk::zstd_decompress(c.index, &c.body, limit)?
                } else {
                    chunk::inflate(c.index, &c.body, limit)?
                };
                if plain.len() != c.plain_len as usize || crc32fast::hash(&plain) != c.plain_crc {
                    return Err(Error::corrupt(
                        c.index,
                        "its CRC-32 does not match its contents",
                    ));
                }
                plain
            }
        };
        if plain.is_empty() || plain.len() > limit {
            return Err(Error::corrupt(
                c.index,
                format!("it holds {} bytes; chunks hold 1 to {limit}", plain.len()),
            ));
        }
        Ok(plain)
    }

    /// The trailer, from the final frame.
    pub fn open_trailer(&self, c: &RawChunk) -> Result<Trailer> {
        if !c.last {
            return Err(Error::CorruptTrailer(format!(
                "frame {} is not the trailer",
                c.index
            )));
        }
        let record = match &self.cipher {
            Some(cipher) => chunk::open(cipher.as_ref(), c.index, true, &self.header, &c.body)
                .map_err(|_| {
                    Error::CorruptTrailer("authentication failed: it was changed or moved".into())
                })?,
            None => c.body.clone(),
        };
        let t = Trailer::from_bytes(&record)?;
        if t.archive_id != self.meta.archive_id {
            return Err(Error::ForeignChunk {
                position: c.index,
                found: crate::header::hex(&t.archive_id),
                expected: self.meta.archive_id_hex(),
            });
        }
        Ok(t)
    }
}

/// What a decoder read and checked.
#[derive(Debug, Clone)]
pub struct DecodeSummary {
    pub meta: Metadata,
    pub chunks: u64,
    pub plain_len: u64,
    pub plain_sha256: [u8; 32],
}

/// Sequential decoder: push archive bytes, get plaintext. Everything is
/// checked before `finish` returns Ok; after an error it only repeats it.
pub struct Decoder {
    key: KeyMaterial,
    aead: AeadFactory,
    parser: FrameParser,
    reader: Option<ArchiveReader>,
    tally: Tally,
    trailer: Option<Trailer>,
    failed: Option<Error>,
}

impl Decoder {
    pub fn new(key: KeyMaterial) -> Self {
        Self::with_aead(key, chunk::soft_aead)
    }

    /// A decoder that opens chunks with the AES-256-GCM `aead` makes.
    pub fn with_aead(key: KeyMaterial, aead: AeadFactory) -> Self {
        Decoder {
            key,
            aead,
            parser: FrameParser::new(),
            reader: None,
            tally: Tally::default(),
            trailer: None,
            failed: None,
        }
    }

    pub fn metadata(&self) -> Option<&Metadata> {
        self.reader.as_ref().map(|r| r.metadata())
    }

    /// Takes archive bytes and returns all the plaintext they complete.
    /// What one push returns is not bounded by what it was given: a few KiB
    /// of a zeroblob database's archive decode to hundreds of MiB. Where
    /// memory must stay bounded, use [`Decoder::feed`] and
    /// [`Decoder::pull`].
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.feed(data)?;
        let mut out = Vec::new();
        while let Some(plain) = self.pull()? {
            out.extend_from_slice(&plain);
        }
        Ok(out)
    }

    /// Pull-style decoding, first half: takes archive bytes without
    /// decoding any.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.parser.push(data);
        Ok(())
    }

    /// Pull-style decoding, second half: the plaintext of the next chunk,
    /// or `None` once the bytes fed so far hold no further complete chunk
    /// (feed more, or `finish`). Memory stays at the bytes fed and not yet
    /// decoded plus one chunk, whatever the archive decodes to.
    pub fn pull(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.next_plain()
            .inspect_err(|e| self.failed = Some(e.clone()))
    }

    pub fn finish(mut self) -> Result<DecodeSummary> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.parser.finish()?;
        let reader = self.reader.expect("a finished parser has seen the header");
        Ok(DecodeSummary {
            meta: reader.meta,
            chunks: self.tally.chunks(),
            plain_len: self.tally.len(),
            plain_sha256: self.tally.sha256(),
        })
    }

    /// Decodes frames until one data chunk's plaintext is ready.
    fn next_plain(&mut self) -> Result<Option<Vec<u8>>> {
        while let Some(ev) = self.parser.next_event()? {
            match ev {
                Event::Header { bytes, meta } => {
                    self.reader =
                        Some(ArchiveReader::with_aead(bytes, meta, &self.key, self.aead)?);
                }
                Event::Chunk(c) => {
                    let reader = self.reader.as_ref().expect("header comes first");
                    if c.last {
                        let t = reader.open_trailer(&c)?;
                        self.tally.check(&t)?;
                        self.trailer = Some(t);
                    } else {
                        let plain = reader.open_chunk(&c)?;
                        self.tally.add(&plain);
                        return Ok(Some(plain));
                    }
                }
            }
        }
        Ok(None)
    }
}
