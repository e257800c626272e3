//! `cairn-wasi`: cairn's archive decoder as a WASI command. It reads an
//! archive on stdin and writes the database to stdout, checking every chunk
//! and the trailer; the report goes to stderr and any failure exits 1.
//!
//!     wasmtime run --dir . cairn-wasi.wasm -- --key-file key.txt < backup.db.cairn > app.db
//!
//! The full sandboxed verifier (SQLite inside, integrity_check) builds on this.

use std::io::{Read, Write};

use cairn_core::{Decoder, KeyMaterial, MasterKey};

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let key = match args.as_slice() {
        [] => KeyMaterial::None,
        [flag, path] if flag == "--key-file" => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read key file {path}: {e}"))?;
            KeyMaterial::Key(MasterKey::parse(&text).map_err(|e| format!("key file {path}: {e}"))?)
        }
        _ => return Err("usage: cairn-wasi [--key-file PATH] < ARCHIVE > DATABASE".into()),
    };
    let mut dec = Decoder::new(key);
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = stdin
            .read(&mut buf)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            break;
        }
        let plain = dec.push(&buf[..n]).map_err(|e| e.to_string())?;
        stdout
            .write_all(&plain)
            .map_err(|e| format!("writing stdout: {e}"))?;
    }
    let s = dec.finish().map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| format!("writing stdout: {e}"))?;
    Ok(format!(
        "ok: archive {} ({}), {} chunks, {} bytes, sha256 {}",
        s.meta.archive_id_hex(),
        s.meta.db_name,
        s.chunks,
        s.plain_len,
        s.plain_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

fn main() {
    match run() {
        Ok(report) => eprintln!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
