//! A PostgreSQL database as a backup source and a restore target: where it
//! is ([`PgSource`], from a URL or a config file's fields), and the client
//! programs cairn runs against it ([`tools`], [`dump`], [`restore`],
//! [`check`]). The password only ever reaches a child through its
//! environment (`PGPASSWORD`), never a command line or a message.

pub mod check;
pub mod dump;
pub mod header;
pub mod restore;
pub mod tools;

use std::process::Command;

use anyhow::{Result, anyhow, bail};

pub const DEFAULT_PORT: u16 = 5432;

/// The sslmode values libpq accepts.
const SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// A PostgreSQL database and how to reach it. Empty `host` or `user` mean
/// libpq's defaults (`PGHOST`/the local socket, `PGUSER`/the OS user); no
/// `password` means libpq finds one itself (`PGPASSWORD`, `~/.pgpass`).
#[derive(Clone, PartialEq, Eq)]
pub struct PgSource {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub sslmode: Option<String>,
}

/// Never prints the password.
impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

/// Whether a source argument is a PostgreSQL URL.
pub fn is_url(s: &str) -> bool {
    let lower = s.get(..13).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `s` with the password of a URL replaced by `***`, for messages.
pub fn redact(s: &str) -> String {
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let rest = &s[scheme_end..];
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let auth = &rest[..auth_end];
    match auth.rfind('@') {
        Some(at) => match auth[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &s[..scheme_end], &auth[..colon], &rest[at..]),
            None => s.to_string(),
        },
        None => s.to_string(),
    }
}

fn percent_decode(what: &str, s: &str, url: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: the {what} has a bad %-escape: write a literal % as %25",
                        redact(url)
                    )
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| anyhow!("{}: the {what} is not UTF-8 once decoded", redact(url)))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl PgSource {
    /// Parses `postgres[ql]://[user[:password]@][host][:port]/database[?sslmode=…]`
    /// (libpq's URL form; one host; %-escapes decoded, so a socket
    /// directory is `%2Fvar%2Frun%2Fpostgresql`).
    pub fn from_url(url: &str) -> Result<PgSource> {
        let shown = redact(url);
        if !is_url(url) {
            bail!("{shown} is not a PostgreSQL URL: write postgres://user@host:5432/dbname");
        }
        let rest = &url[url.find("://").expect("is_url checked") + 3..];
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (auth, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match auth.rfind('@') {
            Some(at) => (Some(&auth[..at]), &auth[at + 1..]),
            None => (None, auth),
        };
        let (user, password) = match userinfo {
            None => (String::new(), None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    percent_decode("user", u, url)?,
                    Some(percent_decode("password", p, url)?),
                ),
                None => (percent_decode("user", ui, url)?, None),
            },
        };
        if hostport.contains(',') {
            bail!("{shown}: several hosts are not supported: give one host");
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("{shown}: an IPv6 host needs its closing ]"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode("host", h, url)?, Some(p)),
                None => (percent_decode("host", hostport, url)?, None),
            }
        };
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                anyhow!("{shown}: the port {p:?} is not a number from 1 to 65535")
            })?,
        };
        let database = percent_decode("database name", path, url)?;
        let mut sslmode = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => sslmode = Some(percent_decode("sslmode", v, url)?),
                _ => bail!(
                    "{shown}: the parameter {k:?} is not supported (only sslmode; other libpq settings can come from PG* environment variables)"
                ),
            }
        }
        let pg = PgSource {
            host,
            port,
            database,
            user,
            password,
            sslmode,
        };
        pg.validate().map_err(|e| anyhow!("{shown}: {e}"))?;
        Ok(pg)
    }

    /// The checks `from_url` makes, for a source built from config fields.
    pub fn validate(&self) -> Result<()> {
        if self.database.is_empty() {
            bail!("no database name: add it to the URL (postgres://user@host:5432/dbname)");
        }
        if self.database.contains('/') {
            bail!(
                "the database name {:?} contains a /: %-escape it as %2F",
                self.database
            );
        }
        if [&self.host, &self.database, &self.user]
            .iter()
            .any(|s| s.contains('\0'))
            || self.password.as_deref().is_some_and(|p| p.contains('\0'))
        {
            bail!("the PostgreSQL settings contain a NUL byte");
        }
        if self.port == 0 {
            bail!("port 0 is not a port: use 1 to 65535 (PostgreSQL's is 5432)");
        }
        if let Some(m) = &self.sslmode
            && !SSLMODES.contains(&m.as_str())
        {
            bail!("sslmode {m:?} is not one of {}", SSLMODES.join(", "));
        }
        Ok(())
    }

    /// `postgres://host:port/database`: the catalog's name for this
    /// database (`list`, `--db`, retention groups), without user or password.
    pub fn display_name(&self) -> String {
        let host = if self.host.is_empty() {
            "localhost".to_string()
        } else {
            self.host_for_url()
        };
        format!(
            "postgres://{host}:{}/{}",
            self.port,
            percent_encode(&self.database)
        )
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('/') {
            format!("[{}]", self.host)
        } else {
            percent_encode(&self.host)
        }
    }

    /// The libpq URL for a child's `--dbname`: everything but the password.
    pub fn conninfo(&self) -> String {
        let user = if self.user.is_empty() {
            String::new()
        } else {
            format!("{}@", percent_encode(&self.user))
        };
        let mut s = format!(
            "postgresql://{user}{}:{}/{}",
            self.host_for_url(),
            self.port,
            percent_encode(&self.database)
        );
        if let Some(m) = &self.sslmode {
            s.push_str(&format!("?sslmode={m}"));
        }
        s
    }

    /// The same server and user, another database (for CREATE DATABASE).
    pub fn with_database(&self, database: &str) -> PgSource {
        PgSource {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// Sets a child's environment: the password (if given) where libpq
    /// reads it, and a connect timeout unless the user chose one.
    pub fn apply_env(&self, cmd: &mut Command) {
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p);
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            cmd.env("PGCONNECT_TIMEOUT", "30");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let pg = PgSource::from_url("postgres://app:s%40cret@db.example:6543/shop?sslmode=require")
            .unwrap();
        assert_eq!(pg.host, "db.example");
        assert_eq!(pg.port, 6543);
        assert_eq!(pg.user, "app");
        assert_eq!(pg.password.as_deref(), Some("s@cret"));
        assert_eq!(pg.database, "shop");
        assert_eq!(pg.sslmode.as_deref(), Some("require"));
        assert_eq!(pg.display_name(), "postgres://db.example:6543/shop");
        assert_eq!(
            pg.conninfo(),
            "postgresql://app@db.example:6543/shop?sslmode=require"
        );
        assert!(!format!("{pg:?}").contains("s@cret"));

        let pg = PgSource::from_url("postgresql://[::1]/x").unwrap();
        assert_eq!((pg.host.as_str(), pg.port), ("::1", 5432));
        assert_eq!(pg.conninfo(), "postgresql://[::1]:5432/x");
        let pg = PgSource::from_url("postgres://%2Frun%2Fpg/x").unwrap();
        assert_eq!(pg.host, "/run/pg");
        assert_eq!(pg.conninfo(), "postgresql://%2Frun%2Fpg:5432/x");
        let pg = PgSource::from_url("postgres:///x").unwrap();
        assert_eq!(pg.display_name(), "postgres://localhost:5432/x");
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        for (url, needle) in [
            ("postgres://u:pw@h:5432", "no database name"),
            ("postgres://u:pw@h:99999/d", "port"),
            ("postgres://u:pw@h/d?sslmode=maybe", "sslmode"),
            (
                "postgres://u:pw@h/d?target_session_attrs=any",
                "not supported",
            ),
            ("postgres://u:pw@a,b/d", "several hosts"),
            ("postgres://u:pw@h/d%zz", "%-escape"),
        ] {
            let e = PgSource::from_url(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("pw"), "{url}: {e}");
        }
        assert_eq!(redact("postgres://u:pw@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert!(is_url("PostgreSQL://h/d") && !is_url("app.db"));
    }
}
