//! The SFTP backend (`cairn::storage`, sftp://) against a real OpenSSH sshd on
//! 127.0.0.1 (tests/src/servers.rs): round trips, create-only publishing,
//! listing, sweeping, host-key trust, every way to authenticate, reconnects.
//!
//! Tests that need another environment (the key passphrase, ssh-agent, HOME)
//! run in a child process of this test binary instead of calling set_var:
//! the environment is process-global and other tests run in parallel.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn::storage::url::SftpConfig;
use cairn::storage::{self, Body, Chunk, Cond, Location, Put, SharedBackend};
use cairn_e2e::servers::SshServer;
use futures::TryStreamExt;
use tokio::sync::mpsc;

fn config(srv: &SshServer, sub: &str) -> SftpConfig {
    SftpConfig {
        user: srv.user.clone(),
        host: "127.0.0.1".into(),
        port: srv.port,
        path: srv.root.join(sub).to_string_lossy().into_owned(),
        identity: Some(srv.key.clone()),
        known_hosts: Some(srv.known_hosts.clone()),
    }
}

async fn open(c: SftpConfig) -> Result<SharedBackend, String> {
    storage::open(&Location::Sftp(c))
        .await
        .map_err(|e| format!("{e:#}"))
}

/// Deterministic bytes that do not compress (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Streams `data` in `piece`-sized chunks through a `Body`.
async fn upload(
    b: &SharedBackend,
    key: &str,
    data: &[u8],
    piece: usize,
    cond: Cond,
) -> io::Result<Put> {
    let (tx, rx) = mpsc::channel(4);
    let data = Bytes::copy_from_slice(data);
    let feeder = tokio::spawn(async move {
        let mut at = 0;
        while at < data.len() {
            let end = (at + piece).min(data.len());
            if tx.send(Chunk::Data(data.slice(at..end))).await.is_err() {
                return;
            }
            at = end;
        }
        let _ = tx.send(Chunk::End).await;
    });
    let r = b.upload(key, Body::new(rx), cond).await;
    feeder.await.unwrap();
    r
}

async fn read_all(b: &SharedBackend, key: &str) -> io::Result<Vec<u8>> {
    let pieces: Vec<Bytes> = b.read(key).await?.try_collect().await?;
    Ok(pieces.concat())
}

/// cairn's temp files anywhere under `dir`.
fn temps(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temps(&p));
        } else if storage::is_temp_name(&e.file_name().to_string_lossy()) {
            out.push(p);
        }
    }
    out
}

fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", "cairn-test", "-f"])
        .arg(path)
        .stdin(Stdio::null());
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let out = cmd.output().expect("running ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lets `key` (a private key path) in. sshd re-reads AuthorizedKeysFile on
/// every login; the fixture keeps it beside the user key.
fn authorize(srv: &SshServer, key: &Path) {
    let file = srv.key.with_file_name("authorized_keys");
    assert!(
        file.is_file(),
        "the fixture's authorized_keys moved: {}",
        file.display()
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut all = std::fs::read_to_string(&file).unwrap();
    all.push_str(&public);
    std::fs::write(&file, all).unwrap();
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cairn-sftp-test-")
        .tempdir()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_small_and_large_objects() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    assert_eq!(b.scheme(), "sftp");
    let want = format!("sftp://{}@127.0.0.1:{}", srv.user, srv.port);
    assert!(
        b.describe("x/y").starts_with(&want),
        "{}",
        b.describe("x/y")
    );
    assert!(
        b.describe("x/y").ends_with("/dest/x/y"),
        "{}",
        b.describe("x/y")
    );

    // Small, in one put; the directories are created on the way.
    let small = Bytes::from_static(b"hello, sftp");
    let put = b
        .put("a/b/small.txt", small.clone(), Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(put, Put::Written);
    assert_eq!(b.get("a/b/small.txt").await.unwrap(), Some(small.clone()));
    assert_eq!(read_all(&b, "a/b/small.txt").await.unwrap(), small);
    assert_eq!(
        std::fs::read(srv.root.join("dest/a/b/small.txt")).unwrap(),
        small
    );

    // An empty object.
    b.put("empty", Bytes::new(), Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(b.get("empty").await.unwrap(), Some(Bytes::new()));
    assert!(read_all(&b, "empty").await.unwrap().is_empty());

    // Large, streamed in uneven pieces (not a multiple of the SFTP piece size).
    let large = noise(20 << 20, 7);
    let t = Instant::now();
    let put = upload(&b, "chunks/large.bin", &large, 1_000_003, Cond::CreateOnly)
        .await
        .unwrap();
    let up = t.elapsed();
    assert_eq!(put, Put::Written);
    let t = Instant::now();
    let back = read_all(&b, "chunks/large.bin").await.unwrap();
    let down = t.elapsed();
    assert!(back == large, "20 MiB read back differs");
    assert!(b.get("chunks/large.bin").await.unwrap().unwrap() == large);
    assert!(std::fs::read(srv.root.join("dest/chunks/large.bin")).unwrap() == large);
    eprintln!("20 MiB over SFTP: upload {up:?}, read {down:?}");

    // A stream dropped half way closes its handle; the next reads work.
    let mut s = b.read("chunks/large.bin").await.unwrap();
    let first = s.try_next().await.unwrap().unwrap();
    assert!(!first.is_empty() && large.starts_with(&first));
    drop(s);

    // Absent objects.
    assert_eq!(b.get("nope").await.unwrap(), None);
    let e = b
        .read("nope")
        .await
        .err()
        .expect("reading an absent object fails");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("/dest/nope"), "{e}");

    // Bad keys are refused, never sent.
    for key in ["../escape", "/abs", "a//b", ""] {
        let e = b.get(key).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{key}: {e}");
    }
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_never_replaces_and_overwrite_does() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    let one = Bytes::from_static(b"first");
    let two = Bytes::from_static(b"second");
    assert_eq!(
        b.put("k", one.clone(), Cond::CreateOnly).await.unwrap(),
        Put::Written
    );
    assert_eq!(
        b.put("k", two.clone(), Cond::CreateOnly).await.unwrap(),
        Put::Exists
    );
    assert_eq!(b.get("k").await.unwrap(), Some(one.clone()));
    let put = upload(&b, "k", &noise(3 << 20, 1), 65536, Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(put, Put::Exists);
    assert_eq!(b.get("k").await.unwrap(), Some(one));
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));

    assert_eq!(
        b.put("k", two.clone(), Cond::Overwrite).await.unwrap(),
        Put::Written
    );
    assert_eq!(b.get("k").await.unwrap(), Some(two));
    let big = noise(1 << 20, 2);
    let put = upload(&b, "k", &big, 100_000, Cond::Overwrite)
        .await
        .unwrap();
    assert_eq!(put, Put::Written);
    assert!(b.get("k").await.unwrap().unwrap() == big);
    // Overwrite also creates.
    assert_eq!(
        b.put("new/hint.txt", Bytes::from_static(b"x"), Cond::Overwrite)
            .await
            .unwrap(),
        Put::Written
    );
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upload_publishes_nothing_and_leaves_no_temp() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        for _ in 0..8 {
            tx.send(Chunk::Data(Bytes::from(noise(300_000, 3))))
                .await
                .unwrap();
        }
        // Dropped without Chunk::End: the writer gave up.
    });
    let e = b
        .upload("sub/gone.bin", Body::new(rx), Cond::CreateOnly)
        .await
        .unwrap_err();
    feeder.await.unwrap();
    assert!(e.to_string().contains("abandoned"), "{e}");
    assert!(e.to_string().contains("/dest/sub/gone.bin"), "{e}");
    assert_eq!(b.get("sub/gone.bin").await.unwrap(), None);
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_delete_and_sweep_temps() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    // Listing a destination that does not exist yet is empty, not an error.
    assert!(b.list("", None).await.unwrap().is_empty());
    for (k, n) in [
        ("b.txt", 2),
        ("a.txt", 1),
        ("chunks/c2", 20),
        ("chunks/c1", 10),
        ("chunks/c3", 30),
    ] {
        b.put(k, Bytes::from(vec![b'x'; n]), Cond::CreateOnly)
            .await
            .unwrap();
    }
    let root = srv.root.join("dest");
    std::fs::write(root.join(".hidden"), b"not an object").unwrap();
    std::fs::write(root.join(".a.txt.host.1.abcdef.tmp"), b"a temp").unwrap();

    let top = b.list("", None).await.unwrap();
    let keys: Vec<&str> = top.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a.txt", "b.txt"],
        "files only, no dirs, dot files or temps"
    );
    assert_eq!((top[0].size, top[1].size), (1, 2));
    let now = storage::now_ms();
    for o in &top {
        let m = o.modified_ms.expect("sftp lists mtimes");
        assert!((now - m).abs() < 600_000, "{o:?}");
    }
    let chunks = b.list("chunks/", None).await.unwrap();
    let keys: Vec<&str> = chunks.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["chunks/c1", "chunks/c2", "chunks/c3"]);
    assert_eq!(chunks[1].size, 20);
    let after = b.list("chunks/", Some("chunks/c1")).await.unwrap();
    let keys: Vec<&str> = after.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["chunks/c2", "chunks/c3"]);
    assert!(
        b.list("chunks/", Some("chunks/c3"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.list("missing/", None).await.unwrap().is_empty());
    let e = b.list("chunks", None).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");

    // Deleting: absent keys are fine.
    let del = ["a.txt", "never-was", "chunks/c2"].map(String::from);
    b.delete(&del).await.unwrap();
    let keys: Vec<String> = b
        .list("", None)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["b.txt"]);
    let keys: Vec<String> = b
        .list("chunks/", None)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["chunks/c1", "chunks/c3"]);
    b.delete(&[]).await.unwrap();

    // Sweeping: old temps in the root and its direct subdirectories go;
    // fresh temps, deeper ones and other dot files stay.
    std::fs::create_dir_all(root.join("chunks/deeper")).unwrap();
    let old = SystemTime::now() - Duration::from_secs(7200);
    let age = |p: &Path| {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(old).unwrap();
    };
    let stale_top = root.join(".a.txt.host.1.abcdef.tmp");
    let stale_sub = root.join("chunks/.c9.host.2.012345.tmp");
    let deeper = root.join("chunks/deeper/.d.host.3.000000.tmp");
    let fresh = root.join(".b.txt.host.4.111111.tmp");
    for p in [&stale_sub, &deeper, &fresh] {
        std::fs::write(p, b"temp").unwrap();
    }
    for p in [&stale_top, &stale_sub, &deeper, &root.join(".hidden")] {
        age(p);
    }
    assert_eq!(b.sweep_temps(3_600_000).await.unwrap(), 2);
    assert!(!stale_top.exists() && !stale_sub.exists());
    assert!(deeper.exists() && fresh.exists() && root.join(".hidden").exists());
    assert_eq!(b.sweep_temps(3_600_000).await.unwrap(), 0);
    assert_eq!(
        b.sweep_temps(0).await.unwrap(),
        1,
        "age 0 takes the fresh one too"
    );
    assert!(!fresh.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_changed_host_keys_are_refused() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let dir = scratch();

    // Unknown: an empty known_hosts (and one that does not exist).
    for kh in [dir.path().join("empty"), dir.path().join("absent")] {
        if kh.ends_with("empty") {
            std::fs::write(&kh, "").unwrap();
        }
        let mut c = config(&srv, "dest");
        c.known_hosts = Some(kh.clone());
        let e = open(c).await.err().expect("an unknown host key is refused");
        let port = srv.port;
        for needle in [
            format!("host key of 127.0.0.1:{port} is not in {}", kh.display()),
            "fingerprint SHA256:".to_string(),
            format!("`ssh-keyscan -p {port} 127.0.0.1 >> {}`", kh.display()),
        ] {
            assert!(e.contains(&needle), "missing {needle:?} in: {e}");
        }
    }
    assert!(
        !srv.root.join("dest").exists(),
        "nothing written to an untrusted server"
    );

    // Following the advice works: the fingerprint is the server's and the
    // ssh-keyscan line is accepted.
    let kh = dir.path().join("scanned");
    let out = Command::new("ssh-keyscan")
        .args(["-p", &srv.port.to_string(), "127.0.0.1"])
        .stderr(Stdio::null())
        .output();
    if let Some(out) = out
        .ok()
        .filter(|o| o.status.success() && !o.stdout.is_empty())
    {
        std::fs::write(&kh, &out.stdout).unwrap();
        let mut c = config(&srv, "dest");
        c.known_hosts = Some(kh);
        open(c).await.unwrap();
    }

    // Changed: known_hosts holds another ed25519 key for this host and port.
    let other = dir.path().join("other_host_key");
    keygen(&other, "ed25519", "");
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let kh = dir.path().join("changed");
    std::fs::write(&kh, format!("[127.0.0.1]:{} {}", srv.port, public)).unwrap();
    let mut c = config(&srv, "dest");
    c.known_hosts = Some(kh);
    let e = open(c).await.err().expect("a changed host key is refused");
    for needle in [
        "HAS CHANGED",
        "man-in-the-middle",
        "line 1",
        "SHA256:",
        "ssh-keygen -R",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_does_not_know_is_refused() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let dir = scratch();
    let stranger = dir.path().join("stranger");
    keygen(&stranger, "ed25519", "");
    let mut c = config(&srv, "dest");
    c.identity = Some(stranger.clone());
    let t = Instant::now();
    let e = open(c).await.err().expect("an unknown key is refused");
    let who = format!(
        "SSH authentication as {}@127.0.0.1:{} failed",
        srv.user, srv.port
    );
    assert!(e.contains(&who), "{e}");
    assert!(e.contains(&stranger.display().to_string()), "{e}");
    assert!(e.contains("authorized_keys"), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refusals are not retried"
    );

    // A key file that is not there, or not a key.
    let mut c = config(&srv, "dest");
    c.identity = Some(dir.path().join("missing"));
    let e = open(c).await.err().unwrap();
    assert!(
        e.contains("cannot read key file") && e.contains("missing"),
        "{e}"
    );
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key\n").unwrap();
    let mut c = config(&srv, "dest");
    c.identity = Some(junk);
    let e = open(c).await.err().unwrap();
    assert!(e.contains("not a private key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_keys_sign_with_sha2() {
    // OpenSSH 8.8+ refuses ssh-rsa (SHA-1) signatures: a login proves the
    // client picked rsa-sha2-256/512.
    let Some(srv) = SshServer::start() else {
        return;
    };
    let dir = scratch();
    let rsa = dir.path().join("id_rsa");
    keygen(&rsa, "rsa", "");
    authorize(&srv, &rsa);
    let mut c = config(&srv, "dest");
    c.identity = Some(rsa);
    let b = open(c).await.unwrap();
    b.put("r", Bytes::from_static(b"rsa"), Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(b.get("r").await.unwrap().unwrap(), "rsa");
}

/// What `child_connect` reports: `Ok(())` or the error text.
fn run_child(
    srv: &SshServer,
    identity: Option<&Path>,
    env: &[(&str, Option<&str>)],
) -> Result<(), String> {
    let spec = [
        srv.user.clone(),
        srv.port.to_string(),
        srv.root.join("child").to_string_lossy().into_owned(),
        identity
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        srv.known_hosts.to_string_lossy().into_owned(),
    ]
    .join("\n");
    run_child_spec(&spec, env)
}

/// `run_child` for a spec of five lines: user, port, path, key file (or
/// empty for none), known_hosts.
fn run_child_spec(spec: &str, env: &[(&str, Option<&str>)]) -> Result<(), String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "storage_sftp::child_connect",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CAIRN_TEST_SFTP_CHILD", spec)
    .stdin(Stdio::null());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        // The harness prints "test child_connect ... " on the same line.
        .find_map(|l| l.split_once("RESULT: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "the child test printed no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    match line.strip_prefix("err ") {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

/// Run by `run_child` with its own environment: connects as told by
/// `CAIRN_TEST_SFTP_CHILD`, round-trips an object, prints the outcome.
#[tokio::test]
#[ignore = "a helper: the tests below run it in a child process"]
async fn child_connect() {
    let Ok(spec) = std::env::var("CAIRN_TEST_SFTP_CHILD") else {
        return;
    };
    let f: Vec<&str> = spec.split('\n').collect();
    let c = SftpConfig {
        user: f[0].into(),
        host: "127.0.0.1".into(),
        port: f[1].parse().unwrap(),
        path: f[2].into(),
        identity: Some(PathBuf::from(f[3])).filter(|p| !p.as_os_str().is_empty()),
        known_hosts: Some(f[4].into()),
    };
    let r = async {
        let b = open(c).await?;
        let data = Bytes::from(noise(1000, 9));
        b.put("probe", data.clone(), Cond::Overwrite)
            .await
            .map_err(|e| e.to_string())?;
        match b.get("probe").await.map_err(|e| e.to_string())? {
            Some(got) if got == data => Ok(()),
            other => Err(format!("read back {:?} bytes", other.map(|b| b.len()))),
        }
    }
    .await;
    match r {
        Ok(()) => println!("RESULT: ok"),
        Err(e) => println!("RESULT: err {}", e.replace('\n', " ")),
    }
}

#[test]
fn passphrase_protected_keys_need_the_passphrase() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let dir = scratch();
    let key = dir.path().join("id_locked");
    keygen(&key, "ed25519", "open sesame");
    authorize(&srv, &key);
    let pass = "CAIRN_SSH_KEY_PASSPHRASE";

    let e = run_child(&srv, Some(&key), &[(pass, None)]).unwrap_err();
    let want = format!(
        "key file {} is passphrase-protected: set CAIRN_SSH_KEY_PASSPHRASE or add it to ssh-agent",
        key.display()
    );
    assert!(e.contains(&want), "{e}");

    let e = run_child(&srv, Some(&key), &[(pass, Some("wrong"))]).unwrap_err();
    assert!(e.contains("does not decrypt"), "{e}");
    assert!(e.contains(&key.display().to_string()), "{e}");

    run_child(&srv, Some(&key), &[(pass, Some("open sesame"))]).unwrap();
    // A passphrase given for a key that has none is ignored.
    run_child(&srv, Some(&srv.key), &[(pass, Some("open sesame"))]).unwrap();
}

/// An ssh-agent in the foreground (so its PID is ours to stop).
struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Option<Agent> {
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("ssh-agent is needed under CI=true: {e}")
            }
            Err(e) => {
                eprintln!("note: skipping the ssh-agent test: {e}");
                return None;
            }
        };
        let mut agent = Agent { child, sock };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.sock.exists() {
            if Instant::now() > deadline || agent.child.try_wait().ok().flatten().is_some() {
                agent.stop();
                panic!("ssh-agent did not create {}", agent.sock.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(agent)
    }

    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh-add");
        assert!(
            out.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn ssh_agent_and_default_key_files_authenticate() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let dir = scratch();
    // HOME without keys, so only the agent can let us in.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let home_s = home.to_string_lossy().into_owned();
    let Some(agent) = Agent::start(dir.path()) else {
        return;
    };
    let sock = agent.sock.to_string_lossy().into_owned();

    // An empty agent: the error says what was tried, for whom.
    let e = run_child(
        &srv,
        None,
        &[("SSH_AUTH_SOCK", Some(&sock)), ("HOME", Some(&home_s))],
    )
    .unwrap_err();
    let who = format!(
        "SSH authentication as {}@127.0.0.1:{} failed",
        srv.user, srv.port
    );
    assert!(e.contains(&who), "{e}");
    assert!(e.contains("ssh-agent holds no keys"), "{e}");
    assert!(
        e.contains("~/.ssh has no id_ed25519, id_ecdsa or id_rsa"),
        "{e}"
    );

    // The agent holds a key the server does not know, then one it does
    // (an RSA one, signed by the agent with rsa-sha2).
    let stranger = dir.path().join("stranger");
    keygen(&stranger, "ed25519", "");
    agent.add(&stranger);
    let e = run_child(
        &srv,
        None,
        &[("SSH_AUTH_SOCK", Some(&sock)), ("HOME", Some(&home_s))],
    )
    .unwrap_err();
    assert!(
        e.contains("the server refused the 1 key in ssh-agent"),
        "{e}"
    );
    let rsa = dir.path().join("agent_rsa");
    keygen(&rsa, "rsa", "");
    authorize(&srv, &rsa);
    agent.add(&rsa);
    run_child(
        &srv,
        None,
        &[("SSH_AUTH_SOCK", Some(&sock)), ("HOME", Some(&home_s))],
    )
    .unwrap();

    // No agent: an unreachable socket, then none at all.
    let e = run_child(
        &srv,
        None,
        &[
            ("SSH_AUTH_SOCK", Some("/nonexistent/agent.sock")),
            ("HOME", Some(&home_s)),
        ],
    )
    .unwrap_err();
    assert!(e.contains("cannot reach ssh-agent"), "{e}");
    let e = run_child(
        &srv,
        None,
        &[("SSH_AUTH_SOCK", None), ("HOME", Some(&home_s))],
    )
    .unwrap_err();
    assert!(e.contains("SSH_AUTH_SOCK is not set"), "{e}");

    // ~/.ssh/id_ed25519 is tried when there is no agent.
    std::fs::copy(&srv.key, home.join(".ssh/id_ed25519")).unwrap();
    run_child(
        &srv,
        None,
        &[("SSH_AUTH_SOCK", None), ("HOME", Some(&home_s))],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts() {
    let Some(mut srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    b.put("before", Bytes::from_static(b"1"), Cond::CreateOnly)
        .await
        .unwrap();

    // Restarted: every session was killed; the same backend carries on.
    srv.restart();
    assert_eq!(b.get("before").await.unwrap().unwrap(), "1");
    b.put("after", Bytes::from_static(b"2"), Cond::CreateOnly)
        .await
        .unwrap();
    let put = upload(&b, "big", &noise(4 << 20, 5), 500_000, Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(put, Put::Written);

    // Down: requests fail after their retries (not hang), naming the server.
    srv.stop();
    let t = Instant::now();
    let e = b.get("before").await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", srv.port)),
        "{e}"
    );
    assert!(e.to_string().contains("tries"), "retried: {e}");

    // Back: the backend works again, with nothing left half-written.
    srv.restart();
    let keys: Vec<String> = b
        .list("", None)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["after", "before", "big"]);
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_dead_server_fails_and_is_swept_later() {
    let Some(mut srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    let (tx, rx) = mpsc::channel(2);
    let task = {
        let b = b.clone();
        tokio::spawn(async move { b.upload("cut.bin", Body::new(rx), Cond::CreateOnly).await })
    };
    for i in 0..4 {
        tx.send(Chunk::Data(Bytes::from(noise(1 << 20, i))))
            .await
            .unwrap();
    }
    // Let the writes reach the server, then kill it mid-stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.stop();
    let t = Instant::now();
    for i in 0..64 {
        if tx
            .send(Chunk::Data(Bytes::from(noise(1 << 20, i))))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let e = task.await.unwrap().unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert!(e.to_string().contains("/dest/cut.bin"), "{e}");

    // The temp file could not be removed over a dead connection; nothing
    // was published, and a sweep takes the leftover.
    srv.restart();
    assert_eq!(b.get("cut.bin").await.unwrap(), None);
    let left = temps(&srv.root).len();
    assert!(left <= 1, "{:?}", temps(&srv.root));
    assert_eq!(b.sweep_temps(0).await.unwrap(), left);
    assert!(temps(&srv.root).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_at_once_share_one_connection() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    let b = open(config(&srv, "dest")).await.unwrap();
    let ops = (0..48u64).map(|i| {
        let b = b.clone();
        async move {
            let key = format!("p/{i:02}");
            let data = Bytes::from(noise(10_000 + i as usize * 7919, i));
            if i % 3 == 0 {
                upload(&b, &key, &data, 4096, Cond::CreateOnly)
                    .await
                    .unwrap();
            } else {
                b.put(&key, data.clone(), Cond::CreateOnly).await.unwrap();
            }
            assert_eq!(b.get(&key).await.unwrap().unwrap(), data, "{key}");
            assert_eq!(read_all(&b, &key).await.unwrap(), data, "{key}");
        }
    });
    futures::future::join_all(ops).await;
    assert_eq!(b.list("p/", None).await.unwrap().len(), 48);
    let all: Vec<String> = (0..48).map(|i| format!("p/{i:02}")).collect();
    b.delete(&all).await.unwrap();
    assert!(b.list("p/", None).await.unwrap().is_empty());
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Accepts TCP connections and says nothing: no SSH banner ever comes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept() {
            conns.push(c);
            if conns.len() >= 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    let dir = scratch();
    let spec = format!(
        "{}\n{port}\n/srv/nowhere\n\n{}",
        std::env::var("USER").unwrap_or_else(|_| "root".into()),
        dir.path().join("known_hosts").display()
    );
    let t = Instant::now();
    // One try, so the test takes one connect timeout, not six.
    let e = run_child_spec(&spec, &[("CAIRN_RETRY_ATTEMPTS", Some("1"))]).unwrap_err();
    let took = t.elapsed();
    assert!(
        e.contains(&format!("no SSH answer from 127.0.0.1:{port} within 15 s")),
        "{e}"
    );
    assert!(took < Duration::from_secs(40), "took {took:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_path_is_under_the_login_directory() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    // sshd starts SFTP sessions in the user's home from the password
    // database; climb from there to the fixture's directory.
    let out = Command::new("getent")
        .args(["passwd", &srv.user])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(home) = line.trim().split(':').nth(5).filter(|h| h.starts_with('/')) else {
        panic!("no home directory for {} in {line:?}", srv.user)
    };
    let up = "../".repeat(Path::new(home).components().count() - 1);
    let target = srv.root.join("rel");
    let rel = format!("{up}{}", target.to_string_lossy().trim_start_matches('/'));
    let mut c = config(&srv, "");
    c.path = rel.clone();
    let b = open(c).await.unwrap();
    assert!(
        b.describe("k").contains(&format!("/~/{rel}/k")),
        "{}",
        b.describe("k")
    );
    b.put("k", Bytes::from_static(b"rel"), Cond::CreateOnly)
        .await
        .unwrap();
    assert_eq!(std::fs::read(target.join("k")).unwrap(), b"rel");
    assert_eq!(b.list("", None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_create_only_writers_publish_exactly_one() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    // Separate backends (connections), as separate cairn processes would be.
    let mut writers = Vec::new();
    for _ in 0..6 {
        writers.push(open(config(&srv, "dest")).await.unwrap());
    }
    for round in 0..5 {
        let key = format!("race/{round}");
        let puts = writers.iter().enumerate().map(|(i, b)| {
            let key = key.clone();
            async move {
                let data = Bytes::from(noise(200_000, (round * 100 + i) as u64));
                let put = if i % 2 == 0 {
                    b.put(&key, data.clone(), Cond::CreateOnly).await.unwrap()
                } else {
                    upload(b, &key, &data, 50_000, Cond::CreateOnly)
                        .await
                        .unwrap()
                };
                (put, data)
            }
        });
        let results = futures::future::join_all(puts).await;
        let written: Vec<&Bytes> = results
            .iter()
            .filter(|(p, _)| *p == Put::Written)
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            written.len(),
            1,
            "round {round}: {:?}",
            results.iter().map(|r| &r.0).collect::<Vec<_>>()
        );
        assert_eq!(&writers[0].get(&key).await.unwrap().unwrap(), written[0]);
    }
    assert!(temps(&srv.root).is_empty(), "{:?}", temps(&srv.root));
}
