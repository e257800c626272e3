//! PostgreSQL backups and restores against a real server (tests/src/postgres.rs):
//! round trips of pgbench data, a backup under write load, pg_dump failing
//! or killed mid-stream (nothing published), what restore refuses, the SQL
//! fallback, and SQLite and PostgreSQL backups sharing one destination.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_e2e::Scratch;
use cairn_e2e::postgres::{PASSWORD, PgServer};

/// Row count and a digest of every row, per pgbench table.
fn fingerprint(pg: &PgServer, db: &str) -> Vec<String> {
    ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
        .iter()
        .map(|t| {
            pg.psql(
                db,
                &format!(
                    "SELECT '{t}' || ' ' || count(*) || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '-') FROM {t} x"
                ),
            )
        })
        .collect()
}

/// Archive objects (not temp files) under `dest/snapshots`.
fn archives(s: &Scratch, dest: &str) -> Vec<String> {
    s.files(&format!("{dest}/snapshots"))
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .collect()
}

fn entries(s: &Scratch, dest: &str) -> Vec<serde_json::Value> {
    s.catalog(dest)["entries"].as_array().unwrap().clone()
}

/// Every byte under `dir`, for "the password is written nowhere".
fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            tree_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[test]
fn round_trip_of_a_pgbench_database() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("shop", 2);
    let before = fingerprint(&pg, "shop");
    let s = Scratch::new();

    let r = s
        .run(&["backup", &pg.url("shop"), "backups", "--json"])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["snapshot"], "pg_dump");
    assert_eq!(report["database"], pg.catalog_name("shop"));
    let e = &entries(&s, "backups")[0];
    assert_eq!(e["source"], "postgres");
    assert_eq!(e["db_name"], pg.catalog_name("shop"));
    assert_eq!(e["dump_format"], "pg_dump custom 1.14");
    let server = pg.psql("shop", "SHOW server_version");
    assert!(
        e["server_version"].as_str().unwrap().starts_with(&server),
        "{e} vs {server}"
    );
    assert!(e["object"].as_str().unwrap().ends_with(".pgdump.gz"), "{e}");
    assert!(
        !tree_contains(&s.path("backups"), PASSWORD.as_bytes()),
        "the password must not be stored"
    );
    let listing = s.run(&["list", "backups"]).ok();
    assert!(
        listing.stdout.contains(&pg.catalog_name("shop")),
        "{}",
        listing.stdout
    );

    // Streamed into a database made by --create.
    s.run(&["restore", "backups", "--to", &pg.url("copy"), "--create"])
        .ok();
    assert_eq!(fingerprint(&pg, "copy"), before);

    // --clean over a changed copy brings it back.
    pg.psql("copy", "DELETE FROM pgbench_accounts WHERE aid % 3 = 0");
    s.run(&["restore", "backups", "--to", &pg.url("copy"), "--clean"])
        .ok();
    assert_eq!(fingerprint(&pg, "copy"), before);

    // Parallel restore from a checked temp file.
    pg.createdb("par");
    let r = s
        .run(&[
            "restore",
            "backups",
            "--to",
            &pg.url("par"),
            "--jobs",
            "2",
            "--json",
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["postgres"]["method"], "from a temp file, 2 jobs");
    assert_eq!(fingerprint(&pg, "par"), before);

    // -o writes the dump itself, for pg_restore (no SQLite check on it).
    let r = s.run(&["restore", "backups", "-o", "shop.pgdump"]).ok();
    assert!(r.stderr.contains("pg_dump custom format"), "{}", r.stderr);
    assert!(s.read("shop.pgdump").starts_with(b"PGDMP"));
    let list = pg
        .client("pg_restore", "postgres")
        .arg("--list")
        .arg(s.path("shop.pgdump"))
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public pgbench_accounts"));

    // verify: sums, decode (sandboxed and native), pg_restore --list.
    for extra in [None, Some("--no-sandbox")] {
        let mut args = vec!["verify", "backups", "--json"];
        args.extend(extra);
        let r = s.run(&args).ok();
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v[0]["ok"], true, "{v}");
        let tables: Vec<&str> = v[0]["postgres"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(tables.contains(&"public.pgbench_accounts"), "{v}");
    }
    let r = s.run(&["verify", "backups"]).ok();
    assert!(r.stdout.contains("pg_restore --list ok"), "{}", r.stdout);
}

#[test]
fn backup_while_pgbench_writes_is_consistent() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("busy", 2);
    let s = Scratch::new();
    let mut bench = pg
        .client("pgbench", "busy")
        .args(["-c", "2", "-T", "15", "-n"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let it write for a while, then back up in the middle of it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(bench.try_wait().unwrap().is_none(), "pgbench ended early");
    s.run(&["backup", &pg.url("busy"), "backups"]).ok();
    assert!(
        bench.try_wait().unwrap().is_none(),
        "pgbench must still be writing when the backup ends"
    );
    assert!(bench.wait().unwrap().success());

    s.run(&[
        "restore",
        "backups",
        "--to",
        &pg.url("busy_copy"),
        "--create",
    ])
    .ok();
    let sums = pg.psql(
        "busy_copy",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let v: Vec<&str> = sums.split(' ').collect();
    assert!(
        v.iter().all(|x| *x == v[0]),
        "pgbench's balances disagree in the restored copy: {sums}"
    );
    let copied: i64 = pg
        .psql("busy_copy", "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    let now: i64 = pg
        .psql("busy", "SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    assert!(
        copied > 0 && copied < now,
        "the backup should hold some but not all of the transactions: {copied} of {now}"
    );
}

#[test]
fn pg_dump_failures_publish_nothing() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("shop", 1);
    let s = Scratch::new();
    s.run(&["backup", &pg.url("shop"), "backups"]).ok();
    let catalog = entries(&s, "backups");
    let files = archives(&s, "backups");

    let wrong = pg.url("shop").replace(PASSWORD, "not-the-password");
    s.run(&["backup", &wrong, "backups"]).fails_with(&[
        "pg_dump failed",
        "password authentication failed",
        "nothing was kept",
    ]);
    s.run(&["backup", &pg.url("nosuchdb"), "backups"])
        .fails_with(&["pg_dump failed", "\"nosuchdb\" does not exist"]);
    // No pg_dump at all: the package to install is named.
    let empty = s.path("no-pg-bin");
    std::fs::create_dir_all(&empty).unwrap();
    s.cmd(&["backup", &pg.url("shop"), "backups"])
        .env("CAIRN_PG_BIN", &empty)
        .output()
        .map(cairn_e2e::Run::from)
        .unwrap()
        .fails_with(&["pg_dump not found", "apt-get install postgresql-client"]);
    // A URL cairn cannot use is named, without its password.
    let bad = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/shop?foo=1",
        pg.port
    );
    let r = s
        .run(&["backup", &bad, "backups"])
        .fails_with(&["\"foo\" is not supported"]);
    assert!(!r.stderr.contains(PASSWORD), "{}", r.stderr);

    assert_eq!(entries(&s, "backups"), catalog);
    assert_eq!(archives(&s, "backups"), files);

    // The password in PGPASSWORD works as well as in the URL.
    s.cmd(&["backup", &pg.url_no_password("shop"), "backups"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .map(cairn_e2e::Run::from)
        .unwrap()
        .ok();
    assert_eq!(entries(&s, "backups").len(), 2);
}

/// The PID of the `pg_dump` child of `parent`, once it exists.
fn find_child(parent: u32, name: &str, deadline: Instant) -> Option<u32> {
    while Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let comm = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')'));
            let Some((comm, rest)) = comm else { continue };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if comm == name && ppid == Some(parent) {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Bytes a process has written so far (/proc/PID/io).
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("wchar:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

#[test]
fn pg_dump_killed_mid_stream_publishes_nothing() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("big", 5);
    let s = Scratch::new();
    s.run(&["backup", &pg.url("big"), "backups"]).ok();
    let catalog = entries(&s, "backups");
    let files = archives(&s, "backups");

    // Level 9 keeps cairn the slow end of the pipe, so pg_dump is mid-stream
    // for seconds.
    let cairn = s
        .cmd(&["backup", &pg.url("big"), "backups", "--level", "9"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let dump = find_child(
        cairn.id(),
        "pg_dump",
        Instant::now() + Duration::from_secs(20),
    )
    .expect("cairn should run pg_dump");
    let cmdline = std::fs::read(format!("/proc/{dump}/cmdline")).unwrap();
    assert!(
        !cmdline
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()),
        "the password must not be on pg_dump's command line: {}",
        String::from_utf8_lossy(&cmdline)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while written(dump) < 4 << 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        written(dump) >= 4 << 20,
        "pg_dump should have streamed 4 MiB by now"
    );
    // SAFETY: kill(2) on the PID of a running child of our child.
    unsafe { libc::kill(dump as libc::pid_t, libc::SIGKILL) };
    let out = cairn.wait_with_output().unwrap();
    cairn_e2e::Run::from(out).fails_with(&[
        "pg_dump failed (killed by signal 9 (SIGKILL))",
        "nothing was kept",
    ]);
    assert_eq!(entries(&s, "backups"), catalog);
    assert_eq!(archives(&s, "backups"), files);
}

/// A cairn archive (gzip container) whose plaintext is `text`.
fn archive_of(text: &[u8], id_byte: u8) -> Vec<u8> {
    let mut enc = cairn_core::Encoder::new(cairn_core::WriterParams {
        archive_id: [id_byte; 16],
        source: cairn_core::SourceKind::File,
        db_name: "legacy.sql".into(),
        created_at_ms: 1_795_000_000_000 + i64::from(id_byte),
        page_size: 0,
        chunk_size: 1 << 20,
        compression: cairn_core::Compression::Deflate { level: 6 },
        encryption: None,
    })
    .unwrap();
    let mut bytes = enc.push(text).unwrap();
    bytes.extend(enc.finish().unwrap().0);
    bytes
}

/// Puts an archive made elsewhere into `backups` and adopts it into the
/// catalog; returns its id.
fn import(s: &Scratch, text: &[u8], id_byte: u8) -> String {
    let id = format!("20261124T10000{}Z-5a5a5a{id_byte:02x}", id_byte % 10);
    std::fs::write(
        s.path(&format!("backups/snapshots/{id}.db.gz")),
        archive_of(text, id_byte),
    )
    .unwrap();
    s.run(&["repair", "backups", "--adopt"]).ok();
    id
}

#[test]
fn restore_sniffs_what_the_archive_holds() {
    let Some(pg) = PgServer::start() else { return };
    let s = Scratch::new();
    s.make_db("app.db", 200);
    s.run(&["backup", "app.db", "backups"]).ok();

    // A SQLite archive is refused, and --create creates nothing.
    s.run(&[
        "restore",
        "backups",
        "--to",
        &pg.url("fromsqlite"),
        "--create",
    ])
    .fails_with(&["holds a SQLite database, not a PostgreSQL dump", "-o PATH"]);
    assert!(!pg.database_exists("fromsqlite"));

    // Plain SQL (imported from elsewhere) runs only with --allow-sql-fallback.
    let sql = import(
        &s,
        b"-- a plain dump\nCREATE TABLE t(x int);\nINSERT INTO t VALUES (1), (2), (3);\n",
        0x51,
    );
    s.run(&[
        "restore",
        "backups",
        "--id",
        &sql,
        "--to",
        &pg.url("fromsql"),
        "--create",
    ])
    .fails_with(&["plain SQL text", "--allow-sql-fallback"]);
    assert!(!pg.database_exists("fromsql"));
    let r = s
        .run(&[
            "restore",
            "backups",
            "--id",
            &sql,
            "--to",
            &pg.url("fromsql"),
            "--create",
            "--allow-sql-fallback",
        ])
        .ok();
    assert!(r.stderr.contains("with psql (SQL text"), "{}", r.stderr);
    assert_eq!(pg.psql("fromsql", "SELECT sum(x) FROM t"), "6");

    // SQL that fails half-way leaves nothing (one transaction), and the
    // database --create made is dropped again.
    let bad = import(
        &s,
        b"CREATE TABLE u(x int);\nINSERT INTO u VALUES (1);\nSELECT no_such_function();\n",
        0x52,
    );
    s.run(&[
        "restore",
        "backups",
        "--id",
        &bad,
        "--to",
        &pg.url("fromsql"),
        "--allow-sql-fallback",
    ])
    .fails_with(&["psql failed", "no_such_function"]);
    assert_eq!(
        pg.psql(
            "fromsql",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'u'"
        ),
        "0"
    );
    s.run(&[
        "restore",
        "backups",
        "--id",
        &bad,
        "--to",
        &pg.url("again"),
        "--create",
        "--allow-sql-fallback",
    ])
    .fails_with(&["psql failed", "was dropped again"]);
    assert!(!pg.database_exists("again"));
}

#[test]
fn damaged_postgres_archive_restores_nothing() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("shop", 1);
    let s = Scratch::new();
    // Small chunks: the damage lands well after pg_restore has started.
    s.run(&["backup", &pg.url("shop"), "backups", "--chunk-size", "64K"])
        .ok();
    let object = s.latest_object("backups");
    let path = s.path(&format!("backups/{object}"));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();

    pg.createdb("target");
    s.run(&["restore", "backups", "--to", &pg.url("target")])
        .fails_with(&["damaged", "nothing was restored"]);
    assert_eq!(
        pg.psql(
            "target",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0",
        "a damaged archive must restore no table at all"
    );
    s.run(&["verify", "backups"])
        .fails_with(&["failed verification"]);
}

#[test]
fn postgres_and_sqlite_share_a_destination() {
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("shop", 1);
    let s = Scratch::new();
    s.make_db("app.db", 500);
    s.run(&["backup", "app.db", "shared"]).ok();
    s.run(&["backup", &pg.url("shop"), "shared"]).ok();
    std::thread::sleep(Duration::from_millis(1100));
    s.run(&["backup", "app.db", "shared"]).ok();
    s.run(&["backup", &pg.url("shop"), "shared"]).ok();

    let r = s.run(&["list", "shared", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let newest = v["newest"].as_object().unwrap();
    assert_eq!(newest.len(), 2, "{v}");
    assert!(newest.contains_key("app.db") && newest.contains_key(&pg.catalog_name("shop")));
    assert_eq!(v["backups"].as_array().unwrap().len(), 4);

    // One retention run judges each database on its own.
    s.run(&["prune", "shared", "--keep-last", "1"]).ok();
    let left = entries(&s, "shared");
    assert_eq!(left.len(), 2, "{left:?}");
    let sources: Vec<&str> = left.iter().map(|e| e["source"].as_str().unwrap()).collect();
    assert!(sources.contains(&"sqlite") && sources.contains(&"postgres"));
    assert_eq!(archives(&s, "shared").len(), 2);

    s.run(&["verify", "shared", "--all"]).ok();
    s.run(&["restore", "shared", "--db", "app.db", "-o", "back.db"])
        .ok();
    assert_eq!(cairn_e2e::count_rows(&s.path("back.db")), 500);
    s.run(&[
        "restore",
        "shared",
        "--db",
        &pg.catalog_name("shop"),
        "--to",
        &pg.url("shop2"),
        "--create",
    ])
    .ok();
    assert_eq!(fingerprint(&pg, "shop2"), fingerprint(&pg, "shop"));
}
