//! Hostile destinations (issue 15 §3): `latest.txt`, catalog entries and log
//! commits naming keys outside the destination (traversal, absolute paths,
//! NULs, over-long keys), `snapshots/` a symbolic link out of it, a huge or
//! deeply nested catalog or commit. Each is refused with one clear line (or,
//! for `latest.txt`, which no reader follows, ignored), with no panic, and
//! nothing outside the destination is read or written.

use cairn_core::catalog::{Catalog, Entry};
use cairn_core::layout::Commit;
use cairn_e2e::*;

const ROWS: u32 = 150;

fn setup() -> Scratch {
    let s = Scratch::new();
    s.make_db("app.db", ROWS);
    s.run(&["backup", "app.db", "d", "-q"]).ok();
    // A decoy beside the destination that a traversal would reach.
    std::fs::create_dir_all(s.path("outside/snapshots")).unwrap();
    std::fs::copy(
        s.path(&format!("d/{}", s.latest_object("d"))),
        s.path("outside/decoy.db.gz"),
    )
    .unwrap();
    s
}

fn entries(s: &Scratch) -> Vec<Entry> {
    serde_json::from_value(s.catalog("d")["entries"].clone()).unwrap()
}

/// Layout 1: catalog.json with these entries (digest recomputed, as an
/// attacker with write access would), no log.
fn as_layout_1(s: &Scratch, es: Vec<Entry>) {
    for d in ["log", "checkpoints"] {
        let _ = std::fs::remove_dir_all(s.path(&format!("d/{d}")));
    }
    let _ = std::fs::remove_file(s.path("d/cairn.json"));
    let cat = Catalog {
        generation: es.len() as u64,
        entries: es,
    };
    std::fs::write(s.path("d/catalog.json"), cat.render()).unwrap();
}

const BAD_KEYS: [&str; 6] = [
    "../outside/decoy.db.gz",
    "snapshots/../../outside/decoy.db.gz",
    "/etc/passwd",
    "snapshots/a\0b.db.gz",
    "snapshots\\..\\..\\outside\\decoy.db.gz",
    "",
];

fn long_key() -> String {
    format!("snapshots/{}.db.gz", "a".repeat(600))
}

fn restored_ok(s: &Scratch, dest: &str) {
    let _ = std::fs::remove_file(s.path("r.db"));
    s.run(&["restore", dest, "-o", "r.db", "-q"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), ROWS as i64);
}

#[test]
fn latest_txt_is_never_followed_whatever_it_says() {
    let s = setup();
    let mut bad: Vec<Vec<u8>> = BAD_KEYS.iter().map(|k| k.as_bytes().to_vec()).collect();
    bad.push(long_key().into_bytes());
    bad.push(vec![0xff, 0xfe, 0]);
    for layout_1 in [false, true] {
        if layout_1 {
            as_layout_1(&s, entries(&s));
        }
        for b in &bad {
            std::fs::write(s.path("d/latest.txt"), b).unwrap();
            restored_ok(&s, "d");
            s.run(&["list", "d"]).ok();
            s.run(&["verify", "d", "-q"]).ok();
        }
    }
}

#[test]
fn catalog_entries_with_unsafe_keys_are_refused() {
    let s = setup();
    let good = entries(&s);
    let mut keys: Vec<String> = BAD_KEYS.iter().map(|k| k.to_string()).collect();
    keys.push(long_key());
    for k in keys {
        let mut es = good.clone();
        es[0].object = k.clone();
        as_layout_1(&s, es);
        for args in [
            &["list", "d"][..],
            &["restore", "d", "-o", "r.db"][..],
            &["verify", "d"][..],
        ] {
            s.run(args)
                .fails_with(&["catalog", "d/catalog.json", "is not a safe relative path"]);
        }
        assert!(!s.path("r.db").exists());
    }
}

/// Layout 2: a commit after the real one, adding an entry with `object`.
fn plant_commit(s: &Scratch, edit: impl Fn(&mut Commit)) {
    let one = s.read("d/log/00000000000000000001.json");
    let mut c = Commit::parse(&one, 1).unwrap();
    c.seq = 2;
    edit(&mut c);
    std::fs::write(s.path("d/log/00000000000000000002.json"), c.render()).unwrap();
}

#[test]
fn commits_with_unsafe_keys_are_refused() {
    let mut keys: Vec<String> = BAD_KEYS.iter().map(|k| k.to_string()).collect();
    keys.push(long_key());
    for k in keys {
        let s = setup();
        plant_commit(&s, |c| {
            let e = &mut c.add[0];
            e["id"] = "20300101T000000Z-00000000".into();
            e["object"] = k.clone().into();
        });
        for args in [&["list", "d"][..], &["restore", "d", "-o", "r.db"][..]] {
            s.run(args).fails_with(&[
                "log/00000000000000000002.json",
                "is not a safe relative path",
                "cairn repair",
            ]);
        }
        assert!(!s.path("r.db").exists());
    }
}

/// The files under `outside/`, with their sizes.
fn outside(s: &Scratch) -> Vec<(String, u64)> {
    s.files("outside")
        .into_iter()
        .map(|f| {
            let n = std::fs::metadata(s.path(&format!("outside/{f}")))
                .unwrap()
                .len();
            (f, n)
        })
        .collect()
}

#[test]
fn a_symbolic_link_inside_the_destination_is_not_followed() {
    let s = setup();
    // snapshots/ moved out and linked back in.
    std::fs::remove_dir(s.path("outside/snapshots")).unwrap();
    std::fs::rename(s.path("d/snapshots"), s.path("outside/snapshots")).unwrap();
    std::os::unix::fs::symlink("../outside/snapshots", s.path("d/snapshots")).unwrap();
    let before = outside(&s);
    s.run(&["restore", "d", "-o", "r.db"]).fails_with(&[
        "d/snapshots",
        "symbolic link",
        "does not follow",
    ]);
    assert!(!s.path("r.db").exists());
    let r = s.run(&["backup", "app.db", "d"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(outside(&s), before, "something was written outside d/");
    let r = s.run(&["verify", "d"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);

    // An archive that is a link to a file outside.
    let s = setup();
    let obj = s.latest_object("d");
    let p = s.path(&format!("d/{obj}"));
    std::fs::rename(&p, s.path("outside/moved.db.gz")).unwrap();
    std::os::unix::fs::symlink(s.path("outside/moved.db.gz"), &p).unwrap();
    s.run(&["restore", "d", "-o", "r.db"])
        .fails_with(&[&obj, "symbolic link"]);
    assert!(!s.path("r.db").exists());
}

/// An envelope of `format` around `body`, with its digest.
fn envelope(format: &str, version: u32, body: &str) -> String {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    format!(
        "{{\"format\":\"{format}\",\"version\":{version},\"body_sha256\":\"{digest}\",\"body\":{body}}}\n"
    )
}

#[test]
fn a_huge_or_deeply_nested_catalog_or_commit_is_refused() {
    // Layout 1: a 65 MiB catalog.json (sparse: refused before it is read).
    let s = setup();
    let es = entries(&s);
    as_layout_1(&s, es.clone());
    let f = std::fs::File::create(s.path("d/catalog.json")).unwrap();
    f.set_len(65 << 20).unwrap();
    drop(f);
    s.run(&["list", "d"])
        .fails_with(&["d/catalog.json", "over the 64 MiB"]);
    s.run(&["restore", "d", "-o", "r.db"])
        .fails_with(&["d/catalog.json", "over the 64 MiB"]);
    // Nested 100,000 deep: as the whole file, and in an entry's unknown
    // field (kept as a JSON value: the parser's depth limit holds).
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(s.path("d/catalog.json"), &deep).unwrap();
    s.run(&["restore", "d", "-o", "r.db"])
        .fails_with(&["d/catalog.json", "not valid catalog JSON"]);
    let mut e = serde_json::to_value(&es[0]).unwrap();
    e["junk"] = "DEEP".into();
    let body = format!("{{\"generation\":1,\"entries\":[{e}]}}").replace("\"DEEP\"", &deep);
    std::fs::write(
        s.path("d/catalog.json"),
        envelope("cairn-catalog", 1, &body),
    )
    .unwrap();
    s.run(&["list", "d"]).fails_with(&[
        "d/catalog.json",
        "body does not decode",
        "recursion limit",
    ]);
    assert!(!s.path("r.db").exists());

    // Layout 2: a huge commit, a deeply nested one, and one nested inside
    // an added entry (digest valid).
    let s = setup();
    let key = "d/log/00000000000000000002.json";
    let f = std::fs::File::create(s.path(key)).unwrap();
    f.set_len(65 << 20).unwrap();
    drop(f);
    s.run(&["list", "d"]).fails_with(&[key, "over the 64 MiB"]);
    std::fs::write(s.path(key), &deep).unwrap();
    s.run(&["restore", "d", "-o", "r.db"])
        .fails_with(&[key, "is damaged", "cairn repair"]);
    let mut c = Commit::parse(&s.read("d/log/00000000000000000001.json"), 1).unwrap();
    c.seq = 2;
    c.add[0]["junk"] = "DEEP".into();
    let body = serde_json::to_string(&c)
        .unwrap()
        .replace("\"DEEP\"", &deep);
    std::fs::write(s.path(key), envelope("cairn-commit", 2, &body)).unwrap();
    s.run(&["list", "d"])
        .fails_with(&[key, "is damaged", "recursion limit"]);
    assert!(!s.path("r.db").exists());
}

/// A forged segment (unencrypted, so anyone who can write the destination
/// can make one with a valid checksum) declaring a database of a billion
/// pages: restore refuses it by name instead of growing its temp file to
/// terabytes, and leaves nothing beside the target.
#[test]
fn a_segment_claiming_a_huge_database_is_refused() {
    use cairn_core::segment::{Segment, parse_segment_key};
    use cairn_core::{Compression, KeyMaterial, SourceKind, WriterParams};

    let s = Scratch::new();
    let db = s.make_db("app.db", ROWS);
    let mut rep = s
        .cmd(&["replicate", "app.db", "r", "--interval", "20ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let segments = |s: &Scratch| -> Vec<String> {
        s.files("r")
            .into_iter()
            .filter(|f| parse_segment_key(f).is_some())
            .collect()
    };
    let t0 = std::time::Instant::now();
    let mut next = ROWS;
    while segments(&s).len() < 3 {
        assert!(t0.elapsed().as_secs() < 60, "no segments appeared");
        insert_rows(&c, next, 5);
        next += 5;
        std::thread::sleep(std::time::Duration::from_millis(60));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(rep.id() as libc::pid_t, libc::SIGTERM) };
    rep.wait().unwrap();
    s.run(&["restore", "r", "-o", "good.db"]).ok();

    let last = segments(&s).pop().unwrap();
    let mut seg = Segment::open(&s.read(&format!("r/{last}")), &last, &KeyMaterial::None).unwrap();
    seg.info.db_pages = 1_000_000_000;
    let forged = seg
        .build(WriterParams {
            archive_id: [9; 16],
            source: SourceKind::File,
            db_name: "app.db".into(),
            created_at_ms: 0,
            page_size: 0,
            chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
            compression: Compression::Deflate { level: 6 },
            encryption: None,
        })
        .unwrap();
    std::fs::write(s.path(&format!("r/{last}")), forged).unwrap();

    s.run(&["restore", "r", "-o", "out/app.db"]).fails_with(&[
        "nothing wrote past page",
        "damaged or forged",
        &last,
    ]);
    assert_eq!(
        s.files("out"),
        Vec::<String>::new(),
        "nothing left beside the target"
    );
}
