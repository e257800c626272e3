//! The sweep (issue 15 §1): every byte of a small plain and a small
//! encrypted archive flipped, and each archive cut at every length; each
//! case must either fail with a named error and leave no output file, or
//! restore exactly the original database. Run in-process through the same
//! `restore::run` the CLI calls, so thousands of cases take seconds.

use std::path::Path;

use cairn::engine::EngineKind;
use cairn::restore::{CheckMode, RestoreOptions, run};
use cairn::storage::{Dest, Location};
use cairn_core::{KeyMaterial, MasterKey};
use cairn_e2e::*;

fn sweep(s: &Scratch, dest: &str, key: KeyMaterial, rt: &tokio::runtime::Runtime) -> usize {
    let object = s.latest_object(dest);
    let archive_path = s.path(&format!("{dest}/{object}"));
    let original = std::fs::read(&archive_path).unwrap();
    let d = Dest::open(&Location::Local(s.path(dest)), rt.handle()).unwrap();
    let out = s.path("out.db");
    let want = {
        let _ = std::fs::remove_file(&out);
        restore(&d, &key, &out).expect("the undamaged archive restores");
        std::fs::read(&out).unwrap()
    };
    let mut cases = Vec::new();
    for i in 0..original.len() {
        let mut b = original.clone();
        b[i] ^= 0xff;
        cases.push((format!("byte {i} flipped"), b));
    }
    for n in 0..original.len() {
        cases.push((format!("cut at {n}"), original[..n].to_vec()));
    }
    let n = cases.len();
    for (what, bytes) in cases {
        std::fs::write(&archive_path, &bytes).unwrap();
        let _ = std::fs::remove_file(&out);
        match restore(&d, &key, &out) {
            Ok(()) => assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{dest}, {what}: restored something else"
            ),
            Err(e) => {
                let msg = e;
                assert!(
                    !msg.is_empty() && !msg.contains('\n'),
                    "{dest}, {what}: {msg}"
                );
                assert!(!out.exists(), "{dest}, {what}: output left after {msg}");
                let left: Vec<String> = std::fs::read_dir(s.dir.path())
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".out.db."))
                    .collect();
                assert!(left.is_empty(), "{dest}, {what}: temp left: {left:?}");
            }
        }
    }
    std::fs::write(&archive_path, &original).unwrap();
    n
}

fn restore(d: &Dest, key: &KeyMaterial, out: &Path) -> Result<(), String> {
    run(
        d,
        &RestoreOptions {
            id: None,
            db: None,
            output: out.to_path_buf(),
            force: false,
            if_db_not_exists: false,
            // Always the full check: every case must prove itself.
            check: CheckMode::Full,
            key: key.clone(),
            engine: EngineKind::Native,
            limits: Default::default(),
            verify_sandboxed: None,
            progress: false,
        },
    )
    .map(|_| ())
    .map_err(|e| format!("{e:#}"))
}

#[test]
fn every_flipped_byte_and_every_truncation_fails_cleanly_or_restores_exactly() {
    let s = Scratch::new();
    // Two pages of data: small archives, a few thousand cases.
    let db = s.path("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA page_size=4096; CREATE TABLE t(x); INSERT INTO t VALUES ('hello');")
        .unwrap();
    drop(c);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    s.run(&["backup", "app.db", "p", "--chunk-size", "4K", "-q"])
        .ok();
    s.run(&[
        "backup",
        "app.db",
        "e",
        "--chunk-size",
        "4K",
        "--key-file",
        "k.key",
        "-q",
    ])
    .ok();
    let rt = cairn::cli::runtime().unwrap();
    let key = KeyMaterial::Key(MasterKey::parse(TEST_KEY).unwrap());
    let t = std::time::Instant::now();
    let n = sweep(&s, "p", KeyMaterial::None, &rt) + sweep(&s, "e", key, &rt);
    eprintln!("sweep: {n} cases in {:.1}s", t.elapsed().as_secs_f64());
    assert!(n > 1000, "{n} cases");
}
