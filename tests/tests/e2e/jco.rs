//! The `cairn:core` component outside Rust: jco transpiles it to JavaScript
//! and Node runs it (`tests/js/cairn-jco.mjs`). What it decodes must be the
//! database `cairn backup` read; what it encodes must be byte-identical to
//! the native core's output and restorable by `cairn restore`; its errors
//! must arrive typed.
//!
//! Needs Node 20+ and the npm packages of `tests/js/package-lock.json` in
//! `$CAIRN_NODE_DIR` (default `~/.cache/cairn-node`), which `.ci/setup.sh`
//! installs. Without them these tests fail under `CI=true` and skip, saying
//! why, elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cairn_core::encoder::EncryptionParams;
use cairn_core::{
    Compression, Decoder, Encoder, Kdf, KeyMaterial, MasterKey, SourceKind, WriterParams,
};
use cairn_e2e::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The component, transpiled once per test process.
struct Jco {
    node: PathBuf,
    module: PathBuf,
}

static JCO: OnceLock<Result<Jco, String>> = OnceLock::new();

/// The transpiled component, or `None` (after saying why) when Node or jco
/// is missing outside CI. Under `CI=true` their absence fails the test.
fn jco() -> Option<&'static Jco> {
    match JCO.get_or_init(transpile) {
        Ok(j) => Some(j),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{why} (CI=true: the jco tests must run, not skip)")
        }
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("skipping the jco tests: {why}"));
            None
        }
    }
}

fn node_dir() -> PathBuf {
    match std::env::var_os("CAIRN_NODE_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cairn-node")
        }
    }
}

fn transpile() -> Result<Jco, String> {
    let node = PathBuf::from(std::env::var_os("CAIRN_NODE").unwrap_or_else(|| "node".into()));
    let version = Command::new(&node).arg("--version").output().map_err(|e| {
        format!(
            "cannot run `{}` ({e}): install Node 20 or newer",
            node.display()
        )
    })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!(
            "Node {version:?} is too old: the jco test needs Node 20 or newer"
        ));
    }
    let modules = node_dir().join("node_modules");
    let jco_bin = modules.join(".bin/jco");
    if !jco_bin.exists() {
        return Err(format!(
            "jco is not installed in {}: run `bash .ci/setup-node.sh` (`.ci/setup.sh` does) \
             or set CAIRN_NODE_DIR",
            modules.display()
        ));
    }

    // One directory per test process, beside a node_modules link so the
    // transpiled code finds @bytecodealliance/preview2-shim; the ones left
    // by earlier processes are removed.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_stale_dirs(base);
    let dir = base.join(format!("jco-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();
    // jco writes ES modules with .js names: Node needs this to load them.
    std::fs::write(dir.join("package.json"), "{\"type\":\"module\"}\n").unwrap();
    std::fs::write(dir.join("cairn_core.wasm"), cairn::sandbox::COMPONENT).unwrap();
    let out = Command::new(&node)
        .arg(&jco_bin)
        .args(["transpile", "cairn_core.wasm", "-o", "out", "--quiet"])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run jco");
    // Installed but failing is a failure everywhere, not a reason to skip.
    assert!(
        out.status.success(),
        "`jco transpile` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let module = dir.join("out/cairn_core.js");
    assert!(module.exists(), "jco wrote no {}", module.display());
    Ok(Jco { node, module })
}

fn remove_stale_dirs(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("jco-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Jco {
    /// Runs `tests/js/cairn-jco.mjs` on `tasks`; one result per task, none
    /// of which may be an error the driver did not expect.
    fn run(&self, s: &Scratch, tasks: Value) -> Vec<Value> {
        let results = self.run_with(s, &[], &tasks);
        for (t, r) in tasks.as_array().unwrap().iter().zip(&results) {
            assert!(
                r["unexpected"].is_null(),
                "the JS driver failed on {t}: {r:#}"
            );
        }
        results
    }

    /// Runs the driver with extra Node options; one result per task.
    fn run_with(&self, s: &Scratch, node_args: &[&str], tasks: &Value) -> Vec<Value> {
        let tasks_file = s.path("tasks.json");
        std::fs::write(&tasks_file, serde_json::to_vec_pretty(tasks).unwrap()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/cairn-jco.mjs");
        let out = Command::new(&self.node)
            .args(node_args)
            .arg(&script)
            .arg(&self.module)
            .arg(&tasks_file)
            .current_dir(s.dir.path())
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "node {} failed:\nstdout: {stdout}\nstderr: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
        let results = v["results"].as_array().unwrap().clone();
        assert_eq!(results.len(), tasks.as_array().unwrap().len());
        results
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn json_of(r: Run) -> Value {
    serde_json::from_str(&r.ok().stdout).unwrap()
}

fn ok(r: &Value) -> &Value {
    assert_eq!(r["ok"], true, "{r:#}");
    r
}

/// The component's `result` error: a ComponentError whose payload is the
/// WIT error record. Returns its message.
fn component_error<'a>(r: &'a Value, code: &str) -> &'a str {
    assert_eq!(r["ok"], false, "should have failed with {code}: {r:#}");
    let e = &r["error"];
    assert_eq!(e["kind"], "ComponentError", "{r:#}");
    assert_eq!(e["code"], code, "{r:#}");
    e["message"].as_str().unwrap()
}

/// `cairn_core::ErrorCode` as the WIT enum names it (`WrongKey` -> `wrong-key`).
fn wit_name(code: cairn_core::ErrorCode) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// What the native core says about these bytes: Ok(sha256) or Err(code).
fn native_decode(bytes: &[u8], key: KeyMaterial) -> Result<String, String> {
    let mut d = Decoder::new(key);
    let mut plain = d.push(bytes).map_err(|e| wit_name(e.code()))?;
    plain.extend(d.push(&[]).map_err(|e| wit_name(e.code()))?);
    d.finish().map_err(|e| wit_name(e.code()))?;
    Ok(sha256_hex(&plain))
}

fn test_key() -> KeyMaterial {
    KeyMaterial::Key(MasterKey::parse(TEST_KEY).unwrap())
}

#[test]
fn node_decodes_archives_written_by_cairn() {
    let Some(jco) = jco() else { return };
    let s = Scratch::new();
    s.make_db("app.db", 20_000);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let plain = json_of(s.run(&[
        "backup",
        "app.db",
        "plain",
        "--chunk-size",
        "64K",
        "--json",
        "-q",
    ]));
    let sealed = json_of(s.run(&[
        "backup",
        "app.db",
        "sealed",
        "--chunk-size",
        "64K",
        "--key-file",
        "k.key",
        "--json",
        "-q",
    ]));
    let pw = json_of(
        s.cmd(&[
            "backup",
            "app.db",
            "pw",
            "--passphrase-env",
            "PW",
            "--level",
            "1",
            "--json",
            "-q",
        ])
        .env("PW", "correct horse battery staple")
        .output()
        .unwrap()
        .into(),
    );
    let object = |v: &Value, dest: &str| format!("{dest}/{}", v["object"].as_str().unwrap());
    assert!(object(&plain, "plain").ends_with(".db.gz"));
    assert!(object(&sealed, "sealed").ends_with(".db.cairn"));

    let r = jco.run(
        &s,
        json!([
            {"op": "decode", "archive": object(&plain, "plain"), "key": null, "out": "from-gz.db"},
            {"op": "decode", "archive": object(&sealed, "sealed"), "key": {"raw": TEST_KEY},
             "out": "from-cairn.db", "slice": 7777},
            {"op": "decode", "archive": object(&pw, "pw"),
             "key": {"passphrase": "correct horse battery staple"}},
            {"op": "sniff", "path": object(&plain, "plain")},
            {"op": "sniff", "path": object(&sealed, "sealed")},
            {"op": "sniff", "path": "app.db"},
            {"op": "key-id", "key": TEST_KEY},
        ]),
    );

    // The plaintext hashed in JS is the database cairn read, by the --json
    // report, the catalog (both unencrypted only: §11) and the trailer
    // (summary). All three backups are of the same database.
    let catalog_gz = &s.catalog("plain")["entries"][0];
    let catalog_sealed = &s.catalog("sealed")["entries"][0];
    for (res, report, entry) in [
        (&r[0], &plain, Some(catalog_gz)),
        (&r[1], &sealed, Some(catalog_sealed)),
        (&r[2], &pw, None),
    ] {
        let res = ok(res);
        assert_eq!(res["sha256"], plain["plain_sha256"], "{res:#}");
        assert_eq!(res["summary"]["plainSha256"], plain["plain_sha256"]);
        assert_eq!(res["plainLen"], report["plain_size"]);
        assert_eq!(res["summary"]["info"]["dbName"], "app.db");
        if let Some(e) = entry {
            let info = &res["summary"]["info"];
            assert_eq!(info["archiveId"], e["archive_id"]);
            assert_eq!(info["encryption"], e["encryption"]);
            assert_eq!(info["compression"], e["compression"]);
            assert_eq!(info["createdAtMs"], e["created_at_ms"]);
            assert_eq!(
                info["keyId"],
                e.get("key_id").cloned().unwrap_or(Value::Null)
            );
            let size = res["plainLen"].as_u64().unwrap();
            assert_eq!(res["summary"]["chunks"], size.div_ceil(64 << 10));
        }
    }
    assert_eq!(catalog_gz["plain_sha256"], plain["plain_sha256"]);
    assert!(catalog_sealed.get("plain_sha256").is_none());
    assert!(sealed.get("plain_sha256").is_none() && pw.get("plain_sha256").is_none());

    // The images Node wrote are the database: same bytes as `cairn restore`
    // gives, and SQLite is happy with them.
    s.run(&["restore", "plain", "-o", "restored.db", "-q"]).ok();
    let restored = s.read("restored.db");
    assert_eq!(sha256_hex(&restored), plain["plain_sha256"]);
    for f in ["from-gz.db", "from-cairn.db"] {
        assert!(s.read(f) == restored, "{f} differs from cairn's restore");
        assert!(integrity_ok(&s.path(f)));
        assert_eq!(count_rows(&s.path(f)), 20_000);
    }

    assert_eq!(ok(&r[3])["kind"], "cairn-gzip");
    assert_eq!(ok(&r[4])["kind"], "cairn-encrypted");
    assert_eq!(ok(&r[5])["kind"], "sqlite");
    assert_eq!(ok(&r[6])["keyId"], catalog_sealed["key_id"]);
}

/// Fixed inputs: what a host passes in (ids, salt, time), so the bytes are
/// a function of them alone.
const ARCHIVE_ID: [u8; 16] = [0x5a; 16];
const SALT: [u8; 32] = [0xa5; 32];
const CREATED_AT_MS: i64 = 1_795_359_662_345;

fn native_encode(input: &[u8], page_size: u32, chunk: u32, level: u8, key: bool) -> Vec<u8> {
    let mut enc = Encoder::new(WriterParams {
        archive_id: ARCHIVE_ID,
        source: SourceKind::Sqlite,
        db_name: "app.db".into(),
        created_at_ms: CREATED_AT_MS,
        page_size,
        chunk_size: chunk,
        compression: Compression::from_level(level).unwrap(),
        encryption: key.then(|| EncryptionParams {
            master: MasterKey::parse(TEST_KEY).unwrap(),
            kdf: Kdf::RawKey,
            salt: SALT,
        }),
    })
    .unwrap();
    let mut out = Vec::new();
    for part in input.chunks(100_003) {
        out.extend(enc.push(part).unwrap());
    }
    let (tail, _) = enc.finish().unwrap();
    out.extend(tail);
    out
}

#[test]
fn node_encodes_archives_that_cairn_restores_byte_identical_to_native() {
    let Some(jco) = jco() else { return };
    let s = Scratch::new();
    let db = s.make_db("app.db", 20_000);
    let input = s.read("app.db");
    let page_size: u32 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();

    let cases: [(u8, bool, u32); 4] = [
        (6, false, 64 << 10),
        (6, true, 64 << 10),
        (0, true, 16 << 10),
        (1, false, 1 << 20),
    ];
    let tasks: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, &(level, key, chunk))| {
            json!({
                "op": "encode",
                "input": "app.db",
                "out": format!("js-{i}.bin"),
                "dest": format!("dest-{i}"),
                "idRandom": "0badc0de",
                "params": {
                    "archiveId": hex::encode(ARCHIVE_ID),
                    "dbName": "app.db",
                    "createdAtMs": CREATED_AT_MS,
                    "pageSize": page_size,
                    "chunkSize": chunk,
                    "level": level,
                    "key": key.then_some(TEST_KEY),
                    "salt": hex::encode(SALT),
                },
            })
        })
        .collect();
    let results = jco.run(&s, Value::Array(tasks));

    for (i, (&(level, key, chunk), r)) in cases.iter().zip(&results).enumerate() {
        let r = ok(r);
        let what = format!("level {level}, encrypted {key}, chunk {chunk}");
        assert_eq!(r["streamedEqualsChunked"], true, "{what}");
        let js = s.read(&format!("js-{i}.bin"));
        let native = native_encode(&input, page_size, chunk, level, key);
        assert!(js.len() > 1000);
        assert!(
            js == native,
            "{what}: the component in Node wrote other bytes than the native core ({} vs {} bytes)",
            js.len(),
            native.len()
        );
        assert_eq!(r["summary"]["plainSha256"], sha256_hex(&input), "{what}");
        assert_eq!(
            r["summary"]["chunks"],
            (input.len() as u64).div_ceil(chunk as u64)
        );
        assert_eq!(r["id"], "20261122T150102Z-0badc0de");

        // The destination Node wrote restores with cairn.
        let dest = format!("dest-{i}");
        assert_eq!(s.latest_object(&dest), r["object"].as_str().unwrap());
        let out = format!("restored-{i}.db");
        let mut args = vec!["restore", dest.as_str(), "-o", out.as_str(), "-q"];
        if key {
            args.extend(["--key-file", "k.key"]);
        }
        s.run(&args).ok();
        assert!(
            s.read(&out) == input,
            "{what}: the restored database differs"
        );
        let listed = json_of(s.run(&["list", dest.as_str(), "--json"]));
        assert!(
            listed.to_string().contains("20261122T150102Z-0badc0de"),
            "{listed}"
        );
    }
}

#[test]
fn node_sees_typed_errors_and_catches_tampering() {
    let Some(jco) = jco() else { return };
    let s = Scratch::new();
    s.make_db("app.db", 5_000);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let sealed = json_of(s.run(&[
        "backup",
        "app.db",
        "sealed",
        "--chunk-size",
        "16K",
        "--key-file",
        "k.key",
        "--json",
        "-q",
    ]));
    let plain = json_of(s.run(&[
        "backup",
        "app.db",
        "plain",
        "--chunk-size",
        "16K",
        "--json",
        "-q",
    ]));
    let sealed_obj = format!("sealed/{}", sealed["object"].as_str().unwrap());
    let plain_obj = format!("plain/{}", plain["object"].as_str().unwrap());
    let sealed_bytes = s.read(&sealed_obj);
    let plain_bytes = s.read(&plain_obj);
    let sealed_id = s.catalog("sealed")["entries"][0]["archive_id"]
        .as_str()
        .unwrap()
        .to_string();
    let plain_id = s.catalog("plain")["entries"][0]["archive_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Damaged copies: a flipped byte inside chunk 1, chunks 1 and 2
    // swapped, the tail cut off.
    let offs = frame_offsets(&sealed_bytes, &sealed_id, true);
    let mut flipped = sealed_bytes.clone();
    flipped[offs[1] + 60] ^= 0x01;
    let swapped = swap_frames(&sealed_bytes, &offs, 1, 2);
    let cut = sealed_bytes[..sealed_bytes.len() - 50].to_vec();
    let goffs = frame_offsets(&plain_bytes, &plain_id, false);
    let mut gz_flipped = plain_bytes.clone();
    gz_flipped[goffs[2] + 100] ^= 0x40;
    let mut other_key = TEST_KEY.as_bytes().to_vec();
    other_key[0] = if other_key[0] == b'0' { b'1' } else { b'0' };
    let other_key = String::from_utf8(other_key).unwrap();

    let files = [
        ("flipped.cairn", &flipped),
        ("swapped.cairn", &swapped),
        ("cut.cairn", &cut),
        ("flipped.db.gz", &gz_flipped),
    ];
    for (name, bytes) in files {
        std::fs::write(s.path(name), bytes).unwrap();
    }
    let k = json!({"raw": TEST_KEY});
    let r = jco.run(
        &s,
        json!([
            {"op": "decode", "archive": sealed_obj, "key": {"raw": other_key}},
            {"op": "decode", "archive": sealed_obj, "key": null},
            {"op": "decode", "archive": sealed_obj, "key": {"passphrase": "not it"}},
            // Pushed frame by frame (the first push ends where chunk 1 starts).
            {"op": "decode", "archive": "flipped.cairn", "key": k, "slice": offs[1]},
            {"op": "decode", "archive": "swapped.cairn", "key": k},
            {"op": "decode", "archive": "cut.cairn", "key": k},
            {"op": "decode", "archive": "flipped.db.gz", "key": null},
            {"op": "decode", "archive": "app.db", "key": null},
            {"op": "encode", "input": "app.db", "out": "x.bin", "params": {
                "archiveId": "0102", "dbName": "app.db", "createdAtMs": 0, "pageSize": 4096,
                "chunkSize": 65536, "level": 6, "key": null, "salt": null}},
            {"op": "key-id", "key": "00"},
        ]),
    );

    // Typed: a ComponentError carrying the WIT error record, the same code
    // the native core gives for the same bytes; the decoder stays failed.
    let wrong = component_error(&r[0], "wrong-key");
    assert!(wrong.contains("wrong key"), "{wrong}");
    assert_eq!(r[0]["again"]["code"], "wrong-key");
    assert_eq!(
        native_decode(
            &sealed_bytes,
            KeyMaterial::Key(MasterKey::parse(&other_key).unwrap())
        ),
        Err("wrong-key".into())
    );
    component_error(&r[1], "key-required");
    let msg = component_error(&r[2], "invalid-key");
    assert!(msg.contains("not a passphrase"), "{msg}");

    let msg = component_error(&r[3], "corrupt-chunk");
    assert!(msg.contains("chunk 1"), "{msg}");
    // Chunk 0 came out before the damage was found, nothing after it (a
    // push that fails returns no plaintext, so the driver pushed frame by frame).
    assert_eq!(r[3]["plainLenBeforeError"], 16 << 10);
    assert_eq!(r[3]["again"]["code"], "corrupt-chunk");
    component_error(&r[4], "out-of-order");
    component_error(&r[5], "truncated");
    let msg = component_error(&r[6], "corrupt-chunk");
    assert!(msg.contains("chunk 2"), "{msg}");
    component_error(&r[7], "not-an-archive");
    for (i, (name, bytes)) in files.iter().enumerate() {
        let key = if name.ends_with(".gz") {
            KeyMaterial::None
        } else {
            test_key()
        };
        assert_eq!(
            native_decode(bytes, key).unwrap_err(),
            r[3 + i]["error"]["code"].as_str().unwrap(),
            "{name}: the component in Node and the native core disagree"
        );
    }
    let msg = component_error(&r[8], "invalid-param");
    assert!(msg.contains("archive id"), "{msg}");
    component_error(&r[9], "invalid-param");
}

/// An archive of `chunks` chunks of zeros, 16 MiB each (the largest chunk
/// size), deflate-9: a few hundred bytes per chunk; sealed with the test
/// key when `key`.
fn zeros_archive(chunks: u64, key: bool) -> Vec<u8> {
    let mut enc = Encoder::new(WriterParams {
        archive_id: ARCHIVE_ID,
        source: SourceKind::File,
        db_name: "zeros".into(),
        created_at_ms: CREATED_AT_MS,
        page_size: 4096,
        chunk_size: cairn_core::MAX_CHUNK_SIZE,
        compression: Compression::from_level(9).unwrap(),
        encryption: key.then(|| EncryptionParams {
            master: MasterKey::parse(TEST_KEY).unwrap(),
            kdf: Kdf::RawKey,
            salt: SALT,
        }),
    })
    .unwrap();
    let zeros = vec![0u8; cairn_core::MAX_CHUNK_SIZE as usize];
    let mut out = Vec::new();
    for _ in 0..chunks {
        out.extend(enc.push(&zeros).unwrap());
    }
    out.extend(enc.finish().unwrap().0);
    out
}

/// Node has no per-instance memory cap, but V8's `--wasm-max-mem-pages`
/// caps every wasm memory in the process. At the cap the guest's allocation
/// fails and it aborts: the caller gets a `WebAssembly.RuntimeError` (not a
/// crash), and the instance refuses further calls. Pushed in small slices the
/// same archive fits (docs/EMBEDDING.md, "Limits to set").
#[test]
fn node_memory_cap_turns_a_decompression_bomb_into_a_trap() {
    let Some(jco) = jco() else { return };
    let s = Scratch::new();
    // 256 MiB of zeros in 16 MiB chunks (the largest allowed) deflate to
    // about 260 KB: one push of all of it would return 256 MiB.
    let bomb = zeros_archive(16, false);
    assert!(bomb.len() < 1 << 20);
    std::fs::write(s.path("bomb.db.gz"), &bomb).unwrap();

    // 1600 pages of 64 KiB = 100 MiB.
    let cap = ["--wasm-max-mem-pages=1600"];
    let small = jco.run_with(
        &s,
        &cap,
        &json!([{"op": "decode", "archive": "bomb.db.gz", "key": null, "slice": 4096}]),
    );
    assert_eq!(ok(&small[0])["plainLen"], 256u64 << 20);

    let r = jco.run_with(
        &s,
        &cap,
        &json!([
            {"op": "decode", "archive": "bomb.db.gz", "key": null, "slice": 1 << 30},
            {"op": "sniff", "path": "bomb.db.gz"},
        ]),
    );
    assert_eq!(r[0]["ok"], false, "{:#}", r[0]);
    assert_eq!(r[0]["error"]["kind"], "RuntimeError", "{:#}", r[0]);
    assert_eq!(r[0]["again"]["kind"], "RuntimeError", "{:#}", r[0]);
    assert_eq!(r[1]["error"]["kind"], "RuntimeError", "{:#}", r[1]);
    let msg = r[1]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot enter component instance"), "{msg}");
}

/// The pull-style decoder (`feed`, then `pull` one chunk per call) keeps
/// memory bounded whatever the archive decodes to: 512 MiB of plaintext,
/// fed 1 MiB of archive at a time (which alone decodes to all of it),
/// decodes under a 64 MiB cap on wasm memory, the file read slice by slice,
/// and Node's peak RSS stays far below the plaintext's size. Damage found
/// by `pull` arrives as the same typed error as from `push`.
#[test]
fn node_pulls_any_archive_in_bounded_memory() {
    let Some(jco) = jco() else { return };
    let s = Scratch::new();
    let chunks = 32u64;
    let archive = zeros_archive(chunks, true);
    let zeros = vec![0u8; cairn_core::MAX_CHUNK_SIZE as usize];
    assert!(archive.len() < 1 << 20, "the archive fits one slice");
    std::fs::write(s.path("zeros.db.cairn"), &archive).unwrap();
    // A byte inside the sealed body of a data frame in the middle: the
    // AEAD tag fails there (header record 96 bytes, frames of equal size,
    // trailer frame 113 bytes; docs/FORMAT.md §2, §3).
    let mut damaged = archive.clone();
    let frame = (archive.len() - 96 - 113) / chunks as usize;
    assert_eq!(96 + frame * chunks as usize + 113, archive.len());
    damaged[96 + 16 * frame + 60] ^= 0x40;
    std::fs::write(s.path("damaged.db.cairn"), &damaged).unwrap();

    let plain_len = chunks * cairn_core::MAX_CHUNK_SIZE as u64;
    let mut want = Sha256::new();
    for _ in 0..chunks {
        want.update(&zeros);
    }
    let want = hex::encode(want.finalize());
    let key = json!({"raw": TEST_KEY});
    // 1024 pages of 64 KiB = 64 MiB: one push of the slice would need 512.
    let cap = ["--wasm-max-mem-pages=1024"];
    let r = jco.run_with(
        &s,
        &cap,
        &json!([{"op": "decode", "archive": "zeros.db.cairn", "key": key, "slice": 1 << 20, "pull": true}]),
    );
    let r = ok(&r[0]);
    assert_eq!(r["plainLen"], plain_len);
    assert_eq!(r["sha256"], want);
    assert_eq!(r["summary"]["plainSha256"], want);
    assert_eq!(r["pulls"], chunks);
    assert_eq!(r["largestPull"], cairn_core::MAX_CHUNK_SIZE);
    let rss = r["maxRssMiB"].as_f64().unwrap();
    assert!(
        rss < 256.0,
        "Node's peak RSS {rss} MiB for 512 MiB of plaintext"
    );

    let r = jco.run(
        &s,
        json!([{"op": "decode", "archive": "damaged.db.cairn", "key": key, "slice": 1 << 20, "pull": true}]),
    );
    component_error(&r[0], &wit_name(cairn_core::ErrorCode::CorruptChunk));
    assert_eq!(r[0]["again"]["code"], r[0]["error"]["code"], "{:#}", r[0]);
}
