//! The JSON envelope every cairn metadata object wears: a format name, a
//! version, and the SHA-256 of the body's exact bytes, so that damage and
//! edits are caught on read (docs/FORMAT.md §7.3, §12.2).
//!
//! `{"format":"…","version":N,"body_sha256":"…","body":{…}}` and a newline.
//! The body is embedded verbatim; readers hash the byte span of the `body`
//! value as found in the file, never a re-serialization.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::header::hex;

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'a str,
    version: u32,
    body_sha256: String,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    format: String,
    version: u32,
    body_sha256: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// Renders `body` (pretty-printed when `pretty`) inside an envelope.
pub fn render(format: &str, version: u32, body: &impl Serialize, pretty: bool) -> Vec<u8> {
    let text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    .expect("cairn's metadata always serializes");
    let raw = RawValue::from_string(text).expect("serde_json output is valid JSON");
    let env = EnvelopeOut {
        format,
        version,
        body_sha256: hex(&Sha256::digest(raw.get().as_bytes())),
        body: &raw,
    };
    let mut out = serde_json::to_vec(&env).expect("an envelope always serializes");
    out.push(b'\n');
    out
}

/// Checks the envelope of `bytes` (a `what` such as "the catalog", named in
/// errors) and decodes its body. `versions` lists the versions this reader
/// understands; any other is "upgrade cairn".
pub fn parse<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    format: &str,
    versions: &[u32],
) -> Result<(u32, T)> {
    let err = |m: String| Error::Catalog(format!("{what}: {m}"));
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(err("the file is empty".into()));
    }
    let env: EnvelopeIn<'_> =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON ({e})")))?;
    if env.format != format {
        return Err(err(format!(
            "format is {:?}, expected {format:?}",
            env.format
        )));
    }
    if !versions.contains(&env.version) {
        return Err(err(format!(
            "version {} is not supported (this cairn reads version {}); upgrade cairn",
            env.version,
            versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    let body = env.body.get();
    if hex(&Sha256::digest(body.as_bytes())) != env.body_sha256 {
        return Err(err(
            "the body's SHA-256 does not match body_sha256: the file was damaged or edited".into(),
        ));
    }
    let value =
        serde_json::from_str(body).map_err(|e| err(format!("body does not decode ({e})")))?;
    Ok((env.version, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct B {
        n: u32,
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let bytes = render("x", 2, &B { n: 7 }, false);
        assert_eq!(parse::<B>(&bytes, "t", "x", &[2]).unwrap(), (2, B { n: 7 }));
        let e = parse::<B>(&bytes, "t", "x", &[1]).unwrap_err().to_string();
        assert!(
            e.contains("version 2 is not supported") && e.contains("upgrade cairn"),
            "{e}"
        );
        let edited = String::from_utf8(bytes).unwrap().replace("7", "8");
        let e = parse::<B>(edited.as_bytes(), "t", "x", &[2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHA-256"), "{e}");
        assert!(
            parse::<B>(b" \n", "t", "x", &[2])
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
