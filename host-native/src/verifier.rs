//! The sandboxed verifier: `cairn-wasi` (decoder and SQLite, built from
//! host-wasi/) run inside the embedded wasmtime. It sees one directory,
//! read-only, and its key on stdin; no other files, no network, no
//! environment; memory is capped and the whole run has a deadline. All the
//! host takes back is its JSON report.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use aes_gcm::aead::AeadInOut;
use anyhow::{Result, anyhow};
use cairn_core::KeyMaterial;
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx};

use crate::sandbox::{self, Limits, Runtime, State};

/// The verifier that imports only WASI: runs in any WASI runtime
/// (`cairn verifier export` writes it out).
pub static PORTABLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cairn-wasi.wasm"));
/// The same verifier importing `cairn:core/host-crypto`: what `cairn verify` runs.
pub static ACCELERATED: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn-wasi-host-crypto.wasm"));

/// Where the archive's directory appears inside the guest.
pub const GUEST_DIR: &str = "/backup";

/// One table of the verified database.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Table {
    pub name: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Failure {
    pub stage: String,
    pub code: Option<String>,
    pub message: String,
}

/// The guest's report (host-wasi/src/report.rs), as it printed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub archive_id: Option<String>,
    pub plain_len: Option<u64>,
    pub plain_sha256: Option<String>,
    pub stored_len: Option<u64>,
    pub stored_sha256: Option<String>,
    pub page_size: Option<u64>,
    pub page_count: Option<u64>,
    #[serde(default)]
    pub integrity: Vec<String>,
    pub foreign_key_violations: Option<u64>,
    #[serde(default)]
    pub tables: Vec<Table>,
    pub error: Option<Failure>,
}

/// Where the guest reads the archive from.
pub enum Source<'a> {
    /// `archive` is a path under `GUEST_DIR`, which maps to `dir` (read-only).
    File { dir: &'a Path, archive: &'a str },
    /// Streamed into the guest's stdin (a remote object): no copy on disk,
    /// and the guest gets no directory at all.
    Stream(Box<dyn Read + Send + 'a>),
}

/// What to verify.
pub struct Request<'a> {
    pub source: Source<'a>,
    pub key: &'a KeyMaterial,
    /// The database size the catalog promises: reserves the image up front.
    pub expect_size: Option<u64>,
    pub limits: Limits,
    /// Run the portable build, with AES-GCM in wasm, instead of the accelerated one.
    pub portable: bool,
}

struct Verifier {
    accelerated: CommandPre<State>,
    portable: CommandPre<State>,
}

static VERIFIER: OnceLock<Result<Verifier, String>> = OnceLock::new();

fn verifier() -> Result<&'static Verifier> {
    VERIFIER
        .get_or_init(|| load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("cannot start the sandboxed verifier: {e}"))
}

fn load() -> Result<Verifier> {
    let engine = Runtime::get()?.engine();
    let mut linker = Linker::<State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow!("{e}"))?;
    linker
        .instance("cairn:core/host-crypto@0.1.0")
        .and_then(|mut i| {
            i.func_wrap(
                "aes256gcm-open",
                |_, (key, nonce, aad, sealed): (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)| {
                    Ok((aes256gcm_open(&key, &nonce, &aad, sealed),))
                },
            )
        })
        .map_err(|e| anyhow!("{e}"))?;
    let pre = |bytes: &[u8], name: &str| -> Result<CommandPre<State>> {
        let component = sandbox::load_component(engine, bytes, name)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{e}"))?;
        CommandPre::new(pre).map_err(|e| anyhow!("{e}"))
    };
    Ok(Verifier {
        accelerated: pre(ACCELERATED, "cairn-wasi-host-crypto")?,
        portable: pre(PORTABLE, "cairn-wasi")?,
    })
}

/// The host side of `host-crypto`: decrypt only. Malformed arguments
/// authenticate nothing.
fn aes256gcm_open(key: &[u8], nonce: &[u8], aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    let key: &[u8; 32] = key.try_into().ok()?;
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    let split = sealed.len().checked_sub(cairn_core::chunk::TAG_LEN)?;
    let tag: [u8; 16] = sealed[split..].try_into().ok()?;
    sealed.truncate(split);
    cairn_core::chunk::cipher(key)
        .decrypt_inout_detached(
            &nonce.into(),
            aad,
            sealed.as_mut_slice().into(),
            &tag.into(),
        )
        .ok()?;
    Some(sealed)
}

/// Runs the verifier. `Err` means the sandbox itself stopped it (a limit, a
/// trap, a crash); a report with `ok: false` means the archive failed a check.
pub fn run(req: Request) -> Result<Report> {
    let v = verifier()?;
    let Request {
        source,
        key,
        expect_size,
        limits,
        portable,
    } = req;
    let (dir, archive, stream) = match source {
        Source::File { dir, archive } => (Some(dir), archive.to_string(), None),
        Source::Stream(r) => (None, "-".to_string(), Some(r)),
    };
    let mut args = vec![
        "cairn-wasi".to_string(),
        "verify".into(),
        archive,
        "--json".into(),
    ];
    let key_line = match key {
        KeyMaterial::None => String::new(),
        KeyMaterial::Key(k) => {
            args.push("--key-stdin".into());
            hex::encode(k.0)
        }
        KeyMaterial::Passphrase(p) => {
            args.push("--passphrase-stdin".into());
            p.clone()
        }
    };
    if let Some(n) = expect_size {
        args.extend(["--expect-size".into(), n.to_string()]);
    }
    let stdout = MemoryOutputPipe::new(4 << 20);
    let stderr = MemoryOutputPipe::new(64 << 10);
    let mut wasi = WasiCtx::builder();
    wasi.args(&args)
        .stdout(stdout.clone())
        .stderr(stderr.clone());
    if let Some(dir) = dir {
        wasi.stdin(MemoryInputPipe::new(key_line.clone().into_bytes()))
            .preopened_dir(dir, GUEST_DIR, FsPerms::ReadOnly)
            .map_err(|e| anyhow!("cannot open {} for the sandbox: {e}", dir.display()))?;
    }
    let pre = if portable {
        &v.portable
    } else {
        &v.accelerated
    };
    let hit = Arc::new(AtomicBool::new(false));
    let run_guest = |wasi: WasiCtx| -> Result<Result<Result<(), ()>, wasmtime::Error>> {
        let mut store = Runtime::get()?.store(wasi, limits, hit.clone());
        Ok(pre
            .instantiate(&mut store)
            .and_then(|cmd| cmd.wasi_cli_run().call_run(&mut store)))
    };
    let (exit, feed_error) = match stream {
        None => (run_guest(wasi.build())?, None),
        Some(mut input) => {
            // The key's line, then the archive, through an OS pipe that the
            // guest reads as stdin; a feeder thread copies in bounded pieces.
            let (reader, mut writer) =
                std::io::pipe().map_err(|e| anyhow!("cannot make a pipe for the sandbox: {e}"))?;
            let file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
            std::thread::scope(|s| {
                let feeder = s.spawn(move || -> std::io::Result<()> {
                    if !key_line.is_empty() {
                        writer.write_all(format!("{key_line}\n").as_bytes())?;
                    }
                    match std::io::copy(&mut input, &mut writer) {
                        Ok(_) => Ok(()),
                        // The guest stopped reading (it found a fault): not ours to report.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                        Err(e) => Err(e),
                    }
                });
                // The store (and with it the pipe's read end) is dropped when
                // run_guest returns, so a feeder blocked on a full pipe wakes.
                let exit = run_guest(wasi.build());
                let fed = feeder
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the feeder thread panicked")));
                Ok::<_, anyhow::Error>((exit?, fed.err()))
            })?
        }
    };
    if let Some(e) = feed_error {
        return Err(anyhow!("cannot read the archive: {e}"));
    }
    let code = match exit {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 1,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => *code,
            None => return Err(sandbox::classify(e, &hit, limits)),
        },
    };
    let out = stdout.contents();
    let report: Report = serde_json::from_slice(&out).map_err(|e| {
        anyhow!(
            "the sandboxed verifier exited with {code} and no readable report ({e}): {}",
            String::from_utf8_lossy(&stderr.contents()).trim()
        )
    })?;
    if report.ok != (code == 0) {
        return Err(anyhow!(
            "the sandboxed verifier's report (ok: {}) contradicts its exit code {code}",
            report.ok
        ));
    }
    Ok(report)
}

impl Report {
    /// A failed check as an error the CLI can explain; a decode failure
    /// keeps its core error code so the hint fits (wrong key, damage…).
    pub fn into_result(self) -> Result<Self> {
        let Some(f) = &self.error else {
            return Ok(self);
        };
        let code = f.code.as_deref().and_then(cairn_core::ErrorCode::from_name);
        Err(match code {
            Some(code) => cairn_core::Error::Remote {
                code,
                message: f.message.clone(),
            }
            .into(),
            None => anyhow!("{}", f.message),
        })
    }
}
