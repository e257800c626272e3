//! Destination URLs: a local path or `file://`, `s3://bucket/prefix?…`,
//! `sftp://user@host[:port]/path?…`. Parsing only; every error names the
//! URL (through [`redact`]: never with a password in it) and the part that
//! is wrong.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Config),
    Sftp(SftpConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// `endpoint=` (MinIO, R2, B2, Wasabi, Garage, a test server).
    pub endpoint: Option<String>,
    /// `region=`; else the AWS chain (AWS_REGION, profile), else us-east-1.
    pub region: Option<String>,
    /// `path_style=true`: `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style: bool,
    /// `profile=`: a named profile of ~/.aws/config.
    pub profile: Option<String>,
    /// `parts=`: multipart parts in flight (default 4).
    pub parts_in_flight: usize,
    /// `part_size=` in MiB (default 8).
    pub part_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpConfig {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// Directory on the server; relative paths are from the login directory.
    pub path: String,
    /// `key=` or `$CAIRN_SSH_KEY`: a private key file; without one, ssh-agent.
    pub identity: Option<PathBuf>,
    /// `known_hosts=` or `$CAIRN_SSH_KNOWN_HOSTS`; default ~/.ssh/known_hosts.
    pub known_hosts: Option<PathBuf>,
}

impl Location {
    /// Parses a destination argument. Anything without `scheme://` is a local path.
    pub fn parse(raw: &str) -> Result<Location> {
        let Some((scheme, _)) = raw.split_once("://") else {
            let s = raw;
            if s.is_empty() {
                bail!(
                    "the destination is empty: give a directory, s3://bucket/prefix or sftp://user@host/path"
                );
            }
            return Ok(Location::Local(PathBuf::from(s)));
        };
        // Messages echo the URL: only ever its redacted form.
        let s = &redact(raw);
        let u =
            url::Url::parse(raw).map_err(|e| anyhow!("destination {s} is not a valid URL: {e}"))?;
        match scheme {
            "file" => {
                let p = u
                    .to_file_path()
                    .map_err(|_| anyhow!("destination {s}: a file:// URL needs an absolute path (file:///srv/backups)"))?;
                Ok(Location::Local(p))
            }
            "s3" => parse_s3(s, &u).map(Location::S3),
            "sftp" => parse_sftp(s, &u).map(Location::Sftp),
            other => bail!(
                "destination {s}: unknown scheme \"{other}\": use a directory, file://, s3:// or sftp://"
            ),
        }
    }

    /// The URL without secrets, for messages and reports.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3(c) => format!("s3://{}/{}", c.bucket, c.prefix),
            Location::Sftp(c) => {
                let port = if c.port == 22 {
                    String::new()
                } else {
                    format!(":{}", c.port)
                };
                let sep = if c.path.starts_with('/') { "" } else { "/~/" };
                format!("sftp://{}@{}{port}{sep}{}", c.user, c.host, c.path)
            }
        }
    }
}

/// Query keys whose values are secrets (a signed URL's signature, a
/// token); matched case-insensitively on the key, also as a suffix
/// (`aws_secret_access_key`, `X-Amz-Signature`).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pw",
    "secret",
    "secret_key",
    "secret_access_key",
    "access_key",
    "token",
    "session_token",
    "signature",
    "sig",
    "credential",
    "credentials",
    "apikey",
    "api_key",
];

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    SECRET_KEYS
        .iter()
        .any(|s| k == *s || k.ends_with(&format!("_{s}")) || k.ends_with(&format!("-{s}")))
}

/// `s` with every URL password (`scheme://user:PASSWORD@host`, also inside
/// a query value such as `endpoint=http://u:p@h`) and every secret-bearing
/// query value (`?token=…`, `&X-Amz-Signature=…`) replaced by `***`. For
/// every message, report and log line that echoes a location: works on
/// any text, parseable URL or not.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    // Userinfo passwords, wherever a `://` appears.
    while let Some(i) = rest.find("://") {
        let start = i + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '&') || c.is_whitespace())
            .unwrap_or(after.len());
        let auth = &after[..end];
        match auth
            .rfind('@')
            .and_then(|at| auth[..at].find(':').map(|c| (c, at)))
        {
            Some((colon, at)) => {
                out.push_str(&auth[..colon]);
                out.push_str(":***");
                out.push_str(&auth[at..]);
            }
            None => out.push_str(auth),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    // Secret query values: `key=value` after a `?` or `&`.
    let mut done = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find(['?', '&']) {
        done.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        let end = after
            .find(|c: char| matches!(c, '&' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        match after[..end].split_once('=') {
            Some((k, v)) if is_secret_key(k) && !v.is_empty() => {
                done.push_str(k);
                done.push_str("=***");
            }
            _ => done.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    done.push_str(rest);
    done
}

fn truthy(url: &str, key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => bail!("destination {url}: {key}={v} is not true or false"),
    }
}

fn number(url: &str, key: &str, v: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize> {
    let n: usize = v
        .parse()
        .map_err(|_| anyhow!("destination {url}: {key}={v} is not a number"))?;
    if !range.contains(&n) {
        bail!(
            "destination {url}: {key}={n} is out of range ({} to {})",
            range.start(),
            range.end()
        );
    }
    Ok(n)
}

fn parse_s3(s: &str, u: &url::Url) -> Result<S3Config> {
    let bucket = u.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        bail!("destination {s}: no bucket; write s3://BUCKET/prefix");
    }
    if !u.username().is_empty() || u.password().is_some() {
        bail!(
            "destination {s}: credentials in s3:// URLs are not supported; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile=NAME"
        );
    }
    let mut prefix = u.path().trim_start_matches('/').to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    let mut c = S3Config {
        bucket,
        prefix,
        endpoint: None,
        region: None,
        path_style: false,
        profile: None,
        parts_in_flight: 4,
        part_size: 8,
    };
    for (k, v) in u.query_pairs() {
        match &*k {
            "endpoint" => c.endpoint = Some(v.into_owned()),
            "region" => c.region = Some(v.into_owned()),
            "path_style" => c.path_style = truthy(s, &k, &v)?,
            "profile" => c.profile = Some(v.into_owned()),
            "parts" => c.parts_in_flight = number(s, &k, &v, 1..=64)?,
            "part_size" => c.part_size = number(s, &k, &v, 5..=512)?,
            _ => bail!(
                "destination {s}: unknown option \"{k}\" (s3:// takes endpoint, region, path_style, profile, parts, part_size)"
            ),
        }
    }
    Ok(c)
}

fn parse_sftp(s: &str, u: &url::Url) -> Result<SftpConfig> {
    let host = u.host_str().unwrap_or_default().to_string();
    if host.is_empty() {
        bail!("destination {s}: no host; write sftp://user@host[:port]/path");
    }
    let user = match u.username() {
        "" => std::env::var("USER")
            .map_err(|_| anyhow!("destination {s}: no user; write sftp://USER@{host}/path"))?,
        name => name.to_string(),
    };
    if u.password().is_some() {
        bail!(
            "destination {s}: passwords in sftp:// URLs are not supported; use a key (key=PATH or ssh-agent)"
        );
    }
    // sftp://h/srv/b is /srv/b; sftp://h/~/b is b under the login directory.
    let raw = u.path();
    let path = match raw.strip_prefix("/~/") {
        Some(rel) => rel.trim_end_matches('/').to_string(),
        None if raw == "/~" || raw.is_empty() || raw == "/" => {
            bail!(
                "destination {s}: no directory; write sftp://user@host/srv/backups or sftp://user@host/~/backups"
            )
        }
        None => raw.trim_end_matches('/').to_string(),
    };
    let path = percent_decode(&path);
    let mut c = SftpConfig {
        user,
        host,
        port: u.port().unwrap_or(22),
        path,
        identity: std::env::var_os("CAIRN_SSH_KEY").map(PathBuf::from),
        known_hosts: std::env::var_os("CAIRN_SSH_KNOWN_HOSTS").map(PathBuf::from),
    };
    for (k, v) in u.query_pairs() {
        match &*k {
            "key" => c.identity = Some(expand_home(&v)),
            "known_hosts" => c.known_hosts = Some(expand_home(&v)),
            _ => {
                bail!("destination {s}: unknown option \"{k}\" (sftp:// takes key and known_hosts)")
            }
        }
    }
    Ok(c)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            Location::parse("backups").unwrap(),
            Location::Local("backups".into())
        );
        assert_eq!(
            Location::parse("file:///srv/b").unwrap(),
            Location::Local("/srv/b".into())
        );
        let Location::S3(c) = Location::parse(
            "s3://bk/app/db?endpoint=http://127.0.0.1:9000&path_style=true&region=eu-west-1",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bk", "app/db/"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.path_style);
        let Location::Sftp(c) = Location::parse("sftp://me@h:2222/~/backups/").unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.user.as_str(), c.port, c.path.as_str()),
            ("me", 2222, "backups")
        );
        let Location::Sftp(c) = Location::parse("sftp://me@h/srv/b").unwrap() else {
            panic!()
        };
        assert_eq!((c.port, c.path.as_str()), (22, "/srv/b"));
        assert_eq!(
            Location::parse("sftp://me@h/srv/b").unwrap().display(),
            "sftp://me@h/srv/b"
        );
    }

    #[test]
    fn errors_name_the_part() {
        for (url, needle) in [
            ("s4://x/y", "unknown scheme \"s4\""),
            ("s3:///p", "no bucket"),
            ("s3://b/p?color=red", "unknown option \"color\""),
            ("s3://b/p?parts=0", "parts=0 is out of range"),
            ("sftp://me:pw@h/x", "passwords"),
            ("s3://me:pw@b/p", "credentials in s3:// URLs"),
            ("sftp://me@h/", "no directory"),
        ] {
            let e = Location::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn errors_never_echo_a_password() {
        const PW: &str = "hunter2-Sekr3t";
        for url in [
            format!("sftp://me:{PW}@h/x"),
            format!("sftp://me:{PW}@/x"),
            format!("sftp://me:{PW}@h/x?color=red"),
            format!("s3://me:{PW}@b/p?color=red"),
            format!("s3://b/p?endpoint=http://u:{PW}@127.0.0.1:9&parts=0"),
            format!("s3://b/p?token={PW}"),
            format!("s3://b/p?region=x&X-Amz-Signature={PW}&path_style=maybe"),
            format!("s4://me:{PW}@h/x"),
            format!("sftp://me:{PW}@h:99999/x"),
            format!("file://me:{PW}@h/x"),
        ] {
            let e = format!("{:#}", Location::parse(&url).unwrap_err());
            assert!(!e.contains(PW), "{url}: {e}");
            assert!(e.contains("***") || !url.contains('@'), "{url}: {e}");
        }
    }

    #[test]
    fn redact_masks_passwords_and_secret_query_values_only() {
        for (input, want) in [
            ("sftp://me:pw@h/x", "sftp://me:***@h/x"),
            ("sftp://me@h/x", "sftp://me@h/x"),
            (
                "postgres://u:p%40ss@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("https://u:a@b@h/x", "https://u:***@h/x"),
            (
                "s3://b/p?endpoint=http://k:s@h:9&region=eu",
                "s3://b/p?endpoint=http://k:***@h:9&region=eu",
            ),
            (
                "s3://b/p?token=abc&region=eu&aws_secret_access_key=zz",
                "s3://b/p?token=***&region=eu&aws_secret_access_key=***",
            ),
            (
                "cannot reach sftp://a:b@h/x: refused",
                "cannot reach sftp://a:***@h/x: refused",
            ),
            ("/srv/backups?x", "/srv/backups?x"),
            (
                "sftp://me@h/x?key=/k/id_ed25519",
                "sftp://me@h/x?key=/k/id_ed25519",
            ),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }
}
