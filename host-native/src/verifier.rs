//! The sandboxed verifier: `cairn-wasi` (decoder and SQLite, built from
//! host-wasi/) run inside the embedded wasmtime. It sees the archive's
//! directory read-only (or the archive on stdin), its key on stdin, and one
//! private scratch directory, writable, that this host creates for the run
//! and removes after it: the guest decodes the database into a file there
//! and SQLite reads it back page by page, so the guest's memory stays small
//! whatever the database's size. No other files, no network, no
//! environment; memory is capped, the whole run has a deadline, and a watch
//! on the scratch directory stops the guest once it holds more than the
//! database the catalog promises (a decompression bomb cannot fill the
//! disk). All the host takes back is its JSON report.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInOut;
use anyhow::{Result, anyhow};
use cairn_core::KeyMaterial;
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime::{Trap, UpdateDeadline};
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
/// Where the private scratch directory appears inside the guest.
pub const SCRATCH_DIR: &str = "/scratch";
/// How often the scratch directory's size is looked at.
const SCRATCH_POLL: Duration = Duration::from_millis(20);
/// More entries than this in the scratch directory stop the guest: it needs one.
const SCRATCH_ENTRIES: usize = 16;

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
    /// The guest left both SHA-256 sums to the host (`--host-digests`).
    #[serde(default)]
    pub digests_by_host: bool,
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
    /// The database size the catalog promises: the guest refuses to decode more.
    pub expect_size: Option<u64>,
    pub limits: Limits,
    /// Where to create the private scratch directory.
    pub temp_dir: &'a Path,
    /// The most bytes the scratch directory may hold before the guest is
    /// stopped (enforced here, whatever the guest does).
    pub scratch_limit: u64,
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
/// trap, a crash, the scratch watch); a report with `ok: false` means the
/// archive failed a check.
pub fn run(req: Request) -> Result<Report> {
    let v = verifier()?;
    let Request {
        source,
        key,
        expect_size,
        limits,
        temp_dir,
        scratch_limit,
        portable,
    } = req;
    let scratch = tempfile::Builder::new()
        .prefix(".cairn-verify-scratch-")
        .tempdir_in(temp_dir)
        .map_err(|e| {
            anyhow!(
                "cannot create a scratch directory in {} ({e}); set --temp-dir",
                temp_dir.display()
            )
        })?;
    let (dir, archive, stream) = match source {
        Source::File { dir, archive } => (Some(dir), archive.to_string(), None),
        Source::Stream(r) => (None, "-".to_string(), Some(r)),
    };
    // The digests are taken here, natively, when the host can read the very
    // bytes the guest does: a stream it feeds, or a file directly in `dir`.
    // The portable build keeps its promise of trusting the host for nothing.
    let archive_file = dir.and_then(|d| {
        let name = archive.strip_prefix(GUEST_DIR)?.strip_prefix('/')?;
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        // Not through a symbolic link, which the guest would not follow either.
        let path = d.join(name);
        (plain && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())).then_some(path)
    });
    let host_digests = !portable && (stream.is_some() || archive_file.is_some());
    let mut args = vec![
        "cairn-wasi".to_string(),
        "verify".into(),
        archive,
        "--json".into(),
        "--scratch".into(),
        SCRATCH_DIR.into(),
    ];
    if host_digests {
        args.push("--host-digests".into());
    }
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
        .stderr(stderr.clone())
        // The guest runs on a thread of its own, which may block: without
        // this, every file read and write of the guest (one per SQLite page)
        // is handed to tokio's blocking pool and back, which cost more than
        // the read itself.
        .allow_blocking_current_thread(true);
    wasi.preopened_dir(scratch.path(), SCRATCH_DIR, FsPerms::ReadWrite)
        .map_err(|e| {
            anyhow!(
                "cannot open {} for the sandbox: {e}",
                scratch.path().display()
            )
        })?;
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
    let over = Arc::new(AtomicBool::new(false));
    let done = AtomicBool::new(false);
    let run_in_store = |wasi: WasiCtx| -> Result<Result<Result<(), ()>, wasmtime::Error>> {
        let mut store = Runtime::get()?.store(wasi, limits, hit.clone());
        // Checked on every epoch tick: the scratch watch's verdict, and the
        // deadline for the whole run.
        let deadline = Instant::now() + limits.call_timeout;
        let stop = over.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if stop.load(Ordering::SeqCst) {
                return Err(wasmtime::Error::msg(
                    "the scratch directory is over its limit",
                ));
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::new(Trap::Interrupt));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        Ok(pre
            .instantiate(&mut store)
            .and_then(|cmd| cmd.wasi_cli_run().call_run(&mut store)))
    };
    // However it ends, the threads below stop with it.
    let run_guest = |wasi: WasiCtx| {
        let exit = run_in_store(wasi);
        done.store(true, Ordering::SeqCst);
        exit
    };
    // The watch: polls the scratch directory's size until the guest ends.
    let watch = || {
        while !done.load(Ordering::SeqCst) {
            if scratch_usage(scratch.path()) > scratch_limit {
                over.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(SCRATCH_POLL);
        }
    };
    // The decoded database's digest, from the moment the guest renames it
    // into place (decoded and checked; SQLite reads it meanwhile).
    let decoded = scratch.path().join("database");
    let hash_decoded = || -> std::io::Result<Option<Digest>> {
        loop {
            let finished = done.load(Ordering::SeqCst);
            if decoded.is_file() {
                return std::fs::File::open(&decoded).and_then(digest).map(Some);
            }
            if finished {
                return Ok(None);
            }
            std::thread::sleep(SCRATCH_POLL);
        }
    };
    let streamed = stream.is_some();
    // The key's line, then the archive, through an OS pipe that the guest
    // reads as stdin; a feeder thread copies in bounded pieces, hashing what
    // it feeds.
    let stream = match stream {
        None => None,
        Some(input) => {
            let (reader, writer) =
                std::io::pipe().map_err(|e| anyhow!("cannot make a pipe for the sandbox: {e}"))?;
            let file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
            wasi.stdin(wasmtime_wasi::cli::InputFile::new(file));
            Some((input, writer))
        }
    };
    let (exit, stored, plain) = std::thread::scope(|s| {
        s.spawn(watch);
        let plain = host_digests.then(|| s.spawn(hash_decoded));
        let (exit, stored) = match stream {
            None => {
                let stored = archive_file
                    .as_ref()
                    .filter(|_| host_digests)
                    .map(|p| s.spawn(move || std::fs::File::open(p).and_then(digest)));
                let exit = run_guest(wasi.build());
                (exit, stored.map(join))
            }
            Some((input, mut writer)) => {
                let feeder = s.spawn(move || -> std::io::Result<Digest> {
                    if !key_line.is_empty() {
                        writer.write_all(format!("{key_line}\n").as_bytes())?;
                    }
                    let mut input = Hashing::new(input);
                    match std::io::copy(&mut input, &mut writer) {
                        Ok(_) => Ok(input.digest()),
                        // The guest stopped reading (it found a fault): not
                        // ours to report; the digest is then not used.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(input.digest()),
                        Err(e) => Err(e),
                    }
                });
                // The store (and with it the pipe's read end) is dropped when
                // run_guest returns, so a feeder blocked on a full pipe wakes.
                let exit = run_guest(wasi.build());
                (exit, Some(join(feeder)))
            }
        };
        Ok::<_, anyhow::Error>((exit?, stored, plain.map(join)))
    })?;
    // Looked at once more: a guest faster than the watch is held to it too.
    if over.load(Ordering::SeqCst) || scratch_usage(scratch.path()) > scratch_limit {
        return Err(anyhow!(
            "the sandbox stopped the verifier: its scratch directory grew past {scratch_limit} bytes, \
             more than the database the catalog promises; the archive is not what it claims \
             (a decompression bomb?), use another backup with --id"
        ));
    }
    drop(scratch);
    // A stream the host could not read is the host's failure; a file only
    // matters if the guest passed it (settle_digests).
    if streamed && let Some(Err(e)) = &stored {
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
    let mut report: Report = serde_json::from_slice(&out).map_err(|e| {
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
    if report.digests_by_host != host_digests {
        return Err(anyhow!(
            "the sandboxed verifier's report does not say who took the digests as asked"
        ));
    }
    if host_digests && report.ok {
        let stored = stored.and_then(Result::ok);
        let plain = match plain {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(anyhow!("cannot read the sandbox's decoded database: {e}")),
            None => None,
        };
        settle_digests(&mut report, stored, plain)?;
    }
    Ok(report)
}

/// A SHA-256 and the length of what it covers.
type Digest = ([u8; 32], u64);

fn digest(mut r: impl Read) -> std::io::Result<Digest> {
    let mut h = Hashing::new(&mut r);
    std::io::copy(&mut h, &mut std::io::sink())?;
    Ok(h.digest())
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, std::io::Result<T>>) -> std::io::Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(std::io::Error::other("a digest thread panicked")))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        use sha2::Digest as _;
        Hashing {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    fn digest(self) -> Digest {
        use sha2::Digest as _;
        (self.hasher.finalize().into(), self.len)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// With `--host-digests` the guest reported the trailer's claim for the
/// decoded data and no digest of the archive: here the host's own digests
/// take their place, and a decoded database that does not hash to the
/// trailer's claim fails as the core's decoder would have failed it.
fn settle_digests(
    report: &mut Report,
    stored: Option<Digest>,
    plain: Option<Digest>,
) -> Result<()> {
    let (Some((stored_sha, stored_len)), Some((plain_sha, plain_len))) = (stored, plain) else {
        return Err(anyhow!(
            "the sandboxed verifier passed, but the host could not hash what it checked"
        ));
    };
    if report.stored_len != Some(stored_len) {
        return Err(anyhow!(
            "the archive changed while it was verified ({} bytes read by the sandbox, {stored_len} by the host)",
            report.stored_len.unwrap_or_default()
        ));
    }
    report.stored_sha256 = Some(hex::encode(stored_sha));
    let claimed = report.plain_sha256.take();
    report.plain_sha256 = Some(hex::encode(plain_sha));
    if claimed.as_deref() != report.plain_sha256.as_deref() || report.plain_len != Some(plain_len) {
        report.ok = false;
        report.error = Some(Failure {
            stage: "decode".into(),
            code: Some(cairn_core::ErrorCode::ChecksumMismatch.name().into()),
            message: "the SHA-256 of the decoded data differs from the one in the trailer".into(),
        });
    }
    Ok(())
}

/// Bytes held in the scratch directory, counting every entry (at 4 KiB
/// each, walked into subdirectories); more than SCRATCH_ENTRIES entries
/// count as unlimited. Symbolic links are not followed.
fn scratch_usage(dir: &Path) -> u64 {
    fn walk(dir: &Path, entries: &mut usize) -> u64 {
        let Ok(list) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0u64;
        for e in list.flatten() {
            *entries += 1;
            if *entries > SCRATCH_ENTRIES {
                return u64::MAX;
            }
            let Ok(meta) = e.metadata() else { continue };
            let size = if meta.is_dir() {
                walk(&e.path(), entries)
            } else {
                meta.len()
            };
            total = total.saturating_add(4096).saturating_add(size);
        }
        total
    }
    walk(dir, &mut 0)
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

#[cfg(test)]
mod tests {
    use super::{Report, settle_digests};

    fn report(plain_sha: [u8; 32]) -> Report {
        serde_json::from_value(serde_json::json!({
            "ok": true,
            "plain_len": 10,
            "plain_sha256": hex::encode(plain_sha),
            "stored_len": 20,
            "digests_by_host": true,
        }))
        .unwrap()
    }

    #[test]
    fn the_hosts_digests_replace_the_claims_and_a_mismatch_fails_the_check() {
        let mut r = report([1; 32]);
        settle_digests(&mut r, Some(([2; 32], 20)), Some(([1; 32], 10))).unwrap();
        assert!(r.ok && r.error.is_none());
        assert_eq!(r.stored_sha256, Some(hex::encode([2; 32])));

        // The decoded file does not hash to the trailer's claim: damage.
        let mut r = report([1; 32]);
        settle_digests(&mut r, Some(([2; 32], 20)), Some(([3; 32], 10))).unwrap();
        assert!(!r.ok);
        let f = r.error.unwrap();
        assert_eq!(
            (f.stage.as_str(), f.code.as_deref()),
            ("decode", Some("checksum-mismatch"))
        );
        assert_eq!(r.plain_sha256, Some(hex::encode([3; 32])));

        // Nothing to hash, or an archive that changed under the check.
        let mut r = report([1; 32]);
        assert!(settle_digests(&mut r, None, Some(([1; 32], 10))).is_err());
        let mut r = report([1; 32]);
        let e = settle_digests(&mut r, Some(([2; 32], 21)), Some(([1; 32], 10))).unwrap_err();
        assert!(
            e.to_string().contains("changed while it was verified"),
            "{e}"
        );
    }
}
