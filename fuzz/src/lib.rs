//! Shared by the fuzz targets: the fixed key, archive builders and decoders,
//! the writers and readers made once per run ([`FIXED`]), and the byte-level
//! mutations the structure-aware targets apply to the valid bytes they build.

use arbitrary::Arbitrary;
use cairn_core::encoder::EncryptionParams;
use cairn_core::{
    Compression, DecodeSummary, Decoder, Encoder, Error, Kdf, KeyMaterial, MasterKey, SourceKind,
    WriterParams,
};
use std::sync::LazyLock;

/// The fixed master key every encrypted target and seed uses.
pub const KEY: [u8; 32] = [0x5a; 32];
pub const ARCHIVE_ID: [u8; 16] = [0x11; 16];
pub const SALT: [u8; 32] = [0x22; 32];

pub fn master() -> MasterKey {
    MasterKey(KEY)
}

pub fn material() -> KeyMaterial {
    KeyMaterial::Key(master())
}

/// Writer parameters for a small archive: chunk size `4 KiB + chunk_sel % 5 KiB`
/// (small chunks keep executions fast), level `level % 10`.
pub fn params(encrypted: bool, level: u8, chunk_sel: u8) -> WriterParams {
    WriterParams {
        archive_id: ARCHIVE_ID,
        source: SourceKind::Sqlite,
        db_name: "fuzz.db".into(),
        created_at_ms: 1_764_000_000_000,
        page_size: 4096,
        chunk_size: cairn_core::MIN_CHUNK_SIZE + u32::from(chunk_sel % 5) * 1024,
        compression: Compression::from_level(level % 10).expect("0..=9 is a level"),
        encryption: encrypted.then(|| EncryptionParams {
            master: master(),
            kdf: Kdf::RawKey,
            salt: SALT,
        }),
    }
}

/// A complete, valid archive of `plain`.
pub fn encode(p: WriterParams, plain: &[u8]) -> Vec<u8> {
    let mut enc = Encoder::new(p).expect("the fuzz parameters are valid");
    let mut out = enc.push(plain).expect("push");
    out.extend(enc.finish().expect("finish").0);
    out
}

/// Decodes `bytes` with the fixed key, pushing `piece` bytes at a time
/// (0: all at once), as a host streaming from storage does.
pub fn decode(bytes: &[u8], piece: usize) -> Result<(Vec<u8>, DecodeSummary), Error> {
    let mut d = Decoder::new(material());
    let mut out = Vec::new();
    let step = if piece == 0 {
        bytes.len().max(1)
    } else {
        piece
    };
    for part in bytes.chunks(step) {
        out.extend(d.push(part)?);
    }
    let summary = d.finish()?;
    Ok((out, summary))
}

/// Checks what every successful decode must satisfy, and that streaming in
/// pieces and decoding in one go agree.
pub fn decode_checked(bytes: &[u8], piece: usize) -> Result<(Vec<u8>, DecodeSummary), Error> {
    let whole = decode(bytes, 0);
    let streamed = decode(bytes, piece);
    match (&whole, &streamed) {
        (Ok((a, sa)), Ok((b, sb))) => {
            assert_eq!(a, b, "streamed and whole decodes differ");
            assert_eq!(sa.plain_sha256, sb.plain_sha256);
        }
        (Err(a), Err(b)) => assert_eq!(
            a.code(),
            b.code(),
            "streamed and whole decodes fail differently: {a} / {b}"
        ),
        (a, b) => panic!(
            "streamed and whole decodes disagree: {:?} / {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        ),
    }
    if let Ok((out, s)) = &whole {
        use sha2::Digest;
        assert_eq!(s.plain_len, out.len() as u64);
        assert_eq!(s.plain_sha256[..], sha2::Sha256::digest(out)[..]);
        // Every error has a message a user can read.
    } else if let Err(e) = &whole {
        assert!(!e.to_string().is_empty());
    }
    whole
}

/// A byte-level change to a built artefact; offsets wrap around its length.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    Flip {
        at: u32,
        bit: u8,
    },
    Set {
        at: u32,
        value: u8,
    },
    Truncate {
        at: u32,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    Remove {
        at: u32,
        len: u16,
    },
    /// Copies a range elsewhere: a frame spliced in twice, or over another.
    Splice {
        from: u32,
        len: u16,
        to: u32,
    },
}

pub fn mutate(b: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts.iter().take(8) {
        let n = b.len();
        let at = |x: u32| if n == 0 { 0 } else { x as usize % (n + 1) };
        match m {
            Mutation::Flip { at: x, bit } if n > 0 => b[*x as usize % n] ^= 1 << (bit % 8),
            Mutation::Set { at: x, value } if n > 0 => b[*x as usize % n] = *value,
            Mutation::Truncate { at: x } => b.truncate(at(*x)),
            Mutation::Insert { at: x, bytes } => {
                let i = at(*x);
                b.splice(i..i, bytes.iter().copied().take(4096));
            }
            Mutation::Remove { at: x, len } => {
                let i = at(*x);
                let j = (i + *len as usize).min(n);
                b.drain(i..j);
            }
            Mutation::Splice { from, len, to } if n > 0 => {
                let i = *from as usize % n;
                let j = (i + *len as usize).min(n);
                let piece = b[i..j].to_vec();
                let t = at(*to);
                b.splice(t..t, piece);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_round_trip() {
        let plain: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for enc in [false, true] {
            for level in [0, 6] {
                let a = encode(params(enc, level, 0), &plain);
                assert_eq!(decode_checked(&a, 17).unwrap().0, plain);
            }
        }
    }
}

/// Writes the seed corpora under `fuzz/seeds/<target>/` (run by hand:
/// `cargo test --lib -- --ignored write_seeds`; the files are committed).
#[cfg(test)]
mod seeds {
    use super::*;
    use cairn_core::catalog::{self, Catalog, Entry};
    use cairn_core::layout::{Checkpoint, Commit, Marker, State};
    use cairn_core::segment::{self, Segment, SegmentInfo};
    use cairn_core::{ArchiveWriter, Event, FrameParser};
    use std::path::PathBuf;

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn plain(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i * 31 % 251) as u8 ^ (i / 97) as u8)
            .collect()
    }

    /// Variant `k` of `n` in an `arbitrary`-derived enum, as its leading u32.
    fn tag(k: u64, n: u64) -> Vec<u8> {
        (((k << 32) / n + 1) as u32).to_le_bytes().to_vec()
    }

    fn entry(id: &str, at: i64, enc: bool) -> Entry {
        let w = ArchiveWriter::new(params(enc, 6, 0)).unwrap();
        let object = catalog::snapshot_object_key(id, enc);
        Entry::for_snapshot(
            id.into(),
            object,
            w.metadata(),
            (10, [1; 32]),
            (20, [2; 32]),
        )
        .tap_created(at)
    }

    trait Tap {
        fn tap_created(self, at: i64) -> Self;
    }
    impl Tap for Entry {
        fn tap_created(mut self, at: i64) -> Self {
            self.created_at_ms = at;
            self
        }
    }

    #[test]
    #[ignore]
    fn write_seeds() {
        for (enc, level, chunk_sel, n) in [
            (false, 0, 0, 5000),
            (false, 6, 0, 9000),
            (true, 6, 0, 9000),
            (true, 0, 0, 100),
        ] {
            let name = format!("{}-l{level}-{n}", if enc { "aes" } else { "gzip" });
            let a = encode(params(enc, level, chunk_sel), &plain(n));
            put("decode", &name, &a);
            let sel = level + 16 * chunk_sel;
            let w = ArchiveWriter::new(params(enc, level, chunk_sel)).unwrap();
            let pre = w.preamble().len();
            let mut f = vec![sel];
            f.extend_from_slice(&a[pre..]);
            put(
                if enc {
                    "frames_encrypted"
                } else {
                    "frames_gzip"
                },
                &name,
                &f,
            );
            // The header record, and the trailer record or sealed final frame.
            let mut p = FrameParser::new();
            p.push(&a);
            let mut last = None;
            while let Some(ev) = p.next_event().unwrap() {
                match ev {
                    Event::Header { bytes, .. } => put("header", &name, &bytes),
                    Event::Chunk(c) => last = Some(c),
                }
            }
            put("trailer", &name, &last.unwrap().body);
            let mut d = vec![3u8];
            d.extend(cairn_core::chunk::deflate(
                &plain(n),
                cairn_core::Compression::from_level(level.max(1)).unwrap(),
            ));
            put("inflate", &name, &d);
        }
        for v in [
            "gzip-deflate6",
            "gzip-empty",
            "gzip-stored",
            "aes-key-deflate6",
        ] {
            let path = format!(
                "{}/../core/tests/vectors/{v}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let j: serde_json_lite::Value =
                serde_json_lite::parse(&std::fs::read_to_string(path).unwrap());
            put("decode", &format!("vector-{v}"), &j.archive);
        }

        let mut cat = Catalog::default();
        cat.add(entry("20251124T160000Z-0a0b0c0d", 1_764_000_000_000, false))
            .unwrap();
        cat.add(entry("20251125T160000Z-01020304", 1_764_086_400_000, true))
            .unwrap();
        put("catalog", "two", &cat.render());
        put("catalog", "empty", &Catalog::default().render());
        put("latest", "gz", &catalog::latest_pointer(&cat.entries[0]));
        put("latest", "cairn", &catalog::latest_pointer(&cat.entries[1]));

        let mut m = vec![0u8];
        m.extend(Marker::new(1_764_000_000_000, true, Some(1)).render());
        put("layout", "marker", &m);
        let mut c = Commit::new(1_764_000_000_000, "fuzz".into(), [9; 8]);
        c.seq = 1;
        for e in &cat.entries {
            c.add_entry(e).unwrap();
        }
        let mut b = vec![1u8];
        b.extend(c.render());
        put("layout", "commit", &b);
        let mut s = State::default();
        s.apply(&c).unwrap();
        let mut b = vec![2u8];
        b.extend(Checkpoint::of(&s).render());
        put("layout", "checkpoint", &b);
        let mut b = vec![3u8];
        b.extend(cairn_core::layout::log_key(1).into_bytes());
        put("layout", "key", &b);

        let k: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        put("key", "hex", format!("{k}\n").as_bytes());
        put(
            "key",
            "base64",
            b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n",
        );

        let wal = std::fs::read(format!(
            "{}/../core/tests/wal/wal.bin",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut b = tag(0, 2);
        b.extend(&wal[..wal.len().min(32 + 3 * (24 + 4096))]);
        put("wal", "fixture", &b);

        let g = segment::generation_id(1_764_000_000_000, [10, 11, 12, 13]);
        let seg = Segment {
            info: SegmentInfo {
                generation: g.clone(),
                level: 0,
                min_txid: 1,
                max_txid: 3,
                page_size: 512,
                db_pages: 4,
                min_db_pages: 2,
                time_ms: 1_764_000_000_000,
            },
            pages: [(1, vec![1u8; 512]), (4, vec![4u8; 512])]
                .into_iter()
                .collect(),
        };
        let mut b = tag(0, 3);
        b.extend(seg.body());
        put("segment", "body", &b);
        let mut b = tag(1, 3);
        b.extend(segment::segment_key(&g, 0, 1, 3, true).into_bytes());
        put("segment", "key", &b);
    }

    /// Just enough JSON to take the archive out of a test vector.
    mod serde_json_lite {
        pub struct Value {
            pub archive: Vec<u8>,
        }
        pub fn parse(s: &str) -> Value {
            let at = s.find("\"archive\": \"").unwrap() + 12;
            let hex = &s[at..at + s[at..].find('"').unwrap()];
            let archive = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            Value { archive }
        }
    }
}

/// The frame targets: a valid header (plain or encrypted, settings chosen by
/// the first byte), then the fuzzer's bytes as frames, fed in pieces; every
/// frame is opened with the fixed key.
pub fn frames(data: &[u8], encrypted: bool) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (level, chunk_sel) = (sel % 10, (sel >> 4) % 5);
    let fixed = &FIXED[usize::from(encrypted)][usize::from(level)][usize::from(chunk_sel)];
    run_frames(fixed, rest, (sel as usize >> 3) % 97);
}

/// An archive's opening and its reader, for one choice of settings: fixed
/// for the whole run, so made once rather than per execution (the writer's
/// and reader's key derivations and AES key schedules are not what these
/// targets test, and cost more than the frames they feed).
pub struct Fixed {
    pub preamble: Vec<u8>,
    /// The header record the parser must emit for `preamble`.
    pub header: Vec<u8>,
    pub reader: cairn_core::ArchiveReader,
}

impl Fixed {
    fn new(encrypted: bool, level: u8, chunk_sel: u8) -> Fixed {
        let w = cairn_core::ArchiveWriter::new(params(encrypted, level, chunk_sel)).unwrap();
        let preamble = w.preamble();
        let mut p = cairn_core::FrameParser::new();
        p.push(&preamble);
        let Ok(Some(cairn_core::Event::Header { bytes, meta })) = p.next_event() else {
            panic!("a writer's preamble parses to its header")
        };
        let reader = cairn_core::ArchiveReader::new(bytes.clone(), meta, &material()).unwrap();
        Fixed {
            preamble,
            header: bytes,
            reader,
        }
    }
}

/// [`Fixed`] for every (encrypted, level % 10, chunk_sel % 5) of [`params`].
pub static FIXED: LazyLock<Vec<Vec<Vec<Fixed>>>> = LazyLock::new(|| {
    [false, true]
        .iter()
        .map(|&e| {
            (0..10)
                .map(|l| (0..5).map(|c| Fixed::new(e, l, c)).collect())
                .collect()
        })
        .collect()
});

fn run_frames(fixed: &Fixed, rest: &[u8], piece: usize) {
    let mut p = cairn_core::FrameParser::new();
    // The reader for the header seen: the fixed one, or one of its own.
    let mut fixed_reader = false;
    let mut own = None;
    let mut next = 0u64;
    let mut feed: Vec<&[u8]> = vec![&fixed.preamble];
    feed.extend(rest.chunks(piece.max(1) * 7));
    for part in feed {
        p.push(part);
        loop {
            match p.next_event() {
                Ok(Some(cairn_core::Event::Header { bytes, meta })) => {
                    assert_eq!(meta.archive_id, ARCHIVE_ID);
                    // The header parsed from the fixed preamble opens with
                    // the reader made for it; any other gets its own.
                    fixed_reader = bytes == fixed.header && &meta == fixed.reader.metadata();
                    own = match fixed_reader {
                        true => None,
                        false => {
                            Some(cairn_core::ArchiveReader::new(bytes, meta, &material()).unwrap())
                        }
                    };
                }
                Ok(Some(cairn_core::Event::Chunk(c))) => {
                    assert_eq!(c.index, next, "frames come out in order");
                    next += 1;
                    let r = match fixed_reader {
                        true => &fixed.reader,
                        false => own.as_ref().expect("header first"),
                    };
                    assert!(
                        c.body.len() <= cairn_core::frame::max_body_len(r.metadata().chunk_size)
                    );
                    if c.last {
                        let _ = r.open_trailer(&c);
                    } else if let Ok(plain) = r.open_chunk(&c) {
                        assert!(
                            !plain.is_empty() && plain.len() <= r.metadata().chunk_size as usize
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = p.finish();
}
