//! What a stranger's decoder, written from docs/FORMAT.md alone, found to fix
//! (issue 15 §4): the newest backup is chosen by (`created_at_ms`, `id`)
//! whatever the file order; no plaintext digest of an encrypted backup in
//! `backup --json`; catalog fields that copy the header are checked against
//! it; a CR LF passphrase line ending.

use cairn_core::catalog::{Catalog, Entry};
use cairn_e2e::*;

fn json(r: Run) -> serde_json::Value {
    serde_json::from_str(&r.ok().stdout).unwrap()
}

/// Turns layout-2 `dest` into a layout-1 one (catalog.json, no latest.txt)
/// holding `entries` in the given order, with a recomputed `body_sha256`.
fn write_layout_1(s: &Scratch, dest: &str, entries: Vec<Entry>) {
    for d in ["log", "checkpoints"] {
        let _ = std::fs::remove_dir_all(s.path(&format!("{dest}/{d}")));
    }
    let _ = std::fs::remove_file(s.path(&format!("{dest}/cairn.json")));
    let _ = std::fs::remove_file(s.path(&format!("{dest}/latest.txt")));
    let cat = Catalog {
        generation: entries.len() as u64,
        entries,
    };
    std::fs::write(s.path(&format!("{dest}/catalog.json")), cat.render()).unwrap();
}

fn entries(s: &Scratch, dest: &str) -> Vec<Entry> {
    serde_json::from_value(s.catalog(dest)["entries"].clone()).unwrap()
}

#[test]
fn the_newest_backup_is_chosen_by_time_and_id_whatever_the_catalog_order() {
    let s = Scratch::new();
    s.make_db("app.db", 200);
    s.run(&["backup", "app.db", "d", "-q"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.run(&["backup", "app.db", "d", "-q"]).ok();
    let mut es = entries(&s, "d");
    assert_eq!(es.len(), 2);
    let newest = es[1].id.clone();
    assert!(es[1].created_at_ms > es[0].created_at_ms);
    // Newest first in the file, and no latest.txt to lean on.
    es.reverse();
    write_layout_1(&s, "d", es);
    let r = json(s.run(&["restore", "d", "-o", "r.db", "--json"]));
    assert_eq!(r["id"], newest.as_str(), "{r}");
    let l = json(s.run(&["list", "d", "--json"]));
    assert_eq!(l["latest"], newest.as_str(), "{l}");
    let text = s.run(&["list", "d"]).ok().stdout;
    let marked: Vec<&str> = text.lines().filter(|l| l.ends_with("(latest)")).collect();
    assert_eq!(marked.len(), 1, "{text}");
    assert!(marked[0].starts_with(&newest), "{text}");
    let v = json(s.run(&["verify", "d", "--json"]));
    assert_eq!(v[0]["id"], newest.as_str(), "{v}");
}

#[test]
fn backup_json_never_prints_the_plaintext_digest_of_an_encrypted_backup() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let plain = json(s.run(&["backup", "app.db", "p", "--json", "-q"]));
    assert_eq!(
        plain["plain_sha256"],
        s.catalog("p")["entries"][0]["plain_sha256"]
    );
    assert_eq!(plain["plain_sha256"].as_str().unwrap().len(), 64);
    let sealed = json(s.run(&[
        "backup",
        "app.db",
        "e",
        "--key-file",
        "k.key",
        "--json",
        "-q",
    ]));
    assert!(sealed.get("plain_sha256").is_none(), "{sealed}");
    let out = serde_json::to_string(&sealed).unwrap();
    assert!(
        !out.contains(plain["plain_sha256"].as_str().unwrap()),
        "{out}"
    );
}

/// An edited entry (digest recomputed) whose header copy is wrong is refused
/// by restore and by verify (sandboxed and native), naming the field.
fn refused_edit(encrypted: bool, edit: impl Fn(&mut Entry), field: &str) {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    let key: &[&str] = if encrypted {
        &["--key-file", "k.key"]
    } else {
        &[]
    };
    let mut args = vec!["backup", "app.db", "d", "-q"];
    args.extend_from_slice(key);
    s.run(&args).ok();
    let mut es = entries(&s, "d");
    edit(&mut es[0]);
    write_layout_1(&s, "d", es);
    let mut restore = vec!["restore", "d", "-o", "r.db"];
    restore.extend_from_slice(key);
    s.run(&restore)
        .fails_with(&["catalog:", field, "header", "edited"]);
    assert!(!s.path("r.db").exists());
    for extra in [&[][..], &["--no-sandbox"][..]] {
        let mut verify = vec!["verify", "d"];
        verify.extend_from_slice(key);
        verify.extend_from_slice(extra);
        let r = s.run(&verify);
        assert_ne!(r.code, 0, "{extra:?}: {}", r.stdout);
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(
            all.contains(field) && all.contains("edited"),
            "{extra:?}: {all}"
        );
    }
}

#[test]
fn catalog_fields_that_copy_the_header_must_equal_it() {
    refused_edit(false, |e| e.db_name = "evil.db".into(), "db_name");
    refused_edit(false, |e| e.page_size = 512, "page_size");
    refused_edit(false, |e| e.compression = "deflate-9".into(), "compression");
    refused_edit(
        true,
        |e| e.key_id = Some("0011223344556677".into()),
        "key_id",
    );
}

#[test]
fn a_passphrase_file_line_ends_at_lf_or_cr_lf() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    s.cmd(&["backup", "app.db", "d", "--passphrase-env", "PW", "-q"])
        .env("PW", "correct horse")
        .output()
        .map(Run::from)
        .unwrap()
        .ok();
    for (i, text) in [
        "correct horse\n",
        "correct horse\r\n",
        "correct horse\r\nnext",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(s.path("pw.txt"), text).unwrap();
        let out = format!("r{i}.db");
        s.run(&[
            "restore",
            "d",
            "-o",
            &out,
            "--passphrase-file",
            "pw.txt",
            "-q",
        ])
        .ok();
    }
    // A lone CR is not a line ending: it stays in the passphrase.
    std::fs::write(s.path("pw.txt"), "correct horse\r").unwrap();
    s.run(&[
        "restore",
        "d",
        "-o",
        "bad.db",
        "--passphrase-file",
        "pw.txt",
    ])
    .fails_with(&["wrong key"]);
}
