//! The WIT exports (wasm32 only): thin conversions between the `cairn:core`
//! interface types and this crate's types. No logic lives here.

use std::cell::RefCell;

use exports::cairn::core::codec::{self, GuestDecoder, GuestEncoder};
use exports::cairn::core::manifest;
use exports::cairn::core::types as w;

use crate::catalog::{self, Catalog, Entry, EntryKind};
use crate::encoder::EncryptionParams;
use crate::{
    Compression, Decoder, Encoder, Error, ErrorCode, Kdf, KeyMaterial, MasterKey, SourceKind,
    WriterParams,
};

wit_bindgen::generate!({ path: "../wit", world: "cairn" });

struct Component;
export!(Component);

fn err(e: Error) -> w::Error {
    let code = match e.code() {
        ErrorCode::NotAnArchive => w::ErrorCode::NotAnArchive,
        ErrorCode::UnsupportedVersion => w::ErrorCode::UnsupportedVersion,
        ErrorCode::CorruptHeader => w::ErrorCode::CorruptHeader,
        ErrorCode::KeyRequired => w::ErrorCode::KeyRequired,
        ErrorCode::WrongKey => w::ErrorCode::WrongKey,
        ErrorCode::InvalidKey => w::ErrorCode::InvalidKey,
        ErrorCode::Truncated => w::ErrorCode::Truncated,
        ErrorCode::CorruptChunk => w::ErrorCode::CorruptChunk,
        ErrorCode::ForeignChunk => w::ErrorCode::ForeignChunk,
        ErrorCode::OutOfOrder => w::ErrorCode::OutOfOrder,
        ErrorCode::CorruptTrailer => w::ErrorCode::CorruptTrailer,
        ErrorCode::ChecksumMismatch => w::ErrorCode::ChecksumMismatch,
        ErrorCode::TrailingData => w::ErrorCode::TrailingData,
        ErrorCode::InvalidParam => w::ErrorCode::InvalidParam,
        ErrorCode::Catalog => w::ErrorCode::Catalog,
    };
    w::Error {
        code,
        message: e.to_string(),
    }
}

fn array<const N: usize>(name: &'static str, v: &[u8]) -> Result<[u8; N], w::Error> {
    v.try_into().map_err(|_| {
        err(Error::InvalidParam {
            name,
            reason: format!("{} bytes, expected {N}", v.len()),
        })
    })
}

fn master(v: &[u8]) -> Result<MasterKey, w::Error> {
    array::<32>("master key", v).map(MasterKey)
}

fn kdf(k: &w::Kdf) -> Result<Kdf, w::Error> {
    Ok(match k {
        w::Kdf::RawKey => Kdf::RawKey,
        w::Kdf::Argon2id(p) => Kdf::Argon2id {
            m_cost_kib: p.m_cost_kib,
            t_cost: p.t_cost,
            p_cost: p.p_cost,
            salt: array("Argon2id salt", &p.salt)?,
        },
    })
}

fn source(s: w::SourceKind) -> SourceKind {
    match s {
        w::SourceKind::Sqlite => SourceKind::Sqlite,
        w::SourceKind::Postgres => SourceKind::Postgres,
        w::SourceKind::File => SourceKind::File,
    }
}

fn source_out(s: SourceKind) -> w::SourceKind {
    match s {
        SourceKind::Sqlite => w::SourceKind::Sqlite,
        SourceKind::Postgres => w::SourceKind::Postgres,
        SourceKind::File => w::SourceKind::File,
    }
}

fn writer_params(p: w::WriterParams) -> Result<WriterParams, w::Error> {
    let encryption = match &p.encryption {
        None => None,
        Some(e) => Some(EncryptionParams {
            master: master(&e.master_key)?,
            kdf: kdf(&e.kdf)?,
            salt: array("salt", &e.salt)?,
        }),
    };
    Ok(WriterParams {
        archive_id: array("archive id", &p.archive_id)?,
        source: source(p.source),
        db_name: p.db_name,
        created_at_ms: p.created_at_ms,
        page_size: p.page_size,
        chunk_size: p.chunk_size,
        compression: match p.codec {
            w::CodecId::Deflate => Compression::from_level(p.compression_level),
            w::CodecId::Zstd => Compression::zstd(p.compression_level),
        }
        .map_err(err)?,
        encryption,
    })
}

fn info(m: &crate::Metadata) -> w::ArchiveInfo {
    let key_id = match m.encryption {
        crate::Encryption::Aes256GcmStream { key_id, .. } => Some(crate::header::hex(&key_id)),
        crate::Encryption::None => None,
    };
    w::ArchiveInfo {
        archive_id: m.archive_id_hex(),
        source: source_out(m.source),
        db_name: m.db_name.clone(),
        created_at_ms: m.created_at_ms,
        page_size: m.page_size,
        chunk_size: m.chunk_size,
        compression: m.compression.describe(),
        encryption: m.encryption.describe().into(),
        key_id,
    }
}

pub struct EncoderRes(RefCell<Option<Encoder>>);

/// Runs `f` on a resource's state, or says it is finished (`what`: the
/// resource's name).
fn with_live<S, T>(
    slot: &RefCell<Option<S>>,
    what: &'static str,
    f: impl FnOnce(&mut S) -> Result<T, Error>,
) -> Result<T, w::Error> {
    let mut slot = slot.borrow_mut();
    let live = slot
        .as_mut()
        .ok_or_else(|| err(Error::param(what, "already finished")))?;
    f(live).map_err(err)
}

impl EncoderRes {
    fn with<T>(&self, f: impl FnOnce(&mut Encoder) -> Result<T, Error>) -> Result<T, w::Error> {
        with_live(&self.0, "encoder", f)
    }
}

impl GuestEncoder for EncoderRes {
    fn create(params: w::WriterParams) -> Result<codec::Encoder, w::Error> {
        let enc = Encoder::new(writer_params(params)?).map_err(err)?;
        Ok(codec::Encoder::new(EncoderRes(RefCell::new(Some(enc)))))
    }

    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, w::Error> {
        self.with(|e| e.push(&data))
    }

    fn finish(&self) -> Result<(Vec<u8>, w::EncodeSummary), w::Error> {
        let enc = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| err(Error::param("encoder", "already finished")))?;
        let (bytes, s) = enc.finish().map_err(err)?;
        let summary = w::EncodeSummary {
            chunks: s.chunks,
            plain_len: s.plain_len,
            plain_sha256: s.plain_sha256.to_vec(),
            stored_len: s.stored_len,
        };
        Ok((bytes, summary))
    }

    fn preamble(&self) -> Vec<u8> {
        self.with(|e| Ok(e.writer().preamble())).unwrap_or_default()
    }

    fn encode_chunk(&self, index: u64, data: Vec<u8>) -> Result<Vec<u8>, w::Error> {
        self.with(|e| e.writer().encode_chunk(index, &data))
    }

    fn finale(
        &self,
        data_chunks: u64,
        plain_len: u64,
        plain_sha256: Vec<u8>,
    ) -> Result<Vec<u8>, w::Error> {
        let sha256 = array("plain SHA-256", &plain_sha256)?;
        self.with(|e| {
            let archive_id = e.writer().metadata().archive_id;
            Ok(e.writer().finale(&crate::chunk::Trailer {
                archive_id,
                data_chunks,
                plain_len,
                sha256,
            }))
        })
    }
}

pub struct DecoderRes(RefCell<Option<Decoder>>);

impl DecoderRes {
    fn with<T>(&self, f: impl FnOnce(&mut Decoder) -> Result<T, Error>) -> Result<T, w::Error> {
        with_live(&self.0, "decoder", f)
    }
}

impl GuestDecoder for DecoderRes {
    fn new(key: w::Key) -> Self {
        let key = match key {
            w::Key::None => KeyMaterial::None,
            w::Key::Raw(k) => match master(&k) {
                Ok(m) => KeyMaterial::Key(m),
                // Surfaces on the first push or pull as "invalid key" via a key that cannot match.
                Err(_) => KeyMaterial::Passphrase(String::new()),
            },
            w::Key::Passphrase(p) => KeyMaterial::Passphrase(p),
        };
        DecoderRes(RefCell::new(Some(Decoder::new(key))))
    }

    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, w::Error> {
        self.with(|dec| dec.push(&data))
    }

    fn feed(&self, data: Vec<u8>) -> Result<(), w::Error> {
        self.with(|dec| dec.feed(&data))
    }

    fn pull(&self) -> Result<Option<Vec<u8>>, w::Error> {
        self.with(|dec| dec.pull())
    }

    fn finish(&self) -> Result<w::DecodeSummary, w::Error> {
        let dec = self
            .0
            .borrow_mut()
            .take()
            .ok_or_else(|| err(Error::param("decoder", "already finished")))?;
        let s = dec.finish().map_err(err)?;
        Ok(w::DecodeSummary {
            info: info(&s.meta),
            chunks: s.chunks,
            plain_len: s.plain_len,
            plain_sha256: s.plain_sha256.to_vec(),
        })
    }
}

impl codec::Guest for Component {
    type Encoder = EncoderRes;
    type Decoder = DecoderRes;

    fn derive_key(passphrase: String, params: w::Argon2Params) -> Result<Vec<u8>, w::Error> {
        let k = kdf(&w::Kdf::Argon2id(params))?;
        crate::key::derive_from_passphrase(&passphrase, &k)
            .map(|m| m.0.to_vec())
            .map_err(err)
    }

    fn key_id(master_key: Vec<u8>) -> Result<String, w::Error> {
        Ok(master(&master_key)?.key_id_hex())
    }

    fn sniff(prefix: Vec<u8>) -> w::Kind {
        match crate::sniff(&prefix) {
            crate::Kind::CairnEncrypted => w::Kind::CairnEncrypted,
            crate::Kind::Gzip { cairn: true } => w::Kind::CairnGzip,
            crate::Kind::Gzip { cairn: false } => w::Kind::Gzip,
            crate::Kind::Zstd { cairn: true } => w::Kind::CairnZstd,
            crate::Kind::Zstd { cairn: false } => w::Kind::Zstd,
            crate::Kind::Sqlite => w::Kind::Sqlite,
            crate::Kind::PgDumpCustom => w::Kind::PgDumpCustom,
            crate::Kind::SqlText => w::Kind::SqlText,
            crate::Kind::Unknown => w::Kind::Unknown,
        }
    }
}

fn entry_in(e: manifest::Entry) -> Entry {
    Entry {
        id: e.id,
        kind: EntryKind::Snapshot,
        object: e.object,
        created_at: e.created_at,
        created_at_ms: e.created_at_ms,
        source: e.source,
        db_name: e.db_name,
        page_size: e.page_size,
        plain_size: e.plain_size,
        plain_sha256: e.plain_sha256,
        stored_size: e.stored_size,
        stored_sha256: e.stored_sha256,
        compression: e.compression,
        encryption: e.encryption,
        key_id: e.key_id,
        archive_id: e.archive_id,
        server_version: None,
        dump_format: None,
        pg_dump_version: None,
        extra: Default::default(),
    }
}

fn entry_out(e: Entry) -> manifest::Entry {
    manifest::Entry {
        id: e.id,
        object: e.object,
        created_at: e.created_at,
        created_at_ms: e.created_at_ms,
        source: e.source,
        db_name: e.db_name,
        page_size: e.page_size,
        plain_size: e.plain_size,
        plain_sha256: e.plain_sha256,
        stored_size: e.stored_size,
        stored_sha256: e.stored_sha256,
        compression: e.compression,
        encryption: e.encryption,
        key_id: e.key_id,
        archive_id: e.archive_id,
    }
}

fn catalog_in(c: manifest::Catalog) -> Catalog {
    Catalog {
        generation: c.generation,
        entries: c.entries.into_iter().map(entry_in).collect(),
    }
}

fn catalog_out(c: Catalog) -> manifest::Catalog {
    manifest::Catalog {
        generation: c.generation,
        entries: c.entries.into_iter().map(entry_out).collect(),
    }
}

impl manifest::Guest for Component {
    fn parse_catalog(bytes: Vec<u8>) -> Result<manifest::Catalog, w::Error> {
        Catalog::parse(&bytes).map(catalog_out).map_err(err)
    }

    fn render_catalog(catalog: manifest::Catalog) -> Vec<u8> {
        catalog_in(catalog).render()
    }

    fn add_entry(
        catalog: manifest::Catalog,
        entry: manifest::Entry,
    ) -> Result<manifest::Catalog, w::Error> {
        let mut c = catalog_in(catalog);
        c.add(entry_in(entry)).map_err(err)?;
        Ok(catalog_out(c))
    }

    fn latest_pointer(entry: manifest::Entry) -> Vec<u8> {
        catalog::latest_pointer(&entry_in(entry))
    }

    fn parse_latest_pointer(bytes: Vec<u8>) -> Result<String, w::Error> {
        catalog::parse_latest_pointer(&bytes).map_err(err)
    }

    fn snapshot_id(created_at_ms: i64, random: Vec<u8>) -> String {
        let mut r = [0u8; 4];
        let n = random.len().min(4);
        r[..n].copy_from_slice(&random[..n]);
        catalog::snapshot_id(created_at_ms, r)
    }

    fn snapshot_object_key(id: String, encrypted: bool) -> String {
        catalog::snapshot_object_key(&id, encrypted)
    }
}
