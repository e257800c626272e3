//! cairn-core: the pure, I/O-free heart of cairn.
//!
//! Everything here is a function of its arguments: bytes in, bytes out. Time,
//! random salts and archive ids are passed in by the host, so the same inputs
//! always give the same bytes, natively and inside a WebAssembly component.
//! The format implemented here is specified in `docs/FORMAT.md`.

pub mod catalog;
pub mod chunk;
pub mod compact;
pub mod decoder;
pub mod encoder;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod glob;
pub mod header;
pub mod key;
pub mod layout;
pub mod retention;
pub mod segment;
pub mod sniff;
pub mod time;
pub mod wal;

#[cfg(target_arch = "wasm32")]
mod component;

pub use decoder::{ArchiveReader, DecodeSummary, Decoder, Tally};
pub use encoder::{ArchiveWriter, EncodeSummary, Encoder, WriterParams};
pub use error::{Error, ErrorCode};
pub use frame::FrameParser;
pub use frame::{Event, RawChunk};
pub use header::{Compression, Encryption, Kdf, Metadata, SourceKind};
pub use key::{KeyMaterial, MasterKey};
pub use sniff::{Kind, sniff};

/// Default plaintext chunk size: 1 MiB. Each chunk is compressed and sealed on
/// its own, so hosts can spread chunks over all cores.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest and largest chunk sizes a reader accepts; bounds decoder memory.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Default deflate level (0 = stored, 9 = smallest).
pub const DEFAULT_LEVEL: u8 = 6;
