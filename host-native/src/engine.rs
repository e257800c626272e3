//! Where the core runs: natively, or inside the embedded WebAssembly
//! component. Both give the same bytes; the pipeline does not care which.

use anyhow::{Result, anyhow};
use cairn_core::chunk::Trailer;
use cairn_core::encoder::EncryptionParams;
use cairn_core::{ArchiveWriter, Kdf, KeyMaterial, SourceKind, WriterParams};
use std::sync::Arc;

use crate::sandbox::{self, Guest, Limits, Runtime, wit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The core compiled into this binary (fastest).
    Native,
    /// The core as a WebAssembly component inside wasmtime (sandboxed).
    Wasm,
}

/// Encodes chunks for one archive. One per worker thread.
pub trait ChunkEncoder: Send {
    fn preamble(&mut self) -> Result<Vec<u8>>;
    fn encode_chunk(&mut self, index: u64, data: &[u8]) -> Result<Vec<u8>>;
    fn finale(&mut self, trailer: &Trailer) -> Result<Vec<u8>>;
}

struct NativeEncoder(Arc<ArchiveWriter>);

impl ChunkEncoder for NativeEncoder {
    fn preamble(&mut self) -> Result<Vec<u8>> {
        Ok(self.0.preamble())
    }
    fn encode_chunk(&mut self, index: u64, data: &[u8]) -> Result<Vec<u8>> {
        Ok(self.0.encode_chunk(index, data)?)
    }
    fn finale(&mut self, trailer: &Trailer) -> Result<Vec<u8>> {
        Ok(self.0.finale(trailer))
    }
}

struct WasmEncoder {
    guest: Guest,
    resource: wasmtime::component::ResourceAny,
}

impl ChunkEncoder for WasmEncoder {
    fn preamble(&mut self) -> Result<Vec<u8>> {
        self.guest.encoder_preamble(self.resource)
    }
    fn encode_chunk(&mut self, index: u64, data: &[u8]) -> Result<Vec<u8>> {
        Ok(self.guest.encoder_chunk(self.resource, index, data)??)
    }
    fn finale(&mut self, trailer: &Trailer) -> Result<Vec<u8>> {
        Ok(self.guest.encoder_finale(self.resource, trailer)??)
    }
}

/// `count` encoders for the same archive.
pub fn encoders(
    engine: EngineKind,
    params: &WriterParams,
    count: usize,
) -> Result<Vec<Box<dyn ChunkEncoder>>> {
    match engine {
        EngineKind::Native => {
            let w = Arc::new(ArchiveWriter::new(params.clone())?);
            Ok((0..count)
                .map(|_| Box::new(NativeEncoder(w.clone())) as Box<dyn ChunkEncoder>)
                .collect())
        }
        EngineKind::Wasm => {
            let rt = Runtime::for_own_data()?;
            let wp = wit_params(params);
            (0..count)
                .map(|_| {
                    // Our own plaintext: generous limits, this is not the sandbox for untrusted input.
                    let mut guest = rt.instance(Limits {
                        memory: 1 << 30,
                        ..Limits::default()
                    })?;
                    let resource = guest.encoder_create(&wp)??;
                    Ok(Box::new(WasmEncoder { guest, resource }) as Box<dyn ChunkEncoder>)
                })
                .collect()
        }
    }
}

fn wit_params(p: &WriterParams) -> wit::WriterParams {
    let encryption = p
        .encryption
        .as_ref()
        .map(|e: &EncryptionParams| wit::EncryptionParams {
            master_key: e.master.0.to_vec(),
            kdf: match e.kdf {
                Kdf::RawKey => wit::Kdf::RawKey,
                Kdf::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt,
                } => wit::Kdf::Argon2id(wit::Argon2Params {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt: salt.to_vec(),
                }),
            },
            salt: e.salt.to_vec(),
        });
    wit::WriterParams {
        archive_id: p.archive_id.to_vec(),
        source: match p.source {
            SourceKind::Sqlite => wit::SourceKind::Sqlite,
            SourceKind::Postgres => wit::SourceKind::Postgres,
            SourceKind::File => wit::SourceKind::File,
        },
        db_name: p.db_name.clone(),
        created_at_ms: p.created_at_ms,
        page_size: p.page_size,
        chunk_size: p.chunk_size,
        compression_level: p.compression.level(),
        codec: if p.compression.is_zstd() {
            wit::CodecId::Zstd
        } else {
            wit::CodecId::Deflate
        },
        encryption,
    }
}

pub fn wit_key(key: &KeyMaterial) -> wit::Key {
    match key {
        KeyMaterial::None => wit::Key::None,
        KeyMaterial::Key(k) => wit::Key::Raw(k.0.to_vec()),
        KeyMaterial::Passphrase(p) => wit::Key::Passphrase(p.clone()),
    }
}

/// A sequential decoder inside a sandboxed guest.
pub struct SandboxDecoder {
    guest: Guest,
    resource: wasmtime::component::ResourceAny,
}

impl SandboxDecoder {
    pub fn new(key: &KeyMaterial, limits: Limits) -> Result<Self> {
        let mut guest = Runtime::get()?.instance(limits)?;
        let resource = guest.decoder_new(&wit_key(key))?;
        Ok(SandboxDecoder { guest, resource })
    }

    /// Hands archive bytes over; `pull` then decodes them a chunk at a
    /// time, so the guest never holds more than one chunk of plaintext (one
    /// push of a zeroblob database's archive could decode to GiBs). Outer
    /// error: the sandbox itself stopped; inner: the archive is bad.
    pub fn feed(&mut self, data: &[u8]) -> sandbox::CallResult<()> {
        self.guest.decoder_feed(self.resource, data)
    }

    /// The next chunk's plaintext, or `None`: feed more.
    pub fn pull(&mut self) -> sandbox::CallResult<Option<Vec<u8>>> {
        self.guest.decoder_pull(self.resource)
    }

    pub fn finish(mut self) -> sandbox::CallResult<wit::DecodeSummary> {
        self.guest.decoder_finish(self.resource)
    }
}

pub fn sha256_array(v: &[u8]) -> Result<[u8; 32]> {
    v.try_into()
        .map_err(|_| anyhow!("the sandbox returned a malformed digest"))
}
