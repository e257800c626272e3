//! Checked-in test vectors (docs/FORMAT.md §10): each file gives every input
//! of an archive and its exact bytes. The test decodes the bytes back to the
//! input and re-encodes the input to the same bytes, bit for bit.
//! `CAIRN_WRITE_VECTORS=1 cargo test -p cairn-core --test vectors` rewrites them
//! (only ever on purpose: a change of bytes is a format change).

mod common;

use cairn_core::encoder::EncryptionParams;
use cairn_core::{Compression, Kdf, KeyMaterial, MasterKey, SourceKind, WriterParams};
use serde_json::{Value, json};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    unhex(v).try_into().expect("right length")
}

struct Case {
    name: &'static str,
    zstd: bool,
    level: u8,
    key: Option<&'static str>,
    passphrase: Option<&'static str>,
    input_len: usize,
}

const CASES: &[Case] = &[
    Case {
        zstd: false,
        name: "gzip-deflate6",
        level: 6,
        key: None,
        passphrase: None,
        input_len: 10_000,
    },
    Case {
        zstd: false,
        name: "gzip-stored",
        level: 0,
        key: None,
        passphrase: None,
        input_len: 5_000,
    },
    Case {
        zstd: false,
        name: "gzip-empty",
        level: 6,
        key: None,
        passphrase: None,
        input_len: 0,
    },
    Case {
        zstd: false,
        name: "aes-key-deflate6",
        level: 6,
        key: Some("42"),
        passphrase: None,
        input_len: 10_000,
    },
    Case {
        zstd: false,
        name: "aes-key-stored",
        level: 0,
        key: Some("42"),
        passphrase: None,
        input_len: 4_096,
    },
    Case {
        zstd: false,
        name: "aes-passphrase-deflate1",
        level: 1,
        key: None,
        passphrase: Some("correct horse battery staple"),
        input_len: 9_000,
    },
    Case {
        name: "zstd-3",
        zstd: true,
        level: 3,
        key: None,
        passphrase: None,
        input_len: 10_000,
    },
    Case {
        name: "aes-key-zstd3",
        zstd: true,
        level: 3,
        key: Some("42"),
        passphrase: None,
        input_len: 10_000,
    },
];

fn compression(zstd: bool, level: u8) -> Compression {
    if zstd {
        Compression::zstd(level).unwrap()
    } else {
        Compression::from_level(level).unwrap()
    }
}

fn build(c: &Case) -> Value {
    let input = common::sample(c.input_len);
    let salt = [0x5Au8; 32];
    let (key_json, kdf_json, enc) = if let Some(k) = c.key {
        let key = hex::encode([u8::from_str_radix(k, 16).unwrap(); 32]);
        let master = MasterKey::parse(&key).unwrap();
        (
            json!(key),
            json!({"kind": "raw-key"}),
            Some(EncryptionParams {
                master,
                kdf: Kdf::RawKey,
                salt,
            }),
        )
    } else if let Some(p) = c.passphrase {
        let kdf = Kdf::Argon2id {
            m_cost_kib: 256,
            t_cost: 2,
            p_cost: 1,
            salt: [0x33; 16],
        };
        let master = cairn_core::key::derive_from_passphrase(p, &kdf).unwrap();
        let kj = json!({"kind": "argon2id", "m_cost_kib": 256, "t_cost": 2, "p_cost": 1, "salt": hex::encode([0x33u8; 16])});
        (
            Value::Null,
            kj,
            Some(EncryptionParams { master, kdf, salt }),
        )
    } else {
        (Value::Null, Value::Null, None)
    };
    let params = WriterParams {
        archive_id: *b"cairn-test-vec01",
        source: SourceKind::Sqlite,
        db_name: "app.db".into(),
        created_at_ms: 1_795_359_662_345,
        page_size: 4096,
        chunk_size: 4096,
        compression: compression(c.zstd, c.level),
        encryption: enc.clone(),
    };
    let archive = common::encode(params, &input);
    let mut v = json!({
        "name": c.name,
        "archive_id": hex::encode(b"cairn-test-vec01"),
        "source": "sqlite",
        "db_name": "app.db",
        "created_at_ms": 1_795_359_662_345i64,
        "page_size": 4096,
        "chunk_size": 4096,
        "compression_level": c.level,
        "key": key_json,
        "passphrase": c.passphrase,
        "kdf": kdf_json,
        "salt": if enc.is_some() { json!(hex::encode(salt)) } else { Value::Null },
        "input": hex::encode(&input),
        "input_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&input)),
        "archive": hex::encode(&archive),
    });
    // Vectors from before zstd have no `codec`: they stay byte for byte.
    if c.zstd {
        v["codec"] = json!("zstd");
    }
    v
}

fn params_from(v: &Value) -> (WriterParams, KeyMaterial) {
    let salt: Option<[u8; 32]> = v["salt"].as_str().map(|_| arr(&v["salt"]));
    let (enc, km) = match (&v["key"], v["passphrase"].as_str()) {
        (Value::String(k), _) => {
            let m = MasterKey::parse(k).unwrap();
            (
                Some(EncryptionParams {
                    master: m.clone(),
                    kdf: Kdf::RawKey,
                    salt: salt.unwrap(),
                }),
                KeyMaterial::Key(m),
            )
        }
        (_, Some(p)) => {
            let k = &v["kdf"];
            let kdf = Kdf::Argon2id {
                m_cost_kib: k["m_cost_kib"].as_u64().unwrap() as u32,
                t_cost: k["t_cost"].as_u64().unwrap() as u32,
                p_cost: k["p_cost"].as_u64().unwrap() as u32,
                salt: arr(&k["salt"]),
            };
            let master = cairn_core::key::derive_from_passphrase(p, &kdf).unwrap();
            (
                Some(EncryptionParams {
                    master,
                    kdf,
                    salt: salt.unwrap(),
                }),
                KeyMaterial::Passphrase(p.into()),
            )
        }
        _ => (None, KeyMaterial::None),
    };
    let p = WriterParams {
        archive_id: arr(&v["archive_id"]),
        source: SourceKind::Sqlite,
        db_name: v["db_name"].as_str().unwrap().into(),
        created_at_ms: v["created_at_ms"].as_i64().unwrap(),
        page_size: v["page_size"].as_u64().unwrap() as u32,
        chunk_size: v["chunk_size"].as_u64().unwrap() as u32,
        compression: compression(
            v["codec"] == "zstd",
            v["compression_level"].as_u64().unwrap() as u8,
        ),
        encryption: enc,
    };
    (p, km)
}

#[test]
fn vectors_decode_and_reencode_bit_for_bit() {
    if std::env::var_os("CAIRN_WRITE_VECTORS").is_some() {
        for c in CASES {
            let text = serde_json::to_string_pretty(&build(c)).unwrap() + "\n";
            std::fs::write(dir().join(format!("{}.json", c.name)), text).unwrap();
        }
    }
    let mut seen = 0;
    for c in CASES {
        let path = dir().join(format!("{}.json", c.name));
        let v: Value = serde_json::from_slice(
            &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        let input = unhex(&v["input"]);
        let archive = unhex(&v["archive"]);
        let (params, key) = params_from(&v);
        assert_eq!(
            common::decode_with(key, &archive, 777).unwrap(),
            input,
            "{}: decode",
            c.name
        );
        assert_eq!(
            common::encode(params, &input),
            archive,
            "{}: re-encode",
            c.name
        );
        seen += 1;
    }
    assert_eq!(seen, CASES.len());
}

#[test]
fn unencrypted_vectors_are_plain_gzip() {
    // Any RFC 1952 reader gets the input back: here, miniz's inflate, member by member.
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir().join("gzip-deflate6.json")).unwrap()).unwrap();
    let (archive, input) = (unhex(&v["archive"]), unhex(&v["input"]));
    let mut out = Vec::new();
    let mut rest = &archive[..];
    while !rest.is_empty() {
        assert_eq!(&rest[..3], &[0x1f, 0x8b, 0x08]);
        let xlen = u16::from_le_bytes([rest[10], rest[11]]) as usize;
        let body = &rest[12 + xlen..];
        let mut inf = miniz_oxide::inflate::core::DecompressorOxide::new();
        let mut buf = vec![0u8; 1 << 16];
        let (_, used, produced) = miniz_oxide::inflate::core::decompress(
            &mut inf,
            body,
            &mut buf,
            0,
            miniz_oxide::inflate::core::inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        out.extend_from_slice(&buf[..produced]);
        let crc = u32::from_le_bytes(body[used..used + 4].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&buf[..produced]));
        rest = &body[used + 8..];
    }
    assert_eq!(out, input);
}

#[test]
fn unencrypted_zstd_vector_is_plain_zstd() {
    // A zstd stream decoder skips cairn's skippable frames and yields the input.
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir().join("zstd-3.json")).unwrap()).unwrap();
    let (archive, input) = (unhex(&v["archive"]), unhex(&v["input"]));
    assert_eq!(&archive[..4], &[0x5c, 0x2a, 0x4d, 0x18]);
    assert_eq!(zstd::stream::decode_all(&archive[..]).unwrap(), input);
}
