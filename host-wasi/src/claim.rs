//! A decoder for `--host-digests`: it checks everything the core's
//! `Decoder` checks (every frame, tag, CRC, chunk count and length against
//! the trailer) except the two SHA-256 sums, which it reports as the trailer
//! claims them for the host to compute and compare. SHA-256 in wasm runs at
//! a fraction of native speed (no SHA instructions), and hashing is not
//! parsing: the host reads the archive and the decoded file as opaque bytes,
//! on its other core, while this guest decodes and SQLite checks.

use cairn_core::chunk::{AeadFactory, Trailer};
use cairn_core::{ArchiveReader, DecodeSummary, Error, Event, FrameParser, KeyMaterial, Metadata};

pub struct ClaimDecoder {
    key: KeyMaterial,
    aead: AeadFactory,
    parser: FrameParser,
    reader: Option<ArchiveReader>,
    chunks: u64,
    len: u64,
    trailer: Option<Trailer>,
    failed: Option<Error>,
}

impl ClaimDecoder {
    pub fn new(key: KeyMaterial, aead: AeadFactory) -> Self {
        ClaimDecoder {
            key,
            aead,
            parser: FrameParser::new(),
            reader: None,
            chunks: 0,
            len: 0,
            trailer: None,
            failed: None,
        }
    }

    pub fn metadata(&self) -> Option<&Metadata> {
        self.reader.as_ref().map(|r| r.metadata())
    }

    /// As the core's `Decoder::feed`: buffers archive bytes, decodes nothing.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.parser.push(data);
        Ok(())
    }

    /// As the core's `Decoder::pull`: the next data chunk's plaintext, or
    /// `None` until more is fed. One chunk at a time, so memory stays at a
    /// chunk whatever a slice of the archive decodes to (zeroblobs, a bomb).
    pub fn pull(&mut self) -> Result<Option<Vec<u8>>, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.next_plain()
            .inspect_err(|e| self.failed = Some(e.clone()))
    }

    /// The summary, with `plain_sha256` as the trailer claims it.
    pub fn finish(mut self) -> Result<DecodeSummary, Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.parser.finish()?;
        let (Some(reader), Some(trailer)) = (self.reader, self.trailer) else {
            return Err(Error::Truncated(
                "the archive ends before its trailer".into(),
            ));
        };
        Ok(DecodeSummary {
            meta: reader.metadata().clone(),
            chunks: self.chunks,
            plain_len: self.len,
            plain_sha256: trailer.sha256,
        })
    }

    /// Decodes frames until one data chunk's plaintext is ready.
    fn next_plain(&mut self) -> Result<Option<Vec<u8>>, Error> {
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
                        // The checks of `Tally::check`, less the digest.
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
                        self.trailer = Some(t);
                    } else {
                        let plain = reader.open_chunk(&c)?;
                        self.chunks += 1;
                        self.len += plain.len() as u64;
                        return Ok(Some(plain));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::ClaimDecoder;
    use cairn_core::chunk::soft_aead;
    use cairn_core::{Compression, Decoder, Encoder, KeyMaterial, SourceKind, WriterParams};

    fn archive(data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(WriterParams {
            archive_id: [7; 16],
            source: SourceKind::Sqlite,
            db_name: "t.db".into(),
            created_at_ms: 0,
            page_size: 4096,
            chunk_size: 4096,
            compression: Compression::Deflate { level: 1 },
            encryption: None,
        })
        .unwrap();
        let mut out = enc.push(data).unwrap();
        out.extend(enc.finish().unwrap().0);
        out
    }

    fn claim(bytes: &[u8]) -> Result<(Vec<u8>, cairn_core::DecodeSummary), cairn_core::Error> {
        let mut d = ClaimDecoder::new(KeyMaterial::None, soft_aead);
        let mut out = Vec::new();
        for piece in bytes.chunks(1000) {
            d.feed(piece)?;
            while let Some(plain) = d.pull()? {
                out.extend(plain);
            }
        }
        Ok((out, d.finish()?))
    }

    #[test]
    fn it_decodes_as_the_core_does_and_reports_the_trailers_digest() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = archive(&data);
        let (out, s) = claim(&bytes).unwrap();
        let mut full = Decoder::new(KeyMaterial::None);
        let expected = full.push(&bytes).unwrap();
        let f = full.finish().unwrap();
        assert_eq!(out, expected);
        assert_eq!(out, data);
        assert_eq!(
            (s.chunks, s.plain_len, s.plain_sha256),
            (f.chunks, f.plain_len, f.plain_sha256)
        );
    }

    #[test]
    fn a_truncated_or_damaged_archive_fails_as_in_the_core() {
        let data = vec![9u8; 20_000];
        let bytes = archive(&data);
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        for broken in [
            &bytes[..bytes.len() - 10],
            &bytes[..bytes.len() / 3],
            &bad[..],
        ] {
            let e = claim(broken).unwrap_err();
            let core = {
                let mut d = Decoder::new(KeyMaterial::None);
                d.push(broken).and_then(|_| d.finish()).unwrap_err()
            };
            assert_eq!(e.code(), core.code(), "{e} / {core}");
        }
    }
}
