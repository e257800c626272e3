//! Structure-aware: builds a valid archive from fuzzer-chosen plaintext and
//! parameters, with forged frames whose checksums (and, encrypted, whose
//! seal under the fixed key) are right, so the fuzzer reaches inflate and the
//! trailer checks behind the CRCs and the AEAD; then byte mutations.
//! A decode that succeeds must give exactly the plaintext the (unforged)
//! trailer describes.
#![no_main]
use aes_gcm::Aes256Gcm;
use arbitrary::Arbitrary;
use cairn_core::chunk::{self, Trailer};
use cairn_core::frame::{self, KIND_DATA, SUB_CHUNK};
use cairn_core::{ArchiveWriter, Tally};
use cairn_fuzz::{ARCHIVE_ID, KEY, Mutation, decode_checked, mutate, params};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

#[derive(Arbitrary, Debug)]
struct Spec {
    encrypted: bool,
    level: u8,
    chunk_sel: u8,
    frames: Vec<FrameSpec>,
    trailer: TrailerSpec,
    mutations: Vec<Mutation>,
    piece: u8,
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    /// A well-formed chunk of this plaintext (cut to the chunk size).
    Good(Vec<u8>),
    /// A well-formed chunk of `len` copies of a byte (long, compressible runs).
    Run { byte: u8, len: u16 },
    /// Body bytes of the fuzzer's choosing behind valid framing: the deflate
    /// stream (gzip) or the sealed payload (encrypted).
    Forged {
        body: Vec<u8>,
        index: Option<u64>,
        kind: Option<u8>,
        seal_index: Option<u64>,
        seal_last: bool,
        plain_len: Option<u32>,
        plain_crc: Option<u32>,
        foreign: bool,
    },
}

#[derive(Arbitrary, Debug, Default)]
struct TrailerSpec {
    data_chunks: Option<u64>,
    plain_len: Option<u64>,
    sha_flip: Option<u8>,
    foreign: bool,
    omit: bool,
}

impl TrailerSpec {
    fn forged(&self) -> bool {
        self.data_chunks.is_some()
            || self.plain_len.is_some()
            || self.sha_flip.is_some()
            || self.foreign
    }
}

fuzz_target!(|s: Spec| {
    // The writer and the payload cipher depend only on the settings: made
    // once per setting (WRITERS), not per execution.
    let (w, cipher) =
        &WRITERS[usize::from(s.encrypted)][usize::from(s.level % 10)][usize::from(s.chunk_sel % 5)];
    let cs = w.chunk_size();
    let header = w.preamble();
    let mut out = header.clone();
    let aad = if s.encrypted {
        header.clone()
    } else {
        Vec::new()
    };
    let mut tally = Tally::default();
    let mut expected = Vec::new();
    let mut forged = false;
    for (i, f) in s.frames.iter().take(8).enumerate() {
        let i = i as u64;
        match f {
            FrameSpec::Good(_) | FrameSpec::Run { .. } => {
                let mut plain = match f {
                    FrameSpec::Good(p) => p.clone(),
                    FrameSpec::Run { byte, len } => vec![*byte; *len as usize],
                    _ => unreachable!(),
                };
                plain.truncate(cs);
                if plain.is_empty() {
                    plain.push(0);
                }
                out.extend(w.encode_chunk(i, &plain).unwrap());
                tally.add(&plain);
                expected.extend_from_slice(&plain);
            }
            FrameSpec::Forged {
                body,
                index,
                kind,
                seal_index,
                seal_last,
                plain_len,
                plain_crc,
                foreign,
            } => {
                forged = true;
                let id = if *foreign { [0x33; 16] } else { ARCHIVE_ID };
                let idx = index.unwrap_or(i);
                if s.encrypted {
                    let sealed = chunk::seal(
                        cipher,
                        seal_index.unwrap_or(i),
                        *seal_last,
                        &aad,
                        body.clone(),
                    );
                    let k = kind.map_or(KIND_DATA, |k| k % 3);
                    out.extend(frame::encrypted_frame_header(
                        &id,
                        idx,
                        k,
                        sealed.len() as u32,
                    ));
                    out.extend(sealed);
                } else {
                    // Defaults that pass the member's own checks, so the
                    // fuzzer gets past them to the chunk's contents.
                    let inflated = chunk::inflate(i, body, cs).ok();
                    let len = plain_len.unwrap_or(inflated.as_ref().map_or(1, |p| p.len() as u32));
                    let crc =
                        plain_crc.unwrap_or(inflated.as_ref().map_or(0, |p| crc32fast::hash(p)));
                    let ck = frame::ck_payload(&id, idx, body.len() as u32, len);
                    out.extend(frame::gzip_member_head(SUB_CHUNK, &ck));
                    out.extend_from_slice(body);
                    out.extend(crc.to_le_bytes());
                    out.extend(len.to_le_bytes());
                }
            }
        }
    }
    let t = &s.trailer;
    if !t.omit {
        let mut tr: Trailer = tally.trailer(ARCHIVE_ID);
        if let Some(n) = t.data_chunks {
            tr.data_chunks = n;
        }
        if let Some(n) = t.plain_len {
            tr.plain_len = n;
        }
        if let Some(b) = t.sha_flip {
            tr.sha256[b as usize % 32] ^= 1 | b;
        }
        if t.foreign {
            tr.archive_id = [0x44; 16];
        }
        out.extend(w.finale(&tr));
    }
    let clean = !forged && !t.forged() && !t.omit && s.mutations.is_empty();
    mutate(&mut out, &s.mutations);
    let res = decode_checked(&out, 1 + s.piece as usize % 97);
    if clean {
        let (plain, _) = res.as_ref().expect("a valid archive decodes");
        assert_eq!(plain, &expected);
    } else if let Ok((plain, _)) = &res
        && !t.forged()
        && !t.omit
    {
        // Whatever was forged or changed, a decode that passes the
        // trailer's SHA-256 gives the plaintext that trailer describes.
        assert_eq!(plain, &expected, "a damaged archive decoded to other data");
    }
});

/// A writer and its payload cipher.
type Writer = (ArchiveWriter, Aes256Gcm);

/// A [`Writer`] for each (encrypted, level, chunk_sel).
static WRITERS: LazyLock<Vec<Vec<Vec<Writer>>>> = LazyLock::new(|| {
    [false, true]
        .iter()
        .map(|&e| {
            (0..10)
                .map(|l| {
                    (0..5)
                        .map(|c| {
                            let w = ArchiveWriter::new(params(e, l, c)).unwrap();
                            let cipher = chunk::cipher(&w_payload_key(&w));
                            (w, cipher)
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
});

fn w_payload_key(w: &ArchiveWriter) -> [u8; 32] {
    let m = cairn_core::MasterKey(KEY);
    match w.metadata().encryption {
        cairn_core::Encryption::Aes256GcmStream { salt, .. } => m.payload_key(&salt, &ARCHIVE_ID),
        cairn_core::Encryption::None => [0; 32],
    }
}
