//! `cairn.toml`: the daemon's one config file, read into [`Config`] with
//! every problem collected (each with its path, e.g.
//! `databases[1].destinations[0]: …`) instead of stopping at the first.
//!
//! The file is walked as a TOML table rather than deserialized with serde:
//! serde stops at the first error, and `cairn config check` must report
//! them all. Unknown keys are still errors, as with `deny_unknown_fields`.
//! Every field is documented in docs/CONFIG.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_core::retention::Policy;

use super::expand::{Secret, expand_env};
use super::schedule::Schedule;
use crate::keys::KeyArgs;
use crate::storage::Location;

/// One problem in the config: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone)]
pub struct Problems {
    pub file: PathBuf,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.list {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (relative paths in it are from its directory).
    pub file: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub max_parallel: usize,
    pub shutdown_grace: Duration,
    pub state_dir: PathBuf,
    pub temp_dir: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub routes: Vec<Route>,
    pub databases: Vec<Database>,
    pub directories: Vec<Directory>,
}

#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub source: Source,
    /// Destination URLs, `${VAR}`-expanded; relative directories made absolute.
    pub destinations: Vec<String>,
    pub schedule: Schedule,
    /// The compression level, given or the codec's default.
    pub level: u8,
    /// `codec`, or its default: zstd when the database has a key, else gzip.
    pub codec: crate::backup::Codec,
    pub key: KeyArgs,
    pub retention: Option<Policy>,
    pub timeout: Duration,
    /// How long a backup waits for another process's lock on a SQLite file.
    pub lock_timeout: Duration,
    /// Names of the notification routes this database reports to.
    pub notify: Vec<String>,
    pub verify: Option<Drill>,
    /// `replicate = true`: the daemon also runs a continuous replicator
    /// for this (SQLite, WAL-mode) database into its destinations.
    pub replicate: bool,
    /// The replicator's settings given here (the rest: `cairn replicate`'s defaults).
    pub tuning: Tuning,
    /// The replicator's codec and level: `codec` and `level` as given
    /// (`level` alone: with the backups' codec, which it was checked
    /// against); neither: the replicator's default (zstd, §13.3).
    pub replica_codec: Option<crate::backup::Codec>,
    pub replica_level: Option<u8>,
}

/// A replicator's settings a `[[databases]]` (with `replicate = true`) or
/// `[[directories]]` entry may give; unset ones keep `cairn replicate`'s
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    pub interval: Option<Duration>,
    pub snapshot_interval: Option<Duration>,
    pub wal_limit: Option<u64>,
    pub lease_ttl: Option<Duration>,
}

/// `[[directories]]`: every SQLite database (in WAL mode) of a directory
/// whose file name matches `pattern`, replicated continuously; new ones
/// picked up, removed ones stopped (`cairn replicate --dir`).
#[derive(Debug, Clone)]
pub struct Directory {
    /// Its databases are named `NAME/FILE` in logs, metrics, notifications and status.
    pub name: String,
    pub dir: PathBuf,
    pub pattern: String,
    pub scan_interval: Duration,
    pub destinations: Vec<String>,
    /// `codec` and `level` as given; unset: the replicator's defaults
    /// (zstd-3, zstd-19 for small segments).
    pub codec: Option<crate::backup::Codec>,
    pub level: Option<u8>,
    pub key: KeyArgs,
    pub notify: Vec<String>,
    pub tuning: Tuning,
}

#[derive(Debug, Clone)]
pub enum Source {
    Sqlite(PathBuf),
    Postgres(PgConfig),
}

/// A PostgreSQL source (backed up through `sources::postgres::PgSource`).
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<Secret>,
    pub sslmode: Option<String>,
}

impl Source {
    /// The name the backups carry in the destination's catalog.
    pub fn catalog_name(&self) -> String {
        match self {
            Source::Sqlite(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Postgres(pg) => pg.source().display_name(),
        }
    }

    /// What `backup::run` reads.
    pub fn backup_source(&self) -> crate::sources::Source {
        match self {
            Source::Sqlite(p) => crate::sources::Source::Sqlite(p.clone()),
            Source::Postgres(pg) => crate::sources::Source::Postgres(pg.source()),
        }
    }
}

impl PgConfig {
    pub fn source(&self) -> crate::sources::PgSource {
        crate::sources::PgSource {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_string()),
            sslmode: self.sslmode.clone(),
        }
    }
}

/// A restore drill: verify the newest backup of each destination.
#[derive(Debug, Clone)]
pub struct Drill {
    pub schedule: Schedule,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub on_success: bool,
    pub on_failure: bool,
    pub timeout: Duration,
    pub retries: u32,
    pub kind: RouteKind,
}

#[derive(Debug, Clone)]
pub enum RouteKind {
    Webhook {
        /// May hold a token, so it is a secret too.
        url: Secret,
        headers: Vec<(String, Secret)>,
    },
    Email(Smtp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain, then STARTTLS (port 587); refuses a server without it.
    Starttls,
    /// No TLS at all (a relay on localhost).
    None,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    /// `ca_file`: PEM certificates trusted besides the built-in roots (a
    /// private CA or a self-signed server), read and checked at load.
    pub ca_pem: Option<Vec<u8>>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// Reads and validates a config file. `Err` holds every problem found.
pub fn load(file: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(file).map_err(|e| Problems {
        file: file.to_path_buf(),
        list: vec![Problem {
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(&text, file)
}

/// Validates config text as if read from `file` (relative paths are from
/// its directory). Environment variables come from the process.
pub fn parse(text: &str, file: &Path) -> Result<Config, Problems> {
    parse_with(text, file, false)
}

/// [`parse`], and with `check_sources` also that each SQLite source file
/// exists (`config check`; the daemon itself starts without, since a
/// database may appear later, and its run then fails and notifies).
pub fn parse_with(text: &str, file: &Path, check_sources: bool) -> Result<Config, Problems> {
    let mut errs = Vec::new();
    let cfg = parse_inner(text, file, check_sources, &mut errs);
    match cfg {
        Some(c) if errs.is_empty() => Ok(c),
        _ => Err(Problems {
            file: file.to_path_buf(),
            list: errs,
        }),
    }
}

fn parse_inner(
    text: &str,
    file: &Path,
    check_sources: bool,
    errs: &mut Vec<Problem>,
) -> Option<Config> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            errs.push(Problem {
                path: String::new(),
                message: format!(
                    "not valid TOML: {}",
                    e.to_string().lines().next().unwrap_or("").trim()
                ),
            });
            if let Some(span) = e.span() {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                errs.last_mut().unwrap().message += &format!(" (line {line})");
            }
            return None;
        }
    };
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Absolute, so that logs, status and state keys name real paths.
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    let mut root = Obj::new(String::new(), &table);

    // [daemon]
    let mut log_level = "info".to_string();
    let mut log_format = LogFormat::Text;
    let mut max_parallel = 2usize;
    let mut shutdown_grace = DEFAULT_GRACE;
    let mut state_dir = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("cairn-state"));
    let mut temp_dir = None;
    let mut metrics_listen = None;
    if let Some(mut d) = root.table("daemon", errs) {
        if let Some(l) = d.string("log_level", errs) {
            if tracing_subscriber::EnvFilter::try_new(&l).is_err() || l.trim().is_empty() {
                d.err(
                    "log_level",
                    format!("{l:?} is not a level: use error, warn, info, debug or trace"),
                    errs,
                );
            } else {
                log_level = l;
            }
        }
        if let Some(f) = d.string("log_format", errs) {
            match f.as_str() {
                "text" => log_format = LogFormat::Text,
                "json" => log_format = LogFormat::Json,
                _ => d.err(
                    "log_format",
                    format!("{f:?} is not a format: use \"text\" or \"json\""),
                    errs,
                ),
            }
        }
        if let Some(n) = d.int("max_parallel", 1, 64, errs) {
            max_parallel = n as usize;
        }
        if let Some(g) = d.duration("shutdown_grace", errs) {
            shutdown_grace = g;
        }
        if let Some(p) = d.path("state_dir", &base, errs) {
            state_dir = p;
        }
        temp_dir = d.path("temp_dir", &base, errs);
        if let Some(a) = d.string("metrics_listen", errs) {
            match a.parse::<SocketAddr>() {
                Ok(s) if s.ip().is_loopback() => metrics_listen = Some(s),
                Ok(_) => d.err("metrics_listen", format!("{a} is not a loopback address: the metrics endpoint listens on 127.0.0.1 or [::1] only (put a proxy in front to expose it)"), errs),
                Err(_) => d.err("metrics_listen", format!("{a:?} is not an address like 127.0.0.1:9477"), errs),
            }
        }
        d.finish(errs);
    }

    // [notifications.NAME]
    let mut routes = Vec::new();
    if let Some(n) = root.table("notifications", errs) {
        for (name, v) in n.t {
            let path = format!("notifications.{name}");
            match v.as_table() {
                Some(t) => {
                    if let Some(r) = route(name, Obj::new(path, t), &base, errs) {
                        routes.push(r);
                    }
                }
                None => errs.push(Problem {
                    path,
                    message: "must be a table ([notifications.NAME] with type = \"webhook\" or \"email\")".into(),
                }),
            }
        }
    }

    // [[databases]]
    let mut databases = Vec::new();
    match root.get("databases") {
        None if root.t.contains_key("directories") => {}
        None => errs.push(Problem {
            path: "databases".into(),
            message: "no databases: add at least one [[databases]] table".into(),
        }),
        Some(toml::Value::Array(a)) => {
            let mut names: BTreeMap<String, usize> = BTreeMap::new();
            for (i, v) in a.iter().enumerate() {
                let path = format!("databases[{i}]");
                let Some(t) = v.as_table() else {
                    errs.push(Problem {
                        path,
                        message: "must be a table ([[databases]])".into(),
                    });
                    continue;
                };
                // Names are compared even when the rest of a table is bad.
                if let Some(name) = t.get("name").and_then(|n| n.as_str())
                    && let Some(first) = names.insert(name.to_string(), i)
                {
                    errs.push(Problem {
                        path: format!("{path}.name"),
                        message: format!(
                            "\"{name}\" is already the name of databases[{first}]: names must be unique"
                        ),
                    });
                }
                if let Some(db) = database(Obj::new(path, t), &base, check_sources, &routes, errs) {
                    databases.push(db);
                }
            }
        }
        Some(_) => errs.push(Problem {
            path: "databases".into(),
            message: "must be an array of tables ([[databases]])".into(),
        }),
    }
    // [[directories]]
    let mut directories: Vec<Directory> = Vec::new();
    match root.get("directories") {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                let path = format!("directories[{i}]");
                let Some(t) = v.as_table() else {
                    errs.push(Problem {
                        path,
                        message: "must be a table ([[directories]])".into(),
                    });
                    continue;
                };
                if let Some(d) = directory(Obj::new(path.clone(), t), &base, &routes, errs) {
                    if databases.iter().any(|b: &Database| b.name == d.name)
                        || directories.iter().any(|o| o.name == d.name)
                    {
                        errs.push(Problem {
                            path: format!("{path}.name"),
                            message: format!(
                                "\"{}\" is already the name of a database or directory: names must be unique",
                                d.name
                            ),
                        });
                    }
                    directories.push(d);
                }
            }
        }
        Some(_) => errs.push(Problem {
            path: "directories".into(),
            message: "must be an array of tables ([[directories]])".into(),
        }),
    }
    root.finish(errs);
    Some(Config {
        directories,
        file: file.to_path_buf(),
        log_level,
        log_format,
        max_parallel,
        shutdown_grace,
        state_dir,
        temp_dir,
        metrics_listen,
        routes,
        databases,
    })
}

fn route(name: &str, mut o: Obj<'_>, base: &Path, errs: &mut Vec<Problem>) -> Option<Route> {
    let n0 = errs.len();
    if !valid_name(name) {
        errs.push(Problem {
            path: o.path.clone(),
            message: format!(
                "{name:?} is not a valid route name: use letters, digits, '.', '_' and '-'"
            ),
        });
    }
    let (mut on_success, mut on_failure) = (false, true);
    match o.get("on") {
        None => {}
        Some(v) => {
            let items: Vec<Option<&str>> = match v {
                toml::Value::String(s) => vec![Some(s.as_str())],
                toml::Value::Array(a) => a.iter().map(|x| x.as_str()).collect(),
                _ => vec![None],
            };
            on_failure = false;
            for it in items {
                match it {
                    Some("success") => on_success = true,
                    Some("failure") => on_failure = true,
                    Some("both") => {
                        on_success = true;
                        on_failure = true;
                    }
                    _ => o.err(
                        "on",
                        "must be \"success\", \"failure\", \"both\" or a list of them".to_string(),
                        errs,
                    ),
                }
            }
        }
    }
    let timeout = o.duration("timeout", errs).unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    let retries = o
        .int("retries", 0, 10, errs)
        .map_or(DEFAULT_RETRIES, |n| n as u32);
    let kind = match o.string("type", errs).as_deref() {
        Some("webhook") => webhook(&mut o, errs),
        Some("email") => email(&mut o, base, errs),
        Some(other) => {
            o.err(
                "type",
                format!("unknown route type {other:?}: use \"webhook\" or \"email\""),
                errs,
            );
            None
        }
        None => {
            o.err(
                "type",
                "missing: set type = \"webhook\" or \"email\"".into(),
                errs,
            );
            None
        }
    };
    o.finish(errs);
    let kind = kind?;
    (errs.len() == n0).then(|| Route {
        name: name.to_string(),
        on_success,
        on_failure,
        timeout,
        retries,
        kind,
    })
}

fn webhook(o: &mut Obj<'_>, errs: &mut Vec<Problem>) -> Option<RouteKind> {
    let url = o.required_expanded("url", errs);
    if let Some(u) = &url {
        match url::Url::parse(u) {
            Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
            Ok(p) => o.err(
                "url",
                format!("scheme \"{}\" is not http or https", p.scheme()),
                errs,
            ),
            // The URL may hold a token: the message does not repeat it.
            Err(e) => o.err("url", format!("not a valid URL ({e})"), errs),
        }
    }
    let mut headers = Vec::new();
    if let Some(h) = o.table("headers", errs) {
        for (k, v) in h.t {
            let path = format!("{}.{k}", h.path);
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
            {
                errs.push(Problem {
                    path: path.clone(),
                    message: format!("{k:?} is not a valid HTTP header name"),
                });
            }
            match v.as_str() {
                Some(s) => match expand_env(s) {
                    Ok(x) => headers.push((k.clone(), Secret::new(x))),
                    Err(e) => errs.push(Problem { path, message: e }),
                },
                None => errs.push(Problem {
                    path,
                    message: "must be a string".into(),
                }),
            }
        }
    }
    Some(RouteKind::Webhook {
        url: Secret::new(url?),
        headers,
    })
}

fn email(o: &mut Obj<'_>, base: &Path, errs: &mut Vec<Problem>) -> Option<RouteKind> {
    let host = o.required_expanded("host", errs);
    let tls = match o.string("tls", errs).as_deref() {
        None | Some("starttls") => Tls::Starttls,
        Some("implicit") => Tls::Implicit,
        Some("none") => Tls::None,
        Some(t) => {
            o.err("tls", format!("{t:?} is not a TLS mode: use \"implicit\" (port 465), \"starttls\" (587) or \"none\""), errs);
            Tls::Starttls
        }
    };
    let port = o.int("port", 1, 65535, errs).map_or(
        match tls {
            Tls::Implicit => 465,
            Tls::Starttls => 587,
            Tls::None => 25,
        },
        |p| p as u16,
    );
    let username = o.expanded("username", errs);
    let password = o.expanded("password", errs).map(Secret::new);
    let ca_pem = o.path("ca_file", base, errs).and_then(|p| {
        let read = std::fs::read(&p)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
            .and_then(|b| {
                // lettre takes any bytes here (rustls parses them only when
                // connecting), so look for a certificate block first.
                let has_cert = b.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----");
                has_cert
                    .then_some(())
                    .and_then(|()| lettre::transport::smtp::client::Certificate::from_pem(&b).ok())
                    .map(|_| b)
                    .ok_or_else(|| format!("{} holds no PEM certificate", p.display()))
            });
        match read {
            Ok(b) if tls == Tls::None => {
                o.err(
                    "ca_file",
                    "applies to tls = \"implicit\" or \"starttls\" only".into(),
                    errs,
                );
                Some(b)
            }
            Ok(b) => Some(b),
            Err(e) => {
                o.err("ca_file", e, errs);
                None
            }
        }
    });
    match (&username, &password) {
        (Some(_), None) => o.err(
            "password",
            "missing: username is set, so SMTP AUTH needs a password too".into(),
            errs,
        ),
        (None, Some(_)) => o.err(
            "username",
            "missing: password is set, so SMTP AUTH needs a username too".into(),
            errs,
        ),
        _ => {}
    }
    let from = o.required_expanded("from", errs);
    if let Some(f) = &from
        && f.parse::<lettre::message::Mailbox>().is_err()
    {
        o.err(
            "from",
            format!("{f:?} is not an address like \"cairn <cairn@example.com>\""),
            errs,
        );
    }
    let mut to = Vec::new();
    match o.strings("to", errs) {
        None => o.err(
            "to",
            "missing: give at least one recipient, to = [\"ops@example.com\"]".into(),
            errs,
        ),
        Some(list) if list.is_empty() => {
            o.err("to", "is empty: give at least one recipient".into(), errs)
        }
        Some(list) => {
            for (i, s) in list {
                match expand_env(&s) {
                    Ok(x) if x.parse::<lettre::message::Mailbox>().is_ok() => to.push(x),
                    Ok(x) => errs.push(Problem {
                        path: format!("{}.to[{i}]", o.path),
                        message: format!("{x:?} is not an email address"),
                    }),
                    Err(e) => errs.push(Problem {
                        path: format!("{}.to[{i}]", o.path),
                        message: e,
                    }),
                }
            }
        }
    }
    Some(RouteKind::Email(Smtp {
        host: host?,
        port,
        tls,
        username,
        password,
        from: from?,
        to,
        ca_pem,
    }))
}

fn database(
    mut o: Obj<'_>,
    base: &Path,
    check_sources: bool,
    routes: &[Route],
    errs: &mut Vec<Problem>,
) -> Option<Database> {
    let n0 = errs.len();
    let name = o.required_string("name", errs);
    if let Some(n) = &name
        && !valid_name(n)
    {
        o.err(
            "name",
            format!("{n:?} is not a valid name: use letters, digits, '.', '_' and '-'"),
            errs,
        );
    }
    let source = source(&mut o, base, errs);
    if check_sources
        && let Some(Source::Sqlite(p)) = &source
        && let Err(e) = crate::sources::sqlite::check_is_sqlite(p)
    {
        o.err("source", format!("{e:#}"), errs);
    }
    let destinations = destinations(&mut o, base, errs);
    let sched = match o.table("schedule", errs) {
        Some(s) => schedule(s, errs),
        None => {
            o.err("schedule", "missing: e.g. schedule = { cron = \"0 3 * * *\" } or schedule = { every = \"24h\" }".into(), errs);
            None
        }
    };
    let (codec_given, level_given) = codec_and_level(&mut o, errs);
    let key = key(&mut o, base, errs);
    let codec = codec_given.unwrap_or(crate::backup::Codec::default_for(key.is_given()));
    let level = level_given.unwrap_or(codec.default_level());
    if let Err(e) = codec.compression(level) {
        o.err("level", e, errs);
    }
    let retention = o.table("retention", errs).and_then(|r| retention(r, errs));
    let timeout = o.duration("timeout", errs).unwrap_or(DEFAULT_TIMEOUT);
    let lock_timeout = o
        .duration("lock_timeout", errs)
        .unwrap_or(crate::sources::sqlite::DEFAULT_LOCK_TIMEOUT);
    let notify = notify(&mut o, routes, errs);
    let verify = o.table("verify", errs).and_then(|mut v| {
        let t = v.duration("timeout", errs).unwrap_or(timeout);
        let s = schedule(v, errs)?;
        Some(Drill {
            schedule: s,
            timeout: t,
        })
    });
    let replicate = match o.get("replicate") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(v) => {
            o.err(
                "replicate",
                format!("must be true or false, not {}", v.type_str()),
                errs,
            );
            false
        }
    };
    if replicate {
        match &source {
            Some(Source::Postgres(_)) => o.err(
                "replicate",
                "continuous replication is for SQLite databases in WAL mode, not PostgreSQL: remove `replicate = true` (scheduled backups still run)".into(),
                errs,
            ),
            Some(Source::Sqlite(p)) => {
                if let Err(m) = check_wal(p) {
                    o.err("replicate", m, errs);
                }
            }
            None => {}
        }
    }
    let tuning = tuning(&mut o, replicate, errs);
    o.finish(errs);
    if errs.len() != n0 {
        return None;
    }
    Some(Database {
        replicate,
        tuning,
        replica_codec: codec_given.or(level_given.map(|_| codec)),
        replica_level: level_given,
        name: name?,
        source: source?,
        destinations,
        schedule: sched?,
        level,
        codec,
        key,
        retention,
        timeout,
        lock_timeout,
        notify,
        verify,
    })
}

/// `codec` and `level` as given (each checked alone; the caller checks
/// the level against the codec it settles on).
fn codec_and_level(
    o: &mut Obj<'_>,
    errs: &mut Vec<Problem>,
) -> (Option<crate::backup::Codec>, Option<u8>) {
    let codec = o.string("codec", errs).and_then(|c| {
        let parsed = crate::backup::Codec::parse(&c);
        if parsed.is_none() {
            o.err(
                "codec",
                format!("{c:?} is not a codec: use gzip or zstd"),
                errs,
            );
        }
        parsed
    });
    (codec, o.int("level", 0, 19, errs).map(|l| l as u8))
}

/// The replicator settings of an entry; with `replicate` false (a
/// `[[databases]]` entry that does not replicate) they are refused.
fn tuning(o: &mut Obj<'_>, replicate: bool, errs: &mut Vec<Problem>) -> Tuning {
    let t = Tuning {
        interval: o.duration("interval", errs),
        snapshot_interval: o.duration("snapshot_interval", errs),
        wal_limit: o.string("wal_limit", errs).and_then(|w| {
            crate::replicate::parse_bytes(&w)
                .map_err(|e| o.err("wal_limit", e, errs))
                .ok()
        }),
        lease_ttl: o.duration("lease_ttl", errs),
    };
    if t.lease_ttl.is_some_and(|l| l < Duration::from_secs(2)) {
        o.err("lease_ttl", "must be at least 2s".into(), errs);
    }
    if !replicate && t != Tuning::default() {
        let given: Vec<&str> = [
            ("interval", t.interval.is_some()),
            ("snapshot_interval", t.snapshot_interval.is_some()),
            ("wal_limit", t.wal_limit.is_some()),
            ("lease_ttl", t.lease_ttl.is_some()),
        ]
        .into_iter()
        .filter(|(_, g)| *g)
        .map(|(k, _)| k)
        .collect();
        o.err(
            given[0],
            format!(
                "replication settings ({}) apply with replicate = true only",
                given.join(", ")
            ),
            errs,
        );
    }
    t
}

fn directory(
    mut o: Obj<'_>,
    base: &Path,
    routes: &[Route],
    errs: &mut Vec<Problem>,
) -> Option<Directory> {
    let n0 = errs.len();
    let name = o.required_string("name", errs);
    if let Some(n) = &name
        && !valid_name(n)
    {
        o.err(
            "name",
            format!("{n:?} is not a valid name: use letters, digits, '.', '_' and '-'"),
            errs,
        );
    }
    if !o.t.contains_key("dir") {
        o.err(
            "dir",
            "missing: the directory holding the databases, e.g. dir = \"/srv/dbs\"".into(),
            errs,
        );
    }
    let dir = o.path("dir", base, errs);
    let pattern = o.string("pattern", errs).unwrap_or_else(|| "*.db".into());
    if let Err(e) = cairn_core::glob::check(&pattern) {
        o.err("pattern", e, errs);
    }
    let scan_interval = o
        .duration("scan_interval", errs)
        .unwrap_or(Duration::from_secs(1));
    let destinations = destinations(&mut o, base, errs);
    let (codec, level) = codec_and_level(&mut o, errs);
    if let Some(l) = level {
        // As `cairn replicate`: zstd unless another codec is given.
        let c = codec.unwrap_or(crate::backup::Codec::Zstd);
        if let Err(e) = c.compression(l) {
            o.err("level", e, errs);
        }
    }
    let key = key(&mut o, base, errs);
    let notify = notify(&mut o, routes, errs);
    let tuning = tuning(&mut o, true, errs);
    o.finish(errs);
    if errs.len() != n0 {
        return None;
    }
    Some(Directory {
        name: name?,
        dir: dir?,
        pattern,
        scan_interval,
        destinations,
        codec,
        level,
        key,
        notify,
        tuning,
    })
}

/// `destinations`: `${VAR}`-expanded, local ones made absolute, no duplicates.
fn destinations(o: &mut Obj<'_>, base: &Path, errs: &mut Vec<Problem>) -> Vec<String> {
    let mut destinations = Vec::new();
    match o.strings("destinations", errs) {
        None => o.err(
            "destinations",
            "missing: give at least one, e.g. destinations = [\"/var/backups/app\"]".into(),
            errs,
        ),
        Some(l) if l.is_empty() => o.err(
            "destinations",
            "is empty: give at least one destination".into(),
            errs,
        ),
        Some(l) => {
            for (i, s) in l {
                let path = format!("{}.destinations[{i}]", o.path);
                let x = match expand_env(&s) {
                    Ok(x) => x,
                    Err(e) => {
                        errs.push(Problem { path, message: e });
                        continue;
                    }
                };
                match Location::parse(&x) {
                    Ok(Location::Local(p)) => {
                        let abs = base.join(p).display().to_string();
                        if destinations.contains(&abs) {
                            errs.push(Problem {
                                path,
                                message: format!("{abs} is listed twice"),
                            });
                        } else {
                            destinations.push(abs);
                        }
                    }
                    Ok(_) if destinations.contains(&x) => errs.push(Problem {
                        path,
                        message: format!("{} is listed twice", crate::storage::url::redact(&x)),
                    }),
                    Ok(_) => destinations.push(x),
                    Err(e) => errs.push(Problem {
                        path,
                        message: format!("{e:#}"),
                    }),
                }
            }
        }
    }
    destinations
}

/// `notify`: names of routes (default: every route).
fn notify(o: &mut Obj<'_>, routes: &[Route], errs: &mut Vec<Problem>) -> Vec<String> {
    match o.strings("notify", errs) {
        None => routes.iter().map(|r| r.name.clone()).collect(),
        Some(l) => {
            let mut v = Vec::new();
            for (i, n) in l {
                if routes.iter().any(|r| r.name == n) {
                    v.push(n);
                } else {
                    let known: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                    errs.push(Problem {
                        path: format!("{}.notify[{i}]", o.path),
                        message: format!(
                            "no notification route named {n:?} (defined: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    });
                }
            }
            v
        }
    }
}

/// A database to replicate must be in WAL mode: bytes 18 and 19 of a
/// SQLite header are 2 then. A file that does not exist yet passes (the
/// replicator reports it when it starts; `config check` reports it as a
/// missing source).
fn check_wal(p: &Path) -> Result<(), String> {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(p) else {
        return Ok(());
    };
    let mut h = [0u8; 20];
    if f.read_exact(&mut h).is_err() || !h.starts_with(b"SQLite format 3\0") {
        return Ok(()); // not a database yet: `source` says so in `config check`
    }
    if h[18] == 2 && h[19] == 2 {
        return Ok(());
    }
    Err(format!(
        "{} is not in WAL mode, which replication needs: run `sqlite3 {} 'PRAGMA journal_mode=WAL'` once (and open it in WAL mode in the application)",
        p.display(),
        p.display()
    ))
}

fn source(o: &mut Obj<'_>, base: &Path, errs: &mut Vec<Problem>) -> Option<Source> {
    let path = format!("{}.source", o.path);
    match o.get("source") {
        None => {
            o.err(
                "source",
                "missing: the SQLite file, e.g. source = \"/srv/app/app.db\"".into(),
                errs,
            );
            None
        }
        Some(toml::Value::String(s)) => sqlite_path(s, base, &path, errs),
        Some(toml::Value::Table(t)) => {
            let mut s = Obj::new(path.clone(), t);
            let r = match s.string("type", errs).as_deref() {
                Some("sqlite") => s
                    .required_string("path", errs)
                    .and_then(|p| sqlite_path(&p, base, &format!("{path}.path"), errs)),
                Some("postgres") => {
                    let host = s.required_expanded("host", errs);
                    let port = s.int("port", 1, 65535, errs).map_or(5432, |p| p as u16);
                    let database = s.required_expanded("database", errs);
                    let user = s.required_expanded("user", errs);
                    let password = s.expanded("password", errs).map(Secret::new);
                    let sslmode = s.string("sslmode", errs);
                    if let Some(m) = &sslmode
                        && ![
                            "disable",
                            "allow",
                            "prefer",
                            "require",
                            "verify-ca",
                            "verify-full",
                        ]
                        .contains(&m.as_str())
                    {
                        s.err("sslmode", format!("{m:?} is not a libpq sslmode: use disable, prefer, require, verify-ca or verify-full"), errs);
                    }
                    Some(Source::Postgres(PgConfig {
                        host: host?,
                        port,
                        database: database?,
                        user: user?,
                        password,
                        sslmode,
                    }))
                }
                Some(other) => {
                    s.err(
                        "type",
                        format!("unknown source type {other:?}: use \"sqlite\" or \"postgres\""),
                        errs,
                    );
                    None
                }
                None => {
                    s.err("type", "missing: \"sqlite\" or \"postgres\"".into(), errs);
                    None
                }
            };
            s.finish(errs);
            r
        }
        Some(_) => {
            errs.push(Problem {
                path,
                message: "must be a path or a table { type = \"postgres\", … }".into(),
            });
            None
        }
    }
}

fn sqlite_path(s: &str, base: &Path, path: &str, errs: &mut Vec<Problem>) -> Option<Source> {
    match expand_env(s) {
        Ok(x) if x.is_empty() => {
            errs.push(Problem {
                path: path.into(),
                message: "is empty".into(),
            });
            None
        }
        Ok(x) => Some(Source::Sqlite(
            base.join(crate::storage::url::expand_home(&x)),
        )),
        Err(e) => {
            errs.push(Problem {
                path: path.into(),
                message: e,
            });
            None
        }
    }
}

fn schedule(mut s: Obj<'_>, errs: &mut Vec<Problem>) -> Option<Schedule> {
    let cron = s.string("cron", errs);
    let tz = s.string("timezone", errs);
    let every = s.string("every", errs);
    let start = s.string("start", errs);
    let r = match (cron, every) {
        (Some(_), Some(_)) => {
            s.err("", "give either cron or every, not both".into(), errs);
            None
        }
        (Some(c), None) => {
            if start.is_some() {
                s.err(
                    "start",
                    "applies to every only (a cron expression fixes its own times)".into(),
                    errs,
                );
            }
            Schedule::cron(&c, tz.as_deref())
                .map_err(|e| {
                    s.err(
                        if e.contains("time zone") {
                            "timezone"
                        } else {
                            "cron"
                        },
                        e,
                        errs,
                    )
                })
                .ok()
        }
        (None, Some(e)) => {
            if tz.is_some() {
                s.err(
                    "timezone",
                    "applies to cron only (start carries its own offset)".into(),
                    errs,
                );
            }
            Schedule::every(&e, start.as_deref())
                .map_err(|m| {
                    s.err(
                        if m.contains("RFC 3339") {
                            "start"
                        } else {
                            "every"
                        },
                        m,
                        errs,
                    )
                })
                .ok()
        }
        (None, None) => {
            s.err(
                "",
                "needs cron = \"0 3 * * *\" or every = \"24h\"".into(),
                errs,
            );
            None
        }
    };
    s.finish(errs);
    r
}

fn key(o: &mut Obj<'_>, base: &Path, errs: &mut Vec<Problem>) -> KeyArgs {
    let k = KeyArgs {
        key_file: o.path("key_file", base, errs),
        key_env: o.string("key_env", errs),
        passphrase_file: o.path("passphrase_file", base, errs),
        passphrase_env: o.string("passphrase_env", errs),
    };
    let given = [
        k.key_file.is_some(),
        k.key_env.is_some(),
        k.passphrase_file.is_some(),
        k.passphrase_env.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        o.err(
            "key_file",
            "give only one of key_file, key_env, passphrase_file and passphrase_env".into(),
            errs,
        );
    }
    for (field, p) in [
        ("key_file", &k.key_file),
        ("passphrase_file", &k.passphrase_file),
    ] {
        if let Some(p) = p
            && let Err(m) = check_secret_file(p)
        {
            o.err(field, m, errs);
        }
    }
    for (field, n) in [
        ("key_env", &k.key_env),
        ("passphrase_env", &k.passphrase_env),
    ] {
        if let Some(n) = n
            && std::env::var_os(n).is_none_or(|v| v.is_empty())
        {
            o.err(field, format!("environment variable {n} is not set"), errs);
        }
    }
    if given == 1
        && let Err(e) = k.load()
    {
        let field = ["key_file", "key_env", "passphrase_file", "passphrase_env"]
            .into_iter()
            .zip([
                k.key_file.is_some(),
                k.key_env.is_some(),
                k.passphrase_file.is_some(),
                k.passphrase_env.is_some(),
            ])
            .find(|(_, g)| *g)
            .map_or("key_file", |(f, _)| f);
        // Only report what the file checks above did not already say.
        if !errs.iter().any(|p| p.path == format!("{}.{field}", o.path)) {
            o.err(field, format!("{e:#}"), errs);
        }
    }
    k
}

/// A key or passphrase file must exist and be readable by its owner only.
pub fn check_secret_file(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a file", p.display()));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:04o}: other users can read or change the key; run `chmod 600 {}`",
            p.display(),
            p.display()
        ));
    }
    Ok(())
}

fn retention(mut r: Obj<'_>, errs: &mut Vec<Problem>) -> Option<Policy> {
    let n0 = errs.len();
    let c = |r: &mut Obj<'_>, k: &'static str, errs: &mut Vec<Problem>| {
        r.int(k, 0, u32::MAX as i64, errs).map(|n| n as u32)
    };
    let p = Policy {
        keep_last: c(&mut r, "keep_last", errs),
        keep_hourly: c(&mut r, "keep_hourly", errs),
        keep_daily: c(&mut r, "keep_daily", errs),
        keep_weekly: c(&mut r, "keep_weekly", errs),
        keep_monthly: c(&mut r, "keep_monthly", errs),
        keep_yearly: c(&mut r, "keep_yearly", errs),
        keep_within_ms: r
            .duration("keep_within", errs)
            .map(|d| d.as_millis() as i64),
        max_age_ms: r.duration("max_age", errs).map(|d| d.as_millis() as i64),
    };
    if errs.len() == n0
        && let Err(e) = p.validate()
    {
        r.err("", e.to_string(), errs);
    }
    r.finish(errs);
    (errs.len() == n0).then_some(p)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A table being read: remembers which keys were asked for, so the rest
/// can be reported as unknown.
struct Obj<'a> {
    path: String,
    t: &'a toml::Table,
    asked: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(path: String, t: &'a toml::Table) -> Obj<'a> {
        Obj {
            path,
            t,
            asked: Vec::new(),
        }
    }

    fn at(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (_, true) => self.path.clone(),
            (true, false) => key.to_string(),
            (false, false) => format!("{}.{key}", self.path),
        }
    }

    fn err(&self, key: &str, message: String, errs: &mut Vec<Problem>) {
        errs.push(Problem {
            path: self.at(key),
            message,
        });
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.asked.push(key);
        self.t.get(key)
    }

    fn string(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) => Some(s.clone()),
            v => {
                self.err(key, format!("must be a string, not {}", v.type_str()), errs);
                None
            }
        }
    }

    fn required_string(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<String> {
        let had = self.t.contains_key(key);
        let s = self.string(key, errs);
        if !had {
            self.err(key, "missing".into(), errs);
        }
        s
    }

    /// A string with `${VAR}` expanded.
    fn expanded(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<String> {
        let s = self.string(key, errs)?;
        expand_env(&s).map_err(|e| self.err(key, e, errs)).ok()
    }

    fn required_expanded(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<String> {
        if !self.t.contains_key(key) {
            self.asked.push(key);
            self.err(key, "missing".into(), errs);
            return None;
        }
        self.expanded(key, errs)
    }

    /// An expanded path, relative to the config file's directory.
    fn path(&mut self, key: &'static str, base: &Path, errs: &mut Vec<Problem>) -> Option<PathBuf> {
        self.expanded(key, errs)
            .map(|p| base.join(crate::storage::url::expand_home(&p)))
    }

    fn int(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
        errs: &mut Vec<Problem>,
    ) -> Option<i64> {
        match self.get(key)? {
            toml::Value::Integer(n) if (min..=max).contains(n) => Some(*n),
            toml::Value::Integer(n) => {
                self.err(key, format!("{n} is out of range ({min} to {max})"), errs);
                None
            }
            v => {
                self.err(
                    key,
                    format!("must be a whole number, not {}", v.type_str()),
                    errs,
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<Duration> {
        let s = self.string(key, errs)?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(key, format!("{s:?} must be longer than zero"), errs);
                None
            }
            Err(e) => {
                self.err(
                    key,
                    format!("{s:?} is not a duration like 30s, 15m, 24h or 7d ({e})"),
                    errs,
                );
                None
            }
        }
    }

    /// An array of strings, with each index (for paths like `to[2]`).
    fn strings(
        &mut self,
        key: &'static str,
        errs: &mut Vec<Problem>,
    ) -> Option<Vec<(usize, String)>> {
        match self.get(key)? {
            toml::Value::Array(a) => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) => out.push((i, s.to_string())),
                        None => errs.push(Problem {
                            path: format!("{}[{i}]", self.at(key)),
                            message: format!("must be a string, not {}", v.type_str()),
                        }),
                    }
                }
                Some(out)
            }
            v => {
                self.err(
                    key,
                    format!("must be a list of strings, not {}", v.type_str()),
                    errs,
                );
                None
            }
        }
    }

    fn table(&mut self, key: &'static str, errs: &mut Vec<Problem>) -> Option<Obj<'a>> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(Obj::new(self.at(key), t)),
            v => {
                self.err(key, format!("must be a table, not {}", v.type_str()), errs);
                None
            }
        }
    }

    /// Reports the keys nobody asked for.
    fn finish(self, errs: &mut Vec<Problem>) {
        for k in self.t.keys() {
            if !self.asked.contains(&k.as_str()) {
                let mut known: Vec<&str> = self.asked.clone();
                known.sort_unstable();
                known.dedup();
                errs.push(Problem {
                    path: self.at(k),
                    message: format!("unknown key (known here: {})", known.join(", ")),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
