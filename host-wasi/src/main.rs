//! `cairn-wasi`: cairn's restore verification as a WASI command. Given a
//! preopened directory holding an archive, it decodes the archive with the
//! core, loads the database image into SQLite compiled into this same
//! module, and runs `PRAGMA integrity_check` and `foreign_key_check`. It can
//! touch nothing but what the runtime grants it, so a hostile archive is
//! contained by the runtime's sandbox.
//!
//!     wasmtime run --dir backups::/backup cairn-wasi.wasm verify /backup/snapshots/ID.db.gz
//!     wasmtime run --dir backups::/backup --dir scratch::/scratch cairn-wasi.wasm verify /backup/snapshots/ID.db.gz --scratch /scratch
//!     wasmtime run --dir backups::/backup cairn-wasi.wasm verify /backup/snapshots/ID.db.cairn --key-file /backup/key.txt
//!     wasmtime run cairn-wasi.wasm decode < ID.db.gz > app.db

mod args;
mod checks;
mod claim;
#[cfg(all(feature = "host-crypto", target_arch = "wasm32"))]
mod host_crypto;
mod inspect;
mod report;
mod vfs;

use std::io::{Read, Write};

use cairn_core::chunk::AeadFactory;
use cairn_core::{Decoder, KeyMaterial};

use args::{Command, USAGE};
use report::Report;

/// The AES-GCM chunks are opened with: the host's when it lends one.
fn aead() -> AeadFactory {
    #[cfg(all(feature = "host-crypto", target_arch = "wasm32"))]
    return host_crypto::aead;
    #[cfg(not(all(feature = "host-crypto", target_arch = "wasm32")))]
    cairn_core::chunk::soft_aead
}

fn decode(key: KeyMaterial) -> Result<String, String> {
    let mut dec = Decoder::with_aead(key, aead());
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = stdin
            .read(&mut buf)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            break;
        }
        // Fed, then pulled a chunk at a time: one read of a zeroblob
        // archive can hold hundreds of MiB of plaintext.
        dec.feed(&buf[..n]).map_err(|e| e.to_string())?;
        while let Some(plain) = dec.pull().map_err(|e| e.to_string())? {
            stdout
                .write_all(&plain)
                .map_err(|e| format!("writing stdout: {e}"))?;
        }
    }
    let s = dec.finish().map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| format!("writing stdout: {e}"))?;
    Ok(format!(
        "ok: archive {} ({}), {} chunks, {} bytes, sha256 {}",
        s.meta.archive_id_hex(),
        s.meta.db_name,
        s.chunks,
        s.plain_len,
        cairn_core::header::hex(&s.plain_sha256)
    ))
}

fn main() {
    let code = match args::parse(std::env::args().skip(1)) {
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            2
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            0
        }
        Ok(Command::Decode { key }) => match key.load().and_then(decode) {
            Ok(summary) => {
                eprintln!("{summary}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Ok(Command::Verify {
            archive,
            key,
            json,
            expect_size,
            scratch,
            host_digests,
        }) => {
            let opts = inspect::Options {
                expect_size,
                scratch: scratch.as_deref(),
                host_digests,
            };
            let report = match key.load() {
                Ok(key) => inspect::verify(&archive, key, opts, aead()),
                Err(e) => Report::failed(&archive, "key", None, e),
            };
            report.print(json);
            if report.ok { 0 } else { 1 }
        }
    };
    std::process::exit(code);
}
