//! The native and wasm engines are the same code: for the same key, salt,
//! ids and timestamp they must write the same bytes.

use cairn::backup::{self, BackupOptions, Seeds};
use cairn::engine::EngineKind;
use cairn::storage::{Dest, Location};
use cairn_core::{Compression, KeyMaterial, MasterKey};
use cairn_e2e::*;

fn seeds() -> Seeds {
    Seeds {
        created_at_ms: 1_795_359_662_345,
        archive_id: [1; 16],
        salt: [2; 32],
        argon_salt: [3; 16],
        id_suffix: [4; 4],
    }
}

#[test]
fn native_and_wasm_engines_write_byte_identical_archives() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 30_000);
    let key = KeyMaterial::Key(MasterKey::parse(TEST_KEY).unwrap());
    for (key, level) in [
        (KeyMaterial::None, 6),
        (key.clone(), 6),
        (key, 0),
        (KeyMaterial::None, 1),
    ] {
        let mut objects = Vec::new();
        for engine in [EngineKind::Native, EngineKind::Wasm] {
            let dest = s.path(&format!(
                "dest-{engine:?}-{level}-{}",
                matches!(key, KeyMaterial::None)
            ));
            let opts = BackupOptions {
                source: db.clone().into(),
                key: key.clone(),
                compression: Compression::from_level(level).unwrap(),
                chunk_size: 64 << 10,
                engine,
                temp_dir: s.path(".tmp"),
                progress: false,
                prune: None,
                lock_timeout: cairn::sources::sqlite::DEFAULT_LOCK_TIMEOUT,
            };
            std::fs::create_dir_all(s.path(".tmp")).unwrap();
            let rt = cairn::cli::runtime().unwrap();
            let d = Dest::open(&Location::Local(dest.clone()), rt.handle()).unwrap();
            let r = backup::run_seeded(&[d], &opts, seeds()).unwrap();
            objects.push(std::fs::read(dest.join(&r.object)).unwrap());
        }
        assert!(objects[0].len() > 1000);
        assert!(objects[0] == objects[1], "engines differ (level {level})");
    }
}

#[test]
fn the_component_manifest_matches_the_native_one() {
    use cairn_core::catalog::{Catalog, Entry};
    let s = Scratch::new();
    s.make_db("app.db", 500);
    s.run(&["backup", "app.db", "-q"]).ok();
    s.run(&["backup", "app.db", "-q"]).ok();
    // A layout 1 catalog (what the component parses) of the two entries.
    let entries: Vec<Entry> =
        serde_json::from_value(s.catalog("backups")["entries"].clone()).unwrap();
    let bytes = Catalog {
        generation: 2,
        entries,
    }
    .render();
    let native = Catalog::parse(&bytes).unwrap();
    let rt = cairn::sandbox::Runtime::get().unwrap();
    let mut guest = rt.instance(cairn::sandbox::Limits::default()).unwrap();
    let (store, m) = guest.manifest();
    let parsed = m.call_parse_catalog(&mut *store, &bytes).unwrap().unwrap();
    assert_eq!(parsed.entries.len(), 2);
    assert_eq!(parsed.generation, native.generation);
    assert_eq!(
        m.call_render_catalog(&mut *store, &parsed).unwrap(),
        bytes,
        "render(parse(x)) == x in the component"
    );
    assert_eq!(native.render(), bytes);
    let e: &Entry = native.newest().unwrap();
    let latest = m
        .call_latest_pointer(&mut *store, &parsed.entries[1])
        .unwrap();
    assert_eq!(latest, cairn_core::catalog::latest_pointer(e));
    assert_eq!(
        m.call_snapshot_id(&mut *store, 1_795_359_662_345, &[0xde, 0xad, 0xbe, 0xef])
            .unwrap(),
        "20261122T150102Z-deadbeef"
    );
    let bad = m
        .call_parse_catalog(&mut *store, b"{}")
        .unwrap()
        .unwrap_err();
    assert!(bad.message.contains("catalog"), "{}", bad.message);
    use cairn::sandbox::wit::Kind as W;
    use cairn_core::Kind as K;
    for sample in [
        &s.read("app.db")[..32],
        b"PGDMP\x01\x0e",
        b"-- dump\nCREATE TABLE t(x);",
        &s.read(&format!("backups/{}", e.object))[..32],
        b"??",
    ] {
        let expected = match cairn_core::sniff(sample) {
            K::CairnEncrypted => W::CairnEncrypted,
            K::Gzip { cairn: true } => W::CairnGzip,
            K::Gzip { cairn: false } => W::Gzip,
            K::Zstd { cairn: true } => W::CairnZstd,
            K::Zstd { cairn: false } => W::Zstd,
            K::Sqlite => W::Sqlite,
            K::PgDumpCustom => W::PgDumpCustom,
            K::SqlText => W::SqlText,
            K::Unknown => W::Unknown,
        };
        assert_eq!(guest.sniff(sample).unwrap(), expected);
    }
}

#[test]
fn the_embedded_component_is_not_stale() {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    assert_eq!(
        cairn::component_source_hash(workspace),
        cairn::sandbox::COMPONENT_SOURCE_HASH,
        "the component embedded in cairn was built from other sources than core/ and wit/ hold now: rebuild with `cargo build`"
    );
}

/// A zeroblob database's archive is tiny: one 256 KiB read of it holds
/// hundreds of chunks, which one `push` would decode at once (hundreds of
/// MiB, past the guest's 256 MiB memory). The wasm engine feeds what it
/// reads and pulls a chunk at a time, so such a database restores.
#[test]
fn the_wasm_engine_restores_a_zeroblob_database() {
    let s = Scratch::new();
    let db = s.path("zeros.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size = 65536; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 640)
         INSERT INTO blobs(body) SELECT zeroblob(1048576) FROM n;",
    )
    .unwrap();
    drop(c);
    s.run(&["backup", "zeros.db", "-q"]).ok();
    let object = s.latest_object("backups");
    let stored = std::fs::metadata(s.path("backups").join(&object))
        .unwrap()
        .len();
    assert!(stored < 4 << 20, "{object}: {stored} bytes");
    s.run(&[
        "restore", "backups", "-o", "out.db", "--engine", "wasm", "-q",
    ])
    .ok();
    s.run(&["restore", "backups", "-o", "native.db", "-q"]).ok();
    let digest = |p: &std::path::Path| {
        use sha2::Digest;
        use std::io::Read;
        let (mut h, mut f) = (sha2::Sha256::new(), std::fs::File::open(p).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf).unwrap() {
                0 => break h.finalize(),
                n => h.update(&buf[..n]),
            }
        }
    };
    // The backup API's copy differs from the source in header counters
    // only; the native engine's restore is the reference.
    assert_eq!(
        digest(&s.path("out.db")),
        digest(&s.path("native.db")),
        "the engines restored different bytes"
    );
    let c = rusqlite::Connection::open(s.path("out.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 640);
    drop(c);
    // Free the disk now rather than at the end of the test binary.
    for f in ["out.db", "native.db", "zeros.db"] {
        std::fs::remove_file(s.path(f)).unwrap();
    }
}
