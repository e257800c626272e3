//! `${VAR}` and `${VAR:-default}` expansion for config values, and the
//! [`Secret`] wrapper that keeps expanded secrets out of every message.
//!
//! Our own small expander rather than a shell-like one: only the braced
//! forms expand, and `$$` is a literal `$`, so a password such as `pa$word`
//! is never mistaken for a variable.

use std::fmt;

/// A value that must never be printed: Debug and Display show `<redacted>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value itself, for the one place that hands it to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `$$` in `s`, looking names up
/// with `lookup`. The error names the missing variable (never the value).
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "a \"${\" has no closing \"}\" (write $$ for a literal $)".to_string()
            })?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!(
                    "\"${{{inner}}}\" is not a variable reference: write ${{NAME}} or ${{NAME:-default}} (and $$ for a literal $)"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (used as ${{{name}}}; set it, or write ${{{name}:-default}})"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            // A lone `$` (e.g. in a password) stays as it is.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] against the process environment.
pub fn expand_env(s: &str) -> Result<String, String> {
    expand(s, &|n| std::env::var(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "BUCKET" => Some("backups".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_braced_names_and_defaults() {
        assert_eq!(
            expand("s3://${BUCKET}/app", &env).unwrap(),
            "s3://backups/app"
        );
        assert_eq!(expand("${NOPE:-x}/${BUCKET}", &env).unwrap(), "x/backups");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("no vars", &env).unwrap(), "no vars");
    }

    #[test]
    fn dollars_that_are_not_references_stay() {
        assert_eq!(expand("pa$word", &env).unwrap(), "pa$word");
        assert_eq!(expand("a$$b", &env).unwrap(), "a$b");
        assert_eq!(expand("$$${BUCKET}", &env).unwrap(), "$backups");
        assert_eq!(expand("end$", &env).unwrap(), "end$");
    }

    #[test]
    fn missing_variable_is_named() {
        let e = expand("s3://${S3_BUCKET}/x", &env).unwrap_err();
        assert!(e.contains("S3_BUCKET is not set"), "{e}");
        let e = expand("${BAD NAME}", &env).unwrap_err();
        assert!(e.contains("not a variable reference"), "{e}");
        let e = expand("${OPEN", &env).unwrap_err();
        assert!(e.contains("no closing"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
