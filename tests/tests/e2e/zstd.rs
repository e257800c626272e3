//! The zstd codec: `--codec zstd` archives that open with plain `zstd -d`,
//! zstd as the default inside encrypted archives, level checks, and the
//! refusal of codecs and versions this cairn does not know.

use cairn_e2e::servers::ci;
use cairn_e2e::*;
use std::process::Command;

const ROWS: u32 = 3_000;

/// Whether the `zstd` CLI is here; under CI=true its absence is a failure.
fn zstd_cli() -> bool {
    let ok = Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "the zstd CLI is missing (.ci/setup.sh installs it)");
        eprintln!("skipped: the zstd CLI is not installed");
    }
    ok
}

fn entry(s: &Scratch) -> serde_json::Value {
    s.catalog("backups")["entries"][0].clone()
}

#[test]
fn an_unencrypted_zstd_backup_restores_and_opens_with_plain_zstd() {
    let s = Scratch::new();
    s.make_db("app.db", ROWS);
    let r = s.run(&["backup", "app.db", "--codec", "zstd"]).ok();
    assert!(r.stderr.contains("zstd-3"), "{}", r.stderr);
    let e = entry(&s);
    assert_eq!(e["compression"], "zstd-3", "{e}");
    let object = e["object"].as_str().unwrap();
    assert!(object.ends_with(".db.zst"), "{object}");
    let archive = s.read(&format!("backups/{object}"));
    assert_eq!(
        cairn_core::sniff(&archive),
        cairn_core::Kind::Zstd { cairn: true }
    );

    let r = s
        .run(&["restore", "backups", "-o", "restored.db", "--json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["compression"], "zstd-3", "{v}");
    assert_eq!(count_rows(&s.path("restored.db")), ROWS as i64);
    let restored = s.read("restored.db");
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&restored)),
        e["plain_sha256"].as_str().unwrap()
    );

    if zstd_cli() {
        let out = Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .arg(s.path(&format!("backups/{object}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == restored, "zstd -d gives the database bytes");
    }

    // Sandboxed verify, list and a key that is ignored all see zstd-3.
    let r = s.run(&["verify", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["compression"], "zstd-3", "{v}");
    let r = s.run(&["list", "backups"]).ok();
    assert!(r.stdout.contains("zstd-3"), "{}", r.stdout);
}

#[test]
fn an_encrypted_backup_defaults_to_zstd_and_verifies_in_the_sandbox() {
    let s = Scratch::new();
    s.make_db("app.db", ROWS);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    s.run(&["backup", "app.db", "--key-file", "k.key"]).ok();
    let e = entry(&s);
    assert_eq!(e["compression"], "zstd-3", "{e}");
    let object = e["object"].as_str().unwrap().to_string();
    assert!(object.ends_with(".db.cairn"), "{object}");
    let archive = s.read(&format!("backups/{object}"));
    assert_eq!(archive[10], 2, "zstd archives are format version 2");

    s.run(&[
        "restore",
        "backups",
        "-o",
        "restored.db",
        "--key-file",
        "k.key",
    ])
    .ok();
    assert_eq!(count_rows(&s.path("restored.db")), ROWS as i64);
    assert!(integrity_ok(&s.path("restored.db")));
    for extra in [&[][..], &["--no-host-crypto"][..]] {
        let mut args = vec!["verify", "--json", "--key-file", "k.key"];
        args.extend(extra);
        let r = s.run(&args).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v[0]["ok"], true, "{v}");
        assert_eq!(v[0]["sandboxed"], true, "{v}");
        assert_eq!(v[0]["tables"][0]["rows"], ROWS as u64, "{v}");
    }

    // The embedded component writes zstd too, and `--codec gzip` still
    // gives deflate inside encryption.
    s.run(&[
        "backup",
        "app.db",
        "--key-file",
        "k.key",
        "--engine",
        "wasm",
        "--level",
        "5",
    ])
    .ok();
    s.run(&["backup", "app.db", "--key-file", "k.key", "--codec", "gzip"])
        .ok();
    let entries = s.catalog("backups")["entries"].clone();
    let codecs: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["compression"].as_str().unwrap())
        .collect();
    assert_eq!(codecs, ["zstd-3", "zstd-5", "deflate-6"]);
    let wasm_id = entries[1]["id"].as_str().unwrap();
    s.run(&[
        "restore",
        "backups",
        "--id",
        wasm_id,
        "-o",
        "wasm.db",
        "--key-file",
        "k.key",
        "--engine",
        "wasm",
    ])
    .ok();
    assert_eq!(count_rows(&s.path("wasm.db")), ROWS as i64);
}

#[test]
fn a_level_outside_the_codec_range_is_refused_naming_the_flag() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    s.run(&["backup", "app.db", "--codec", "zstd", "--level", "20"])
        .fails_with(&["--level 20", "zstd", "1 (fastest) to 19"]);
    s.run(&["backup", "app.db", "--codec", "zstd", "--level", "0"])
        .fails_with(&["--level 0", "zstd"]);
    s.run(&["backup", "app.db", "--level", "12"]).fails_with(&[
        "--level 12",
        "gzip",
        "0 (store) to 9",
    ]);
    assert!(!s.path("backups").join("latest.txt").exists());
    // Level 12 is a fine zstd level.
    s.run(&["backup", "app.db", "--codec", "zstd", "--level", "12"])
        .ok();
    assert_eq!(entry(&s)["compression"], "zstd-12");
}

/// Rewrites the archive's header record in place (its CRC recomputed).
fn patch_header(bytes: &mut [u8], at: usize, f: impl FnOnce(&mut [u8])) {
    let len = 13 + u16::from_le_bytes([bytes[at + 11], bytes[at + 12]]) as usize;
    f(&mut bytes[at..at + len]);
    let crc = crc32fast::hash(&bytes[at..at + len]);
    bytes[at + len..at + len + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn an_unknown_codec_or_a_newer_format_is_refused_clearly() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    std::fs::write(s.path("k.key"), TEST_KEY).unwrap();
    s.run(&["backup", "app.db", "--key-file", "k.key"]).ok();
    let object = s.latest_object("backups");
    let path = s.path(&format!("backups/{object}"));
    let good = std::fs::read(&path).unwrap();
    let restore = || {
        s.run(&[
            "restore",
            "backups",
            "-o",
            "out.db",
            "--force",
            "--key-file",
            "k.key",
        ])
    };

    // A future format version: "upgrade cairn".
    let mut bad = good.clone();
    patch_header(&mut bad, 0, |h| h[10] = 3);
    std::fs::write(&path, &bad).unwrap();
    restore().fails_with(&["format version 3", "upgrade cairn"]);

    // A codec id this cairn does not know, in a well-formed header.
    let mut bad = good.clone();
    let meta = &good[13..];
    // archive id, source, db_name (len + "app.db"), created_at, page size, chunk size
    let at = 13 + 16 + 1 + 1 + meta[17] as usize;
    let mut p = at;
    for _ in 0..3 {
        while good[p] & 0x80 != 0 {
            p += 1;
        }
        p += 1;
    }
    assert_eq!(good[p], 2, "the Zstd discriminant");
    patch_header(&mut bad, 0, |h| h[p] = 9);
    std::fs::write(&path, &bad).unwrap();
    restore().fails_with(&["header is corrupted", "metadata does not decode"]);

    std::fs::write(&path, &good).unwrap();
    restore().ok();
}
