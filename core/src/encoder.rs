//! Writing archives. [`ArchiveWriter`] turns one chunk into one frame with no
//! shared state, so a host can encode chunks on every core at once;
//! [`Encoder`] is the sequential state machine on top (push bytes, get bytes).

use aes_gcm::Aes256Gcm;

use crate::chunk::{self, Tally, Trailer};
use crate::error::{Error, Result};
use crate::frame::{self, KIND_DATA, KIND_FINAL, SUB_CHUNK, SUB_HEADER, SUB_TRAILER};
use crate::header::{Compression, Encryption, Kdf, Metadata, SourceKind};
use crate::key::MasterKey;

/// Encryption inputs: the master key (already derived, if from a
/// passphrase), how it was derived (recorded in the header) and a fresh
/// random salt from the host.
#[derive(Clone, Debug)]
pub struct EncryptionParams {
    pub master: MasterKey,
    pub kdf: Kdf,
    pub salt: [u8; 32],
}

/// Everything that determines an archive's bytes besides its payload.
#[derive(Clone, Debug)]
pub struct WriterParams {
    /// Random, from the host; names the archive and keys it.
    pub archive_id: [u8; 16],
    pub source: SourceKind,
    pub db_name: String,
    /// Unix milliseconds, from the host's clock.
    pub created_at_ms: i64,
    pub page_size: u32,
    pub chunk_size: u32,
    pub compression: Compression,
    pub encryption: Option<EncryptionParams>,
}

pub struct ArchiveWriter {
    meta: Metadata,
    header: Vec<u8>,
    cipher: Option<Aes256Gcm>,
}

impl ArchiveWriter {
    pub fn new(p: WriterParams) -> Result<Self> {
        let (encryption, cipher) = match &p.encryption {
            None => (Encryption::None, None),
            Some(e) => (
                Encryption::Aes256GcmStream {
                    salt: e.salt,
                    kdf: e.kdf,
                    key_id: e.master.key_id(),
                },
                Some(chunk::cipher(&e.master.payload_key(&e.salt, &p.archive_id))),
            ),
        };
        let meta = Metadata {
            archive_id: p.archive_id,
            source: p.source,
            db_name: p.db_name,
            created_at_ms: p.created_at_ms,
            page_size: p.page_size,
            chunk_size: p.chunk_size,
            compression: p.compression,
            encryption,
        };
        let header = meta.to_header_bytes()?;
        Ok(ArchiveWriter {
            meta,
            header,
            cipher,
        })
    }

    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    pub fn chunk_size(&self) -> usize {
        self.meta.chunk_size as usize
    }

    /// The bytes that open the archive.
    pub fn preamble(&self) -> Vec<u8> {
        match self.cipher {
            Some(_) => self.header.clone(),
            None if self.meta.compression.is_zstd() => {
                frame::zstd_skippable(SUB_HEADER, &self.header)
            }
            None => {
                let mut out = frame::gzip_member_head(SUB_HEADER, &self.header);
                out.extend_from_slice(&frame::EMPTY_MEMBER_TAIL);
                out
            }
        }
    }

    /// The frame of data chunk `index`: 1 to chunk-size bytes of plaintext.
    /// Depends only on its arguments, so chunks can be encoded in parallel.
    pub fn encode_chunk(&self, index: u64, data: &[u8]) -> Result<Vec<u8>> {
        if data.is_empty() || data.len() > self.chunk_size() {
            return Err(Error::param(
                "chunk",
                format!(
                    "{} bytes; a chunk holds 1 to {} bytes",
                    data.len(),
                    self.chunk_size()
                ),
            ));
        }
        match &self.cipher {
            Some(c) => {
                let body = match self.meta.compression {
                    Compression::None => data.to_vec(),
                    Compression::Zstd { level } => chunk::zstd_compress(data, level),
                    level => chunk::deflate(data, level),
                };
                let sealed = chunk::seal(c, index, false, &self.header, body);
                Ok(self.encrypted_frame(index, KIND_DATA, sealed))
            }
            None if self.meta.compression.is_zstd() => {
                let z = chunk::zstd_compress(data, self.meta.compression.level());
                let ck = frame::zck_payload(
                    &self.meta.archive_id,
                    index,
                    z.len() as u32,
                    data.len() as u32,
                    crc32fast::hash(data),
                    crc32fast::hash(&z),
                );
                let mut out = frame::zstd_skippable(SUB_CHUNK, &ck);
                out.extend_from_slice(&z);
                Ok(out)
            }
            None => {
                let deflated = chunk::deflate(data, self.meta.compression);
                let ck = frame::ck_payload(
                    &self.meta.archive_id,
                    index,
                    deflated.len() as u32,
                    data.len() as u32,
                );
                let mut out = frame::gzip_member_head(SUB_CHUNK, &ck);
                out.reserve(deflated.len() + 8);
                out.extend_from_slice(&deflated);
                out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                Ok(out)
            }
        }
    }

    /// The closing frame, after `trailer.data_chunks` data chunks.
    pub fn finale(&self, trailer: &Trailer) -> Vec<u8> {
        let record = trailer.to_bytes();
        let index = trailer.data_chunks;
        match &self.cipher {
            Some(c) => {
                let sealed = chunk::seal(c, index, true, &self.header, record.to_vec());
                self.encrypted_frame(index, KIND_FINAL, sealed)
            }
            None => {
                let mut ct = record.to_vec();
                ct.extend_from_slice(&crc32fast::hash(&record).to_le_bytes());
                if self.meta.compression.is_zstd() {
                    return frame::zstd_skippable(SUB_TRAILER, &ct);
                }
                let mut out = frame::gzip_member_head(SUB_TRAILER, &ct);
                out.extend_from_slice(&frame::EMPTY_MEMBER_TAIL);
                out
            }
        }
    }

    fn encrypted_frame(&self, index: u64, kind: u8, sealed: Vec<u8>) -> Vec<u8> {
        let head =
            frame::encrypted_frame_header(&self.meta.archive_id, index, kind, sealed.len() as u32);
        let mut out = Vec::with_capacity(head.len() + sealed.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&sealed);
        out
    }
}

/// What an encoder wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeSummary {
    pub archive_id: [u8; 16],
    pub chunks: u64,
    pub plain_len: u64,
    pub plain_sha256: [u8; 32],
    pub stored_len: u64,
}

/// Sequential encoder: push plaintext, get archive bytes; memory is one chunk.
pub struct Encoder {
    writer: ArchiveWriter,
    pending: Vec<u8>,
    tally: Tally,
    started: bool,
    stored: u64,
}

impl Encoder {
    pub fn new(params: WriterParams) -> Result<Self> {
        let writer = ArchiveWriter::new(params)?;
        let pending = Vec::with_capacity(writer.chunk_size());
        Ok(Encoder {
            writer,
            pending,
            tally: Tally::default(),
            started: false,
            stored: 0,
        })
    }

    pub fn writer(&self) -> &ArchiveWriter {
        &self.writer
    }

    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<u8>> {
        let mut out = self.start();
        let size = self.writer.chunk_size();
        while !data.is_empty() {
            let take = (size - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == size {
                out.extend(self.flush()?);
            }
        }
        self.stored += out.len() as u64;
        Ok(out)
    }

    pub fn finish(mut self) -> Result<(Vec<u8>, EncodeSummary)> {
        let mut out = self.start();
        if !self.pending.is_empty() {
            out.extend(self.flush()?);
        }
        let trailer = self.tally.trailer(self.writer.metadata().archive_id);
        out.extend(self.writer.finale(&trailer));
        self.stored += out.len() as u64;
        let summary = EncodeSummary {
            archive_id: trailer.archive_id,
            chunks: trailer.data_chunks,
            plain_len: trailer.plain_len,
            plain_sha256: trailer.sha256,
            stored_len: self.stored,
        };
        Ok((out, summary))
    }

    fn start(&mut self) -> Vec<u8> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        self.writer.preamble()
    }

    fn flush(&mut self) -> Result<Vec<u8>> {
        let frame = self
            .writer
            .encode_chunk(self.tally.chunks(), &self.pending)?;
        self.tally.add(&self.pending);
        self.pending.clear();
        Ok(frame)
    }
}
