//! Unit tests of the config validator: every problem, each with its path.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn parse_in(dir: &Path, text: &str) -> Result<Config, Problems> {
    parse(text, &dir.join("cairn.toml"))
}

fn problems(text: &str) -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    match parse_in(d.path(), text) {
        Ok(_) => vec![],
        Err(p) => p.list.iter().map(|p| p.to_string()).collect(),
    }
}

fn has(list: &[String], needle: &str) {
    assert!(
        list.iter().any(|p| p.contains(needle)),
        "no problem contains {needle:?}:\n{}",
        list.join("\n")
    );
}

const GOOD: &str = r#"
[daemon]
log_level = "debug"
log_format = "json"
max_parallel = 3
shutdown_grace = "30s"
state_dir = "state"
metrics_listen = "127.0.0.1:9477"

[notifications.mail]
type = "email"
on = "both"
host = "smtp.example.com"
tls = "implicit"
username = "cairn"
password = "${CAIRN_TEST_SMTP_PASSWORD:-pa$word}"
from = "cairn <cairn@example.com>"
to = ["ops@example.com"]

[notifications.hook]
type = "webhook"
url = "https://hooks.example.com/x"
headers = { Authorization = "Bearer t0k3n" }

[[databases]]
name = "app"
source = "app.db"
destinations = ["backups", "s3://bucket/app?endpoint=http://127.0.0.1:9000"]
schedule = { cron = "0 3 * * *", timezone = "Europe/Paris" }
level = 9
timeout = "10m"
lock_timeout = "5s"
notify = ["hook"]
retention = { keep_daily = 7, keep_within = "2d", max_age = "90d" }
verify = { every = "7d", timeout = "5m" }

[[databases]]
name = "pg"
source = { type = "postgres", host = "db", database = "shop", user = "backup", password = "s3cret", sslmode = "require" }
destinations = ["/var/backups/pg"]
schedule = { every = "24h", start = "2026-07-01T10:00:00Z" }
"#;

#[test]
fn a_good_config_reads_fully() {
    let d = tempfile::tempdir().unwrap();
    let c = parse_in(d.path(), GOOD).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.max_parallel, 3);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.state_dir, d.path().join("state"));
    assert_eq!(c.routes.len(), 2);
    let mail = c.routes.iter().find(|r| r.name == "mail").unwrap();
    assert!(mail.on_success && mail.on_failure);
    let RouteKind::Email(s) = &mail.kind else {
        panic!()
    };
    assert_eq!((s.port, s.tls), (465, Tls::Implicit));
    assert_eq!(s.password.as_ref().unwrap().expose(), "pa$word");
    let app = &c.databases[0];
    assert_eq!(
        app.destinations[0],
        d.path().join("backups").display().to_string()
    );
    assert_eq!(app.level, 9);
    assert_eq!(app.lock_timeout, Duration::from_secs(5));
    assert_eq!(app.notify, vec!["hook"]);
    assert_eq!(app.retention.as_ref().unwrap().keep_daily, Some(7));
    assert_eq!(
        app.retention.as_ref().unwrap().keep_within_ms,
        Some(2 * 86_400_000)
    );
    assert!(app.verify.is_some());
    let pg = &c.databases[1];
    assert_eq!(
        pg.lock_timeout,
        crate::sources::sqlite::DEFAULT_LOCK_TIMEOUT
    );
    assert!(matches!(&pg.source, Source::Postgres(p) if p.port == 5432 && p.database == "shop"));
    // Routes default to all, failure only.
    assert_eq!(pg.notify.len(), 2);
    let hook = c.routes.iter().find(|r| r.name == "hook").unwrap();
    assert!(!hook.on_success && hook.on_failure);
}

#[test]
fn secrets_never_show_in_debug_output() {
    let d = tempfile::tempdir().unwrap();
    let c = parse_in(d.path(), GOOD).unwrap();
    let dbg = format!("{c:?}");
    for secret in ["pa$word", "t0k3n", "s3cret"] {
        assert!(!dbg.contains(secret), "{secret} leaked: {dbg}");
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let p = problems(
        r#"
bogus = 1
[daemon]
log_format = "xml"
max_parallel = 0
metrics_listen = "0.0.0.0:9477"
[notifications.mail]
type = "email"
username = "u"
[notifications.hook]
type = "webhook"
url = "ftp://x"
extra = true
[[databases]]
name = "app"
source = "app.db"
destinations = ["/b", "s4://bucket/x", "s3://${CAIRN_TEST_UNSET_BUCKET}/x"]
schedule = { cron = "0 3 * *" }
keep_daily = 7
retention = { keep_daily = -1 }
notify = ["pager"]
[[databases]]
name = "app"
source = "b.db"
destinations = ["/b"]
schedule = { every = "soon" }
timeout = "forever"
lock_timeout = "a while"
level = 12
"#,
    );
    for needle in [
        "bogus: unknown key",
        "daemon.log_format: \"xml\" is not a format",
        "daemon.max_parallel: 0 is out of range",
        "daemon.metrics_listen: 0.0.0.0:9477 is not a loopback address",
        "notifications.mail.password: missing: username is set",
        "notifications.mail.host: missing",
        "notifications.mail.from: missing",
        "notifications.mail.to: missing",
        "notifications.hook.url: scheme \"ftp\" is not http or https",
        "notifications.hook.extra: unknown key",
        "databases[0].destinations[1]: destination s4://bucket/x: unknown scheme \"s4\"",
        "databases[0].destinations[2]: environment variable CAIRN_TEST_UNSET_BUCKET is not set",
        "databases[0].schedule.cron: \"0 3 * *\" has 4 fields",
        "databases[0].keep_daily: unknown key",
        "databases[0].retention.keep_daily: -1 is out of range",
        "databases[0].notify[0]: no notification route named \"pager\"",
        "databases[1].name: \"app\" is already the name of databases[0]",
        "databases[1].schedule.every: \"soon\" is not a duration",
        "databases[1].timeout: \"forever\" is not a duration",
        "databases[1].lock_timeout: \"a while\" is not a duration",
        "databases[1].level: 12 is out of range",
    ] {
        has(&p, needle);
    }
}

#[test]
fn missing_sections_and_bad_toml() {
    has(&problems(""), "databases: no databases");
    has(
        &problems("[[databases]]\nname = \"x\""),
        "databases[0].source: missing",
    );
    has(
        &problems("[[databases]]\nname = \"x\""),
        "databases[0].destinations: missing",
    );
    has(
        &problems("[[databases]]\nname = \"x\""),
        "databases[0].schedule: missing",
    );
    has(&problems("[daemon\n"), "not valid TOML");
    has(
        &problems(
            "[[databases]]\nname=\"a\"\nsource=\"a.db\"\ndestinations=[\"/b\"]\nschedule={every=\"1h\", cron=\"* * * * *\"}",
        ),
        "databases[0].schedule: give either cron or every",
    );
    has(
        &problems(
            "[[databases]]\nname=\"a\"\nsource=\"a.db\"\ndestinations=[\"/b\"]\nschedule={cron=\"* * * * *\", timezone=\"Mars/Base\"}",
        ),
        "databases[0].schedule.timezone: unknown time zone",
    );
    has(
        &problems(
            "[[databases]]\nname=\"a\"\nsource={type=\"mysql\"}\ndestinations=[\"/b\"]\nschedule={every=\"1h\"}",
        ),
        "databases[0].source.type: unknown source type \"mysql\"",
    );
    has(
        &problems(
            "[[databases]]\nname=\"a\"\nsource={type=\"postgres\", host=\"h\"}\ndestinations=[\"/b\"]\nschedule={every=\"1h\"}",
        ),
        "databases[0].source.database: missing",
    );
    has(
        &problems(
            "[[databases]]\nname=\"a\"\nsource=\"a.db\"\ndestinations=[\"/b\"]\nschedule={every=\"1h\"}\nretention={}",
        ),
        "databases[0].retention: invalid retention policy",
    );
}

#[test]
fn key_files_must_exist_and_be_private() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("app.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = |k: &str| {
        format!(
            "[[databases]]\nname=\"a\"\nsource=\"a.db\"\ndestinations=[\"/b\"]\nschedule={{every=\"1h\"}}\n{k}\n"
        )
    };
    let list = |t: String| -> Vec<String> {
        match parse_in(d.path(), &t) {
            Ok(_) => vec![],
            Err(p) => p.list.iter().map(|p| p.to_string()).collect(),
        }
    };
    has(
        &list(cfg("key_file = \"app.key\"")),
        "databases[0].key_file: ",
    );
    has(&list(cfg("key_file = \"app.key\"")), "has mode 0644");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(list(cfg("key_file = \"app.key\"")).is_empty());
    has(
        &list(cfg("key_file = \"nope.key\"")),
        "databases[0].key_file: cannot read",
    );
    std::fs::write(&key, "not a key\n").unwrap();
    has(
        &list(cfg("key_file = \"app.key\"")),
        "databases[0].key_file: key file",
    );
    has(
        &list(cfg("key_env = \"CAIRN_TEST_UNSET_KEY\"")),
        "databases[0].key_env: environment variable CAIRN_TEST_UNSET_KEY is not set",
    );
    has(
        &list(cfg("key_file = \"app.key\"\nkey_env = \"X\"")),
        "give only one of key_file",
    );
}

#[test]
fn smtp_settings_must_be_complete() {
    let base = "[[databases]]\nname=\"a\"\nsource=\"a.db\"\ndestinations=[\"/b\"]\nschedule={every=\"1h\"}\n";
    let p = problems(&format!(
        "{base}[notifications.m]\ntype=\"email\"\nhost=\"h\"\ntls=\"ssl\"\nfrom=\"not an address\"\nto=[\"ok@example.com\", \"nope\"]\npassword=\"p\"\non=[\"sometimes\"]\n"
    ));
    has(&p, "notifications.m.tls: \"ssl\" is not a TLS mode");
    has(
        &p,
        "notifications.m.from: \"not an address\" is not an address",
    );
    has(
        &p,
        "notifications.m.to[1]: \"nope\" is not an email address",
    );
    has(&p, "notifications.m.username: missing: password is set");
    has(&p, "notifications.m.on: must be");
}

#[test]
fn replicate_needs_a_sqlite_database_in_wal_mode() {
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal.db");
    let c = rusqlite::Connection::open(&wal).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
        .unwrap();
    drop(c);
    let rollback = d.path().join("rollback.db");
    let c = rusqlite::Connection::open(&rollback).unwrap();
    c.execute_batch("CREATE TABLE t(x);").unwrap();
    drop(c);
    let db = |source: &str, replicate: &str| {
        format!(
            "[[databases]]\nname = \"a\"\nsource = {source}\ndestinations = [\"/b\"]\nschedule = {{ every = \"1h\" }}\nreplicate = {replicate}\n"
        )
    };
    let cfg = parse_in(d.path(), &db("\"wal.db\"", "true")).unwrap();
    assert!(cfg.databases[0].replicate);
    let cfg = parse_in(d.path(), &db("\"rollback.db\"", "false")).unwrap();
    assert!(!cfg.databases[0].replicate);
    let msg = |t: String| match parse_in(d.path(), &t) {
        Ok(_) => panic!("accepted: {t}"),
        Err(p) => p.list.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    };
    let l = msg(db("\"rollback.db\"", "true"));
    has(&l, "databases[0].replicate: ");
    has(&l, "is not in WAL mode");
    has(&l, "PRAGMA journal_mode=WAL");
    let l = msg(db(
        "{ type = \"postgres\", host = \"h\", database = \"d\", user = \"u\" }",
        "true",
    ));
    has(
        &l,
        "databases[0].replicate: continuous replication is for SQLite",
    );
    let l = msg(db("\"wal.db\"", "\"yes\""));
    has(&l, "databases[0].replicate: must be true or false");
}

#[test]
fn codec_defaults_by_encryption_and_levels_follow_the_codec() {
    let db = |extra: &str| {
        format!(
            "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"b\"]\nschedule = {{ every = \"24h\" }}\n{extra}\n"
        )
    };
    let d = tempfile::tempdir().unwrap();
    let c = parse_in(d.path(), &db("")).unwrap();
    assert_eq!(
        (c.databases[0].codec, c.databases[0].level),
        (crate::backup::Codec::Gzip, 6)
    );
    let key = d.path().join("app.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = parse_in(d.path(), &db("key_file = \"app.key\"")).unwrap();
    assert_eq!(
        (c.databases[0].codec, c.databases[0].level),
        (crate::backup::Codec::Zstd, 3)
    );
    let c = parse_in(d.path(), &db("codec = \"zstd\"\nlevel = 19")).unwrap();
    assert_eq!(c.databases[0].level, 19);
    has(
        &problems(&db("codec = \"lz4\"")),
        "databases[0].codec: \"lz4\" is not a codec: use gzip or zstd",
    );
    has(
        &problems(&db("codec = \"zstd\"\nlevel = 0")),
        "databases[0].level: 0 is out of range for zstd",
    );
    has(
        &problems(&db("level = 12")),
        "databases[0].level: 12 is out of range for gzip",
    );
}

#[test]
fn replication_settings_and_directories() {
    let d = tempfile::tempdir().unwrap();
    let text = r#"
[notifications.hook]
type = "webhook"
url = "https://hooks.example.com/x"

[[databases]]
name = "app"
source = "app.db"
destinations = ["backups"]
schedule = { every = "24h" }
replicate = true
interval = "20ms"
wal_limit = "8MiB"

[[directories]]
name = "tenants"
dir = "dbs"
destinations = ["replica"]
scan_interval = "5s"
snapshot_interval = "1h"
"#;
    let c = parse_in(d.path(), text).unwrap();
    let t = &c.databases[0].tuning;
    assert_eq!(t.interval, Some(Duration::from_millis(20)));
    assert_eq!(t.wal_limit, Some(8 << 20));
    assert_eq!(t.snapshot_interval, None);
    let dir = &c.directories[0];
    assert_eq!(dir.dir, d.path().join("dbs"));
    assert_eq!(dir.pattern, "*.db");
    assert_eq!(dir.scan_interval, Duration::from_secs(5));
    assert_eq!(dir.notify, ["hook"]);
    assert_eq!(
        dir.tuning.snapshot_interval,
        Some(Duration::from_secs(3600))
    );
    // Directories alone are a configuration.
    parse_in(
        d.path(),
        "[[directories]]\nname = \"t\"\ndir = \"dbs\"\ndestinations = [\"r\"]\n",
    )
    .unwrap();

    let p = problems(
        "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"b\"]\nschedule = { every = \"1h\" }\ninterval = \"1s\"\n\n[[directories]]\nname = \"app\"\ndestinations = [\"r\"]\npattern = \"a/*.db\"\nwal_limit = \"lots\"\nlease_ttl = \"1s\"\nlevel = 0\nbogus = 1\n",
    );
    has(
        &p,
        "databases[0].interval: replication settings (interval) apply with replicate = true only",
    );
    has(&p, "directories[0].dir: missing");
    has(&p, "directories[0].pattern:");
    has(&p, "directories[0].wal_limit:");
    has(&p, "directories[0].lease_ttl: must be at least 2s");
    has(&p, "directories[0].level: 0 is out of range for zstd");
    has(&p, "directories[0].bogus: unknown key");
    let p = problems(
        "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"b\"]\nschedule = { every = \"1h\" }\n\n[[directories]]\nname = \"app\"\ndir = \"d\"\ndestinations = [\"r\"]\n",
    );
    has(&p, "directories[0].name: \"app\" is already the name");
}

#[test]
fn directories_take_codec_and_level_like_databases() {
    let dir = |extra: &str| {
        format!("[[directories]]\nname = \"t\"\ndir = \"dbs\"\ndestinations = [\"r\"]\n{extra}\n")
    };
    let d = tempfile::tempdir().unwrap();
    // Unset: the replicator's defaults (zstd, with or without a key).
    let c = parse_in(d.path(), &dir("")).unwrap();
    assert_eq!(
        (c.directories[0].codec, c.directories[0].level),
        (None, None)
    );
    let c = parse_in(d.path(), &dir("codec = \"gzip\"\nlevel = 9")).unwrap();
    assert_eq!(
        (c.directories[0].codec, c.directories[0].level),
        (Some(crate::backup::Codec::Gzip), Some(9))
    );
    let c = parse_in(d.path(), &dir("level = 19")).unwrap();
    assert_eq!(c.directories[0].level, Some(19));
    // The same messages as [[databases]].
    has(
        &problems(&dir("codec = \"lz4\"")),
        "directories[0].codec: \"lz4\" is not a codec: use gzip or zstd",
    );
    has(
        &problems(&dir("codec = \"gzip\"\nlevel = 12")),
        "directories[0].level: 12 is out of range for gzip",
    );
    has(
        &problems(&dir("level = 0")),
        "directories[0].level: 0 is out of range for zstd",
    );
    has(&problems(&dir("level = 20")), "directories[0].level:");
    has(&problems(&dir("codec = 3")), "directories[0].codec:");
}

#[test]
fn a_replicating_database_uses_zstd_unless_told_otherwise() {
    let db = |extra: &str| {
        format!(
            "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"b\"]\nschedule = {{ every = \"24h\" }}\n{extra}\n"
        )
    };
    let d = tempfile::tempdir().unwrap();
    // A WAL-mode database, so that `replicate = true` is accepted.
    let conn = rusqlite::Connection::open(d.path().join("app.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    drop(conn);
    let replica = |extra: &str| {
        let c = parse_in(d.path(), &db(&format!("replicate = true\n{extra}"))).unwrap();
        let r = crate::daemon::replication::config_for(&c.databases[0], None).unwrap();
        let (base, small) = r
            .options(crate::replicate::LogTo::Tracing)
            .map(|o| (o.compression, o.small_segments))
            .unwrap();
        (c.databases[0].codec, base, small)
    };
    use crate::backup::Codec;
    use cairn_core::Compression::{Deflate, Zstd};
    // Backups stay gzip without a key; the replica is zstd.
    assert_eq!(
        replica(""),
        (Codec::Gzip, Zstd { level: 3 }, Zstd { level: 19 })
    );
    assert_eq!(
        replica("codec = \"gzip\""),
        (Codec::Gzip, Deflate { level: 6 }, Deflate { level: 6 })
    );
    // A level alone keeps the codec it was checked against.
    assert_eq!(
        replica("level = 9"),
        (Codec::Gzip, Deflate { level: 9 }, Deflate { level: 9 })
    );
    assert_eq!(
        replica("codec = \"zstd\"\nlevel = 7"),
        (Codec::Zstd, Zstd { level: 7 }, Zstd { level: 7 })
    );
}
