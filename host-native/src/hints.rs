//! What to tell the user after a core error: the fix, not just the fault.

use cairn_core::ErrorCode;

/// Wraps an error from reading `object` with a hint that fits its kind.
pub fn archive_error(e: anyhow::Error, object: &str, dest: &str) -> anyhow::Error {
    let Some(code) = e.downcast_ref::<cairn_core::Error>().map(|c| c.code()) else {
        return e.context(format!("cannot read backup {object}"));
    };
    let hint = match code {
        ErrorCode::WrongKey => {
            "give the key this backup was made with (--key-file or --key-env)".to_string()
        }
        ErrorCode::KeyRequired => {
            "pass its key with --key-file or --key-env (or --passphrase-file / --passphrase-env)"
                .to_string()
        }
        ErrorCode::InvalidKey => "check the key option".to_string(),
        c if c.is_damage() => {
            format!(
                "the backup is damaged or was tampered with; use another one with --id (see `cairn list {dest}`)"
            )
        }
        _ => "check that this is a cairn backup".to_string(),
    };
    anyhow::anyhow!("{object}: {e}; {hint}")
}

/// Opening a catalogued object failed: it is missing, or unreadable.
pub fn open_error(e: std::io::Error, object: &str, dest: &str) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{object} is listed in the catalog but missing; use another backup with --id (see `cairn list {dest}`)"
        ),
        _ => anyhow::anyhow!("cannot read {object}: {e}"),
    }
}

/// The archive decoded, but SQLite's checks failed on the database in it.
pub fn unsound_error(e: impl std::fmt::Display, object: &str, dest: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{object}: the archive decodes, but the database in it is not sound: {e}; use another backup with --id (see `cairn list {dest}`)"
    )
}
