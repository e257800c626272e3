//! Round trips and every kind of damage the format promises to detect, in
//! both containers.

mod common;
use common::*;

use cairn_core::{Compression, ErrorCode, KeyMaterial, MasterKey};

const D6: Compression = Compression::Deflate { level: 6 };
const MODES: [(Compression, bool); 6] = [
    (D6, false),
    (Compression::None, false),
    (D6, true),
    (Compression::None, true),
    (ZSTD3, false),
    (ZSTD3, true),
];

#[test]
fn round_trips_in_every_mode_and_size() {
    for (level, enc) in MODES {
        for len in [
            0,
            1,
            CHUNK as usize - 1,
            CHUNK as usize,
            CHUNK as usize + 1,
            5 * CHUNK as usize,
            40_000,
        ] {
            let data = sample(len);
            let a = encode(params(level, enc), &data);
            for piece in [1, 7, 4096, 1 << 20] {
                if piece == 1 && len > 5000 {
                    continue;
                }
                assert_eq!(
                    decode_with(KeyMaterial::Key(key()), &a, piece).unwrap(),
                    data,
                    "level {level:?} enc {enc} len {len}"
                );
            }
        }
    }
}

/// feed/pull gives what push gives, one chunk per pull at most, in every
/// mode, whatever the slices fed; an error is final for both styles.
#[test]
fn pulling_decodes_one_chunk_at_a_time() {
    let mut pull_errors = 0;
    for (level, enc) in MODES {
        // Zeros: a few hundred bytes of archive hold many chunks.
        let mut data = vec![0u8; 40 * CHUNK as usize];
        data.extend(sample(3 * CHUNK as usize + 17));
        let a = encode(params(level, enc), &data);
        for piece in [7, 4096, a.len()] {
            let mut d = cairn_core::Decoder::new(KeyMaterial::Key(key()));
            let mut out = Vec::new();
            for part in a.chunks(piece) {
                d.feed(part).unwrap();
                while let Some(plain) = d.pull().unwrap() {
                    assert!(!plain.is_empty() && plain.len() <= CHUNK as usize);
                    out.extend(plain);
                }
            }
            let s = d.finish().unwrap();
            assert!(out == data, "level {level:?} enc {enc} piece {piece}");
            assert_eq!(s.plain_len, data.len() as u64);
        }
        // Damage: pull reports it, and every later call repeats it.
        let mut bad = a.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        let mut d = cairn_core::Decoder::new(KeyMaterial::Key(key()));
        d.feed(&bad).unwrap();
        let e = loop {
            match d.pull() {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        match e {
            Some(e) => {
                assert_eq!(d.pull().unwrap_err().code(), e.code());
                assert_eq!(d.feed(b"x").unwrap_err().code(), e.code());
                pull_errors += 1;
            }
            // Found only by the trailer's checks.
            None => assert!(d.finish().is_err(), "level {level:?} enc {enc}"),
        }
    }
    assert!(pull_errors > 0, "no mode reported the damage from pull");
}

#[test]
fn streaming_and_chunk_level_encoders_agree_and_are_deterministic() {
    for (level, enc) in MODES {
        let data = sample(30_000);
        let a = encode(params(level, enc), &data);
        assert_eq!(a, encode(params(level, enc), &data));
        assert_eq!(a, frames(&params(level, enc), &data).concat());
    }
}

#[test]
fn compression_shrinks_text() {
    let data = sample(64 * 1024);
    assert!(encode(params(6, false), &data).len() < data.len() / 2);
    assert!(encode(params(6, true), &data).len() < data.len() / 2);
}

fn code(archive: &[u8]) -> ErrorCode {
    decode(archive).expect_err("damage must be detected").code()
}

#[test]
fn every_flipped_byte_is_detected() {
    for (level, enc) in MODES {
        let a = encode(params(level, enc), &sample(3 * CHUNK as usize + 100));
        for pos in 0..a.len() {
            let mut bad = a.clone();
            bad[pos] ^= 0x01;
            let err = decode(&bad);
            assert!(
                err.is_err(),
                "flip at {pos} of {} not detected (level {level:?}, enc {enc})",
                a.len()
            );
            let c = err.unwrap_err().code();
            assert!(
                c != ErrorCode::WrongKey,
                "a flip at {pos} must not read as a wrong key"
            );
        }
    }
}

#[test]
fn flipped_chunk_byte_is_reported_as_a_corrupt_chunk() {
    for (level, enc) in MODES {
        let p = params(level, enc);
        let mut f = frames(&p, &sample(3 * CHUNK as usize));
        let n = f[2].len();
        f[2][n - 20] ^= 0x40;
        let err = decode(&f.concat()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::CorruptChunk, "{err}");
        assert!(err.to_string().contains("chunk 1"), "{err}");
    }
}

#[test]
fn swapped_chunks_are_reported_as_out_of_order() {
    for (level, enc) in MODES {
        let mut f = frames(&params(level, enc), &sample(3 * CHUNK as usize));
        f.swap(1, 2);
        let err = decode(&f.concat()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::OutOfOrder, "{err}");
        assert!(
            err.to_string().contains("found chunk 1 at position 0"),
            "{err}"
        );
    }
}

#[test]
fn a_chunk_from_another_archive_is_reported_as_such() {
    for (level, enc) in MODES {
        let data = sample(3 * CHUNK as usize);
        let mut f = frames(&params(level, enc), &data);
        let mut other = params(level, enc);
        other.archive_id = [0xB2; 16];
        let g = frames(&other, &data);
        f[2] = g[2].clone();
        let err = decode(&f.concat()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ForeignChunk, "{err}");
        assert!(err.to_string().contains(&"b2".repeat(16)), "{err}");
    }
}

#[test]
fn forged_frame_fields_do_not_get_past_the_aead() {
    // Re-label a chunk from another archive with this archive's id and a
    // valid frame CRC: only the AEAD can notice, and it must.
    let data = sample(3 * CHUNK as usize);
    let p = params(6, true);
    let mut f = frames(&p, &data);
    let mut other = params(6, true);
    other.archive_id = [0xB2; 16];
    let g = frames(&other, &data);
    let sealed = &g[2][cairn_core::frame::FRAME_HEADER_LEN..];
    let head = cairn_core::frame::encrypted_frame_header(&p.archive_id, 1, 0, sealed.len() as u32);
    f[2] = [head.as_slice(), sealed].concat();
    assert_eq!(code(&f.concat()), ErrorCode::CorruptChunk);
}

#[test]
fn truncation_anywhere_is_reported_as_truncation() {
    for (level, enc) in MODES {
        let f = frames(&params(level, enc), &sample(3 * CHUNK as usize));
        let a = f.concat();
        let mut boundary = 0;
        for fr in &f[..f.len() - 1] {
            boundary += fr.len();
            let err = decode(&a[..boundary]).unwrap_err();
            assert_eq!(
                err.code(),
                ErrorCode::Truncated,
                "cut at frame boundary {boundary}: {err}"
            );
        }
        for cut in [1, 5, 20, a.len() / 2, a.len() - 1] {
            let c = code(&a[..cut]);
            assert!(
                matches!(c, ErrorCode::Truncated | ErrorCode::CorruptTrailer),
                "cut at {cut}: {c:?}"
            );
        }
        // A whole chunk dropped from the middle: the next one is out of order.
        let mut g = f.clone();
        g.remove(2);
        assert_eq!(code(&g.concat()), ErrorCode::OutOfOrder);
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for (level, enc) in MODES {
        let mut a = encode(params(level, enc), &sample(10_000));
        a.extend_from_slice(b"junk");
        assert_eq!(code(&a), ErrorCode::TrailingData);
    }
}

#[test]
fn wrong_or_missing_key_is_not_damage() {
    let a = encode(params(6, true), &sample(10_000));
    let err = decode_with(KeyMaterial::Key(MasterKey([8u8; 32])), &a, 4096).unwrap_err();
    assert_eq!(err.code(), ErrorCode::WrongKey);
    assert!(err.to_string().starts_with("wrong key"), "{err}");
    assert_eq!(
        decode_with(KeyMaterial::None, &a, 4096).unwrap_err().code(),
        ErrorCode::KeyRequired
    );
    assert_eq!(
        decode_with(KeyMaterial::Passphrase("pw".into()), &a, 4096)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidKey
    );
    // An unencrypted archive opens with or without a key.
    let plain = encode(params(6, false), &sample(10_000));
    assert!(decode_with(KeyMaterial::Key(MasterKey([8u8; 32])), &plain, 4096).is_ok());
}

#[test]
fn passphrase_archives_round_trip() {
    let kdf = cairn_core::Kdf::Argon2id {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
        salt: [3; 16],
    };
    let master = cairn_core::key::derive_from_passphrase("correct horse", &kdf).unwrap();
    let mut p = params(6, true);
    p.encryption = Some(cairn_core::encoder::EncryptionParams {
        master,
        kdf,
        salt: [9; 32],
    });
    let data = sample(20_000);
    let a = encode(p, &data);
    assert_eq!(
        decode_with(KeyMaterial::Passphrase("correct horse".into()), &a, 999).unwrap(),
        data
    );
    let err = decode_with(KeyMaterial::Passphrase("wrong horse".into()), &a, 999).unwrap_err();
    assert_eq!(err.code(), ErrorCode::WrongKey);
}

#[test]
fn not_archives_are_named() {
    let err = decode(b"SQLite format 3\0rest of a database").unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArchive);
    assert!(err.to_string().contains("SQLite database"), "{err}");
    assert_eq!(code(b""), ErrorCode::NotAnArchive);
    // A gzip file that cairn did not write.
    let gz = [
        0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let err = decode(&gz).unwrap_err();
    assert!(err.to_string().contains("gunzip"), "{err}");
}

#[test]
fn a_deflate_bomb_cannot_exceed_one_chunk() {
    // A hand-made gzip member claiming a small chunk but inflating to more.
    let p = params(9, false);
    let w = cairn_core::ArchiveWriter::new(p.clone()).unwrap();
    let bomb = cairn_core::chunk::deflate(
        &vec![0u8; 10 * CHUNK as usize],
        cairn_core::Compression::Deflate { level: 9 },
    );
    let ck = cairn_core::frame::ck_payload(&p.archive_id, 0, bomb.len() as u32, CHUNK);
    let mut member = cairn_core::frame::gzip_member_head(*b"CK", &ck);
    member.extend_from_slice(&bomb);
    member.extend_from_slice(&0u32.to_le_bytes());
    member.extend_from_slice(&CHUNK.to_le_bytes());
    let a = [w.preamble(), member].concat();
    assert_eq!(code(&a), ErrorCode::CorruptChunk);
}

/// Hand-builds a zstd-container chunk 0 whose frame is `z`, claiming `plain`.
fn zstd_chunk0(p: &cairn_core::WriterParams, z: &[u8], plain: &[u8]) -> Vec<u8> {
    use cairn_core::frame;
    let ck = frame::zck_payload(
        &p.archive_id,
        0,
        z.len() as u32,
        plain.len().min(CHUNK as usize) as u32,
        crc32fast::hash(plain),
        crc32fast::hash(z),
    );
    [frame::zstd_skippable(frame::SUB_CHUNK, &ck), z.to_vec()].concat()
}

#[test]
fn a_zstd_bomb_cannot_exceed_one_chunk() {
    let p = params(ZSTD3, false);
    let big = vec![0u8; 10 * CHUNK as usize];
    let bomb = cairn_core::chunk::zstd_compress(&big, 3);
    let mut f = frames(&p, &sample(100));
    f[1] = zstd_chunk0(&p, &bomb, &big);
    let err = decode(&f.concat()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptChunk, "{err}");
    assert!(
        err.to_string().contains("more than the chunk size"),
        "{err}"
    );
    // The same without a content size in the frame header: zstd stops at
    // the output buffer, which is one chunk.
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.include_contentsize(false).unwrap();
    let bomb = c.compress(&big).unwrap();
    f[1] = zstd_chunk0(&p, &bomb, &big);
    let err = decode(&f.concat()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptChunk, "{err}");
}

#[test]
fn a_zstd_chunk_must_be_exactly_one_frame() {
    let p = params(ZSTD3, false);
    let data = sample(100);
    let z = cairn_core::chunk::zstd_compress(&data, 3);
    let mut f = frames(&p, &data);
    // Two frames where one is declared: `zstd -d` would output both.
    f[1] = zstd_chunk0(&p, &[z.clone(), z.clone()].concat(), &data);
    let err = decode(&f.concat()).unwrap_err();
    assert!(err.to_string().contains("not exactly one frame"), "{err}");
    // A skippable frame in place of the data frame.
    let skip = cairn_core::frame::zstd_skippable(*b"XX", &data);
    f[1] = zstd_chunk0(&p, &skip, &data);
    let err = decode(&f.concat()).unwrap_err();
    assert!(err.to_string().contains("not a zstd frame"), "{err}");
}

#[test]
fn zstd_archives_carry_format_version_2() {
    // Version 1 readers refuse version 2 with "upgrade cairn"; deflate
    // archives keep version 1, so old readers still read them.
    let enc = encode(params(ZSTD3, true), &sample(100));
    assert_eq!(enc[10], 2);
    assert_eq!(encode(params(6, true), &sample(100))[10], 1);
    let plain = encode(params(ZSTD3, false), &sample(100));
    assert_eq!(&plain[..4], &[0x5c, 0x2a, 0x4d, 0x18]);
    assert_eq!(plain[10 + 10], 2);
    // A newer version: refused with the upgrade hint.
    let mut bad = enc.clone();
    bad[10] = 3;
    let err = decode(&bad).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    assert!(err.to_string().contains("upgrade cairn"), "{err}");
}

#[test]
fn a_codec_that_disagrees_with_the_version_or_container_is_refused() {
    use cairn_core::Metadata;
    let mut meta = Metadata {
        archive_id: [1; 16],
        source: cairn_core::SourceKind::Sqlite,
        db_name: "app.db".into(),
        created_at_ms: 0,
        page_size: 4096,
        chunk_size: CHUNK,
        compression: ZSTD3,
        encryption: cairn_core::Encryption::None,
    };
    // A zstd header relabelled version 1 (CRC recomputed).
    let mut h = meta.to_header_bytes().unwrap();
    h[10] = 1;
    let n = h.len();
    let crc = crc32fast::hash(&h[..n - 4]);
    h[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let err = Metadata::from_header_bytes(&h).unwrap_err();
    assert!(
        err.to_string().contains("does not go with codec zstd-3"),
        "{err}"
    );
    // A deflate header inside the zstd container.
    meta.compression = Compression::Deflate { level: 6 };
    let h = meta.to_header_bytes().unwrap();
    let a = cairn_core::frame::zstd_skippable(cairn_core::frame::SUB_HEADER, &h);
    let err = decode(&a).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptHeader, "{err}");
    // An unknown codec discriminant (3) in a version 2 header.
    meta.compression = ZSTD3;
    let mut h = meta.to_header_bytes().unwrap();
    let at = 13 + 16 + 1 + 7 + 1 + 2 + 2; // id, source, name, time, page, chunk
    assert_eq!(h[at], 2, "the compression discriminant");
    h[at] = 3;
    let crc = crc32fast::hash(&h[..n - 4]);
    h[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let err = Metadata::from_header_bytes(&h).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptHeader, "{err}");
}

#[test]
fn zstd_levels_are_checked() {
    assert!(Compression::zstd(0).is_err());
    assert!(Compression::zstd(20).is_err());
    assert_eq!(Compression::zstd(19).unwrap().describe(), "zstd-19");
    let mut p = params(ZSTD3, false);
    p.compression = Compression::Zstd { level: 22 };
    assert!(cairn_core::Encoder::new(p).is_err());
}

#[test]
fn plain_zstd_file_is_named() {
    let z = zstd::bulk::compress(b"hello", 3).unwrap();
    let err = decode(&z).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAnArchive);
    assert!(err.to_string().contains("zstd -d"), "{err}");
}
