//! The command line. Hand-parsed: a handful of flags do not justify a
//! parser's weight in every copy of the module.

use cairn_core::{KeyMaterial, MasterKey};

pub const USAGE: &str = "\
usage:
  cairn-wasi verify ARCHIVE [KEY] [--json] [--expect-size BYTES] [--scratch DIR]
      decode ARCHIVE (a path inside a preopened directory), check every chunk
      and checksum, then PRAGMA integrity_check and foreign_key_check on the
      database inside this module; prints a report; exits 1 on any failure.
      ARCHIVE `-` reads the archive from stdin, after the key's line when
      --key-stdin or --passphrase-stdin is given (no copy on disk needed).
      --scratch DIR: decode into a file in DIR (a writable preopened
      directory; the file is removed afterwards) and let SQLite read it from
      there, so memory stays small whatever the database's size; without it
      the database is held in memory (wasm32: under 4 GiB).
      --expect-size BYTES: the database's size; decoding to more fails.
      --host-digests (with --scratch): for a host that computes both SHA-256
      sums itself (cairn does, natively): report the trailer's claim instead
      and keep the decoded file in DIR for the host to hash
  cairn-wasi decode [KEY] < ARCHIVE > DATABASE
      decode an archive from stdin to stdout, checking every chunk

KEY (for encrypted archives), one of:
  --key-file PATH           a 32-byte key as hex or base64
  --key-stdin               the same, read from standard input
  --passphrase-file PATH    a passphrase (first line)
  --passphrase-stdin        the same, read from standard input";

/// Where the key comes from; read only once the command is known to be valid.
pub enum KeySource {
    None,
    KeyFile(String),
    KeyStdin,
    PassphraseFile(String),
    PassphraseStdin,
}

pub enum Command {
    Help,
    Verify {
        archive: String,
        key: KeySource,
        json: bool,
        expect_size: Option<u64>,
        scratch: Option<String>,
        host_digests: bool,
    },
    Decode {
        key: KeySource,
    },
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut args = args.peekable();
    let sub = args.next().ok_or("no command given")?;
    let mut key = KeySource::None;
    let mut json = false;
    let mut expect_size = None;
    let mut scratch = None;
    let mut host_digests = false;
    let mut archive = None;
    if matches!(sub.as_str(), "-h" | "--help" | "help") {
        return Ok(Command::Help);
    }
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        let k = match a.as_str() {
            "--key-file" => Some(KeySource::KeyFile(value("--key-file")?)),
            "--passphrase-file" => Some(KeySource::PassphraseFile(value("--passphrase-file")?)),
            "--key-stdin" => Some(KeySource::KeyStdin),
            "--passphrase-stdin" => Some(KeySource::PassphraseStdin),
            "--json" => {
                json = true;
                None
            }
            "--expect-size" => {
                let v = value("--expect-size")?;
                expect_size = Some(
                    v.parse()
                        .map_err(|_| format!("--expect-size takes a byte count, not {v:?}"))?,
                );
                None
            }
            "--scratch" if sub == "verify" => {
                scratch = Some(value("--scratch")?);
                None
            }
            "--host-digests" if sub == "verify" => {
                host_digests = true;
                None
            }
            // `-`: the archive streams in on stdin (after the key's line, if any).
            "-" if sub == "verify" && archive.is_none() => {
                archive = Some(a.clone());
                None
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            path if sub == "verify" && archive.is_none() => {
                archive = Some(path.to_string());
                None
            }
            extra => return Err(format!("unexpected argument {extra:?}")),
        };
        if let Some(k) = k {
            if !matches!(key, KeySource::None) {
                return Err("give at most one key option".into());
            }
            key = k;
        }
    }
    if host_digests && scratch.is_none() {
        return Err(
            "--host-digests needs --scratch (the host hashes the decoded file there)".into(),
        );
    }
    match sub.as_str() {
        "verify" => Ok(Command::Verify {
            archive: archive.ok_or("verify needs the path of an archive")?,
            key,
            json,
            expect_size,
            scratch,
            host_digests,
        }),
        "decode" => Ok(Command::Decode { key }),
        other => Err(format!("unknown command {other:?}")),
    }
}

impl KeySource {
    pub fn load(&self) -> Result<KeyMaterial, String> {
        let read_file = |p: &str| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read key file {p}: {e}"))
        };
        let read_stdin = || {
            let mut s = String::new();
            std::io::stdin()
                .read_line(&mut s)
                .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
            Ok::<_, String>(s)
        };
        let key = |text: String, from: &str| {
            MasterKey::parse(&text)
                .map(KeyMaterial::Key)
                .map_err(|e| format!("key from {from}: {e}"))
        };
        let passphrase = |text: String| {
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                return Err("the passphrase is empty".to_string());
            }
            Ok(KeyMaterial::Passphrase(line))
        };
        match self {
            KeySource::None => Ok(KeyMaterial::None),
            KeySource::KeyFile(p) => key(read_file(p)?, p),
            KeySource::KeyStdin => key(read_stdin()?, "standard input"),
            KeySource::PassphraseFile(p) => passphrase(read_file(p)?),
            KeySource::PassphraseStdin => passphrase(read_stdin()?),
        }
    }
}
