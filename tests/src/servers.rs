//! Real S3 (s3s-fs, moto) and SSH (OpenSSH sshd) servers on 127.0.0.1 for the
//! storage tests: each fixture starts its own server on a free port and stops
//! it by PID when dropped.
//!
//! A missing server is a skip with a printed note on a developer machine and
//! a panic under `CI=true`, where `.ci/setup.sh` has installed all of them: a
//! storage test must not pass in CI by not running. A server that is installed
//! but fails to start is always a panic, with its log in the message.
//!
//! Own each fixture in the test that uses it (not in a `static`): statics are
//! never dropped, so their server would outlive the test binary.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to answer after its spawn; moto imports a lot
/// of Python and takes a few seconds on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts at starting a server before giving up: another process can take
/// the free port between our probe and the server's bind.
const START_ATTEMPTS: usize = 4;

/// `CI=true` (or `CI=1`): every server must be there and start.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The skip-or-panic rule for a server that is not installed.
pub(crate) fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    if ci() {
        panic!("{what} is needed under CI=true but {why} (.ci/setup.sh installs it)");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests, and
    // a skip should be seen.
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping a test that needs {what}: {why} (.ci/setup.sh installs it)"
    );
    None
}

/// Ports handed out by this process and not yet known to be bound by their
/// server: two fixtures started at once must not get the same port.
static RESERVED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port that was free a moment ago. Binding port 0 lets the kernel choose;
/// the listener is closed so the server can bind it (a race we retry on).
pub(crate) fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0 to find a free port")
            .port();
        let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if !reserved.contains(&port) {
            reserved.push(port);
            return port;
        }
    }
}

pub(crate) fn release_port(port: u16) {
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != port);
}

/// A binary from an environment variable, else the first of `fallbacks` that
/// exists, else `name` on PATH.
fn find_binary(env: &str, fallbacks: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    if let Some(p) = fallbacks.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The last few KiB of a server log, for failure messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(4096);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A running server process, with stdout and stderr in `log`.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Proc> {
        let out = File::options().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: a Ctrl-C meant for the test runner does
            // not reach it, and `stop` can signal the group.
            .process_group(0);
        Ok(Proc {
            child: cmd.spawn()?,
            log: log.to_path_buf(),
        })
    }

    /// Polls `probe` until it succeeds. Err if the process exits first (for
    /// example on a port taken since `free_port`) or after READY_TIMEOUT.
    fn wait_ready(&mut self, probe: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            if probe() {
                // A second look: had our server failed to bind, another
                // process on the port could have answered the probe.
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("it exited ({status})"));
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("it did not answer within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server and everything it forked, and reaps it. sshd runs
    /// each connection in a child that calls setsid(), so neither killing
    /// the PID nor its process group ends open sessions: the children are
    /// found through /proc while the parent is stopped and cannot fork more.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id() as libc::pid_t;
            // SAFETY: kill(2) on a PID we spawned and have not reaped, so
            // it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let tree = descendants(pid);
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            for p in tree {
                // SAFETY: the children of a stopped parent that has not
                // waited for them: still ours, zombies at worst.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process below `root`, from /proc/*/stat.
fn descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the
/// whole response (head and body) as text. For readiness probes, bucket
/// set-up and self-tests, not for S3 calls that need signing.
pub fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response from {addr}: {text:?}"),
            )
        })?;
    Ok((status, text))
}

/// An S3 server on 127.0.0.1 with one bucket, `bucket`, ready for use.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// `"s3s-fs"` or `"moto"`.
    pub kind: &'static str,
    /// s3s-fs: the directory whose subdirectories are its buckets.
    data: Option<PathBuf>,
    proc: Proc,
    // Declared after `proc` so the server stops before its files go.
    _dir: tempfile::TempDir,
}

const BUCKET: &str = "cairn-test";
// s3s-fs checks SigV4 with these; moto accepts anything.
const ACCESS_KEY: &str = "CAIRNTESTACCESSKEY";
const SECRET_KEY: &str = "cairn-test-secret-key-0123456789abcdef";

impl S3Server {
    /// s3s-fs's store (Rust, checks SigV4 signatures) served by
    /// `cairn-test-s3` (tests/src/bin), built with these tests or
    /// `$CAIRN_TEST_S3`: the s3s-fs binary is not atomic when two writers of
    /// one key meet, S3 is, and the kill tables make them meet.
    pub fn s3s_fs() -> S3Server {
        let bin = crate::built_bin("cairn-test-s3", "CAIRN_TEST_S3");
        let dir = tempdir("cairn-s3s-");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(BUCKET)).expect("creating the s3s-fs bucket directory");
        let (proc, port) = start_with_retries("s3s-fs", &dir, |port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data);
            cmd
        });
        S3Server::new("s3s-fs", port, Some(data), proc, dir)
    }

    /// moto's server (Python) from `$CAIRN_MOTO_SERVER` or PATH; accepts
    /// any credentials, so `access_key`/`secret_key` are placeholders.
    pub fn moto() -> Option<S3Server> {
        let Some(bin) = find_binary("CAIRN_MOTO_SERVER", &[], "moto_server") else {
            return unavailable("moto", "moto_server is not installed");
        };
        let dir = tempdir("cairn-moto-");
        let (proc, port) = start_with_retries("moto", &dir, |port| {
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Its state lives in memory; keep Python from writing
                // bytecode or reading the user's AWS profile.
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
            cmd
        });
        let server = S3Server::new("moto", port, None, proc, dir);
        server.new_bucket(BUCKET);
        Some(server)
    }

    fn new(
        kind: &'static str,
        port: u16,
        data: Option<PathBuf>,
        proc: Proc,
        dir: tempfile::TempDir,
    ) -> S3Server {
        S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: BUCKET.into(),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            kind,
            data,
            proc,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`, for [`crate::proxy::FaultProxy::start`] and raw requests.
    pub fn addr(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    /// `s3://bucket/prefix?endpoint=...&path_style=true&region=us-east-1`.
    pub fn url(&self, prefix: &str) -> String {
        self.url_at(&self.endpoint, prefix)
    }

    /// Like [`S3Server::url`] but through `proxy` (which forwards here).
    pub fn url_via(&self, proxy: &crate::proxy::FaultProxy, prefix: &str) -> String {
        self.url_at(&proxy.endpoint(), prefix)
    }

    fn url_at(&self, endpoint: &str, prefix: &str) -> String {
        let prefix = prefix.trim_start_matches('/');
        format!(
            "s3://{}/{prefix}?endpoint={endpoint}&path_style=true&region=us-east-1",
            self.bucket
        )
    }

    /// Environment for the cairn child process. The metadata switch keeps
    /// the AWS SDK from probing 169.254.169.254 (a slow timeout off EC2).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates another bucket. s3s-fs: a directory in its data root (no
    /// signing needed); moto: an unsigned CreateBucket, which it accepts.
    pub fn new_bucket(&self, name: &str) {
        if let Some(data) = &self.data {
            std::fs::create_dir_all(data.join(name))
                .unwrap_or_else(|e| panic!("creating bucket {name} in {}: {e}", data.display()));
            return;
        }
        match raw_http(self.addr(), "PUT", &format!("/{name}"), b"") {
            Ok((200, _)) => {}
            Ok((_, resp)) => panic!("{}: creating bucket {name} failed:\n{resp}", self.kind),
            Err(e) => panic!(
                "{}: creating bucket {name}: {e}\nserver log {}:\n{}",
                self.kind,
                self.proc.log.display(),
                log_tail(&self.proc.log)
            ),
        }
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir for a test server")
}

/// Starts an HTTP server built by `cmd(port)` until one answers, retrying on
/// a fresh port if it exits early (port race). Panics with the log otherwise.
fn start_with_retries(
    what: &str,
    dir: &tempfile::TempDir,
    cmd: impl Fn(u16) -> Command,
) -> (Proc, u16) {
    let log = dir.path().join(format!("{what}.log"));
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut proc = Proc::spawn(cmd(port), &log)
            .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd(port).get_program()));
        let res = proc.wait_ready(|| raw_http(&addr, "GET", "/", b"").is_ok());
        release_port(port);
        match res {
            Ok(()) => return (proc, port),
            Err(why) => {
                proc.stop();
                last = why;
                // Only an early exit can be a port race; a hang will not
                // get better on another port.
                if !last.starts_with("it exited") {
                    break;
                }
            }
        }
    }
    fail_start(what, &last, &log)
}

fn fail_start(what: &str, why: &str, log: &Path) -> ! {
    // The fixture's temp dir goes with the unwinding panic; keep a copy of
    // the whole log for a look after the run.
    let kept = std::env::temp_dir().join(format!(
        "cairn-{}-{}-{}.log",
        what.split_whitespace().next().unwrap_or(what),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let shown = if std::fs::copy(log, &kept).is_ok() {
        kept
    } else {
        log.to_path_buf()
    };
    panic!(
        "{what} did not start on 127.0.0.1: {why}\nits log ({}), last lines:\n{}",
        shown.display(),
        log_tail(log)
    )
}

/// A private OpenSSH sshd on 127.0.0.1 that lets the current user in with
/// `key`, with SFTP. `stop` and `restart` keep the port and host key, so a
/// client can test reconnecting.
pub struct SshServer {
    pub port: u16,
    pub user: String,
    /// A fresh directory the user can write: the base for destinations.
    pub root: PathBuf,
    /// The user's private key (ed25519, no passphrase).
    pub key: PathBuf,
    /// A known_hosts file with the server's host key for `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    sshd: PathBuf,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    // Declared last so the server stops before its files go.
    _dir: tempfile::TempDir,
}

impl SshServer {
    /// `$CAIRN_SSHD` or /usr/sbin/sshd, with keys made by ssh-keygen.
    pub fn start() -> Option<SshServer> {
        let sshd = std::env::var_os("CAIRN_SSHD")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/sbin/sshd".into());
        if !sshd.is_file() {
            return unavailable("sshd", &format!("{} is missing", sshd.display()));
        }
        if find_binary("CAIRN_SSH_KEYGEN", &[], "ssh-keygen").is_none() {
            return unavailable("sshd", "ssh-keygen is missing");
        }
        // sshd checks for its privilege-separation directory even when it
        // cannot use it; only root can create it under /run.
        let privsep = Path::new("/run/sshd");
        if !privsep.is_dir() && std::fs::create_dir_all(privsep).is_err() {
            return unavailable(
                "sshd",
                "/run/sshd is missing and cannot be created (needs root)",
            );
        }
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("`id -un` names the current user");

        let dir = tempdir("cairn-sshd-");
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        let key = d.join("id_ed25519");
        keygen(&host_key, "cairn-test-host");
        keygen(&key, "cairn-test-user");
        let authorized = d.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).expect("writing authorized_keys");
        let root = d.join("root");
        std::fs::create_dir(&root).expect("creating the sftp root");

        let mut server = SshServer {
            port: 0,
            user,
            root,
            key,
            known_hosts: d.join("known_hosts"),
            sshd,
            config: d.join("sshd_config"),
            log: d.join("sshd.log"),
            proc: None,
            _dir: dir,
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            server.write_config(&host_key, &authorized);
            let res = server.spawn();
            release_port(server.port);
            match res {
                Ok(()) => return Some(server),
                Err(why) => {
                    server.stop();
                    last = why;
                    if !last.starts_with("it exited") {
                        break;
                    }
                }
            }
        }
        fail_start("sshd", &last, &server.log)
    }

    fn write_config(&self, host_key: &Path, authorized: &Path) {
        let d = self._dir.path();
        // StrictModes no: the keys live under /tmp, whose modes sshd would
        // otherwise reject. No PAM: it needs root and a service file.
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             UsePAM no\n\
             StrictModes no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             AllowUsers {user}\n\
             PrintMotd no\n\
             UseDNS no\n\
             LogLevel VERBOSE\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             Subsystem sftp internal-sftp\n",
            port = self.port,
            host_key = host_key.display(),
            pid = d.join("sshd.pid").display(),
            authorized = authorized.display(),
            user = self.user,
        );
        std::fs::write(&self.config, config).expect("writing sshd_config");
        let host_pub =
            std::fs::read_to_string(host_key.with_extension("pub")).expect("reading the host key");
        std::fs::write(
            &self.known_hosts,
            format!("[127.0.0.1]:{} {}\n", self.port, host_pub.trim()),
        )
        .expect("writing known_hosts");
    }

    /// Runs sshd and waits for its banner.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.sshd);
        // -D: stay in the foreground (our child, so we hold its PID);
        // -e: log to stderr, which goes to the log file.
        cmd.arg("-D").arg("-e").arg("-f").arg(&self.config);
        let mut proc = Proc::spawn(cmd, &self.log)
            .map_err(|e| format!("cannot run {}: {e}", self.sshd.display()))?;
        let addr = format!("127.0.0.1:{}", self.port);
        let res = proc.wait_ready(|| ssh_banner(&addr));
        self.proc = Some(proc);
        res
    }

    /// `sftp://USER@127.0.0.1:PORT/<root>/<sub>?key=...&known_hosts=...`.
    pub fn url(&self, sub: &str) -> String {
        let path = self.root.join(sub.trim_start_matches('/'));
        format!(
            "sftp://{}@127.0.0.1:{}{}?key={}&known_hosts={}",
            self.user,
            self.port,
            encode(&path.to_string_lossy(), false),
            encode(&self.key.to_string_lossy(), true),
            encode(&self.known_hosts.to_string_lossy(), true),
        )
    }

    /// Kills sshd and every open session: clients see their connection drop
    /// and new connections refused. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Stops (if running) and starts again on the same port with the same
    /// host key and user key.
    pub fn restart(&mut self) {
        self.stop();
        // The old listener is gone; a fresh bind of the same port succeeds
        // at once (sshd sets SO_REUSEADDR), so one attempt is enough unless
        // another process took the port meanwhile.
        if let Err(why) = self.spawn() {
            self.stop();
            fail_start("sshd (restart)", &why, &self.log);
        }
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an SSH server answers on `addr` with its version banner.
fn ssh_banner(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 8 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"SSH-2.0")
}

fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen -f {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Percent-encodes what a URL path (or, with `query`, a query value) cannot
/// hold literally; temp paths rarely need it, but a TMPDIR might.
fn encode(s: &str, query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~/".contains(&b) || (!query && b == b':');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An SMTP server on 127.0.0.1 that accepts every message and writes it to
/// a file (aiosmtpd, through tests/smtp_sink.py), for the mail notification
/// tests.
pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    _proc: Proc,
}

impl SmtpSink {
    pub fn start() -> Option<SmtpSink> {
        Self::start_with(&[])
    }

    /// A sink that requires STARTTLS (with `cert`/`key`, PEM) and then AUTH
    /// as `user`/`password`; each message records `X-Sink-TLS: yes` and
    /// `X-Sink-Auth: USER`.
    pub fn start_secure(cert: &Path, key: &Path, user: &str, password: &str) -> Option<SmtpSink> {
        Self::start_with(&[
            cert.as_os_str(),
            key.as_os_str(),
            user.as_ref(),
            password.as_ref(),
        ])
    }

    fn start_with(extra: &[&std::ffi::OsStr]) -> Option<SmtpSink> {
        let has = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            return unavailable("aiosmtpd", "python3 cannot import aiosmtpd");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py");
        let dir = tempdir("cairn-smtp-");
        let mail = dir.path().join("mail");
        std::fs::create_dir_all(&mail).expect("creating the mail directory");
        let log = dir.path().join("smtp.log");
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let mut cmd = Command::new("python3");
            cmd.arg(&script)
                .arg(port.to_string())
                .arg(&mail)
                .args(extra);
            let mut proc = Proc::spawn(cmd, &log).expect("running python3");
            let addr = format!("127.0.0.1:{port}");
            let res = proc.wait_ready(|| {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = [0u8; 3];
                s.read_exact(&mut b).is_ok() && &b == b"220"
            });
            release_port(port);
            match res {
                Ok(()) => {
                    return Some(SmtpSink {
                        port,
                        dir,
                        _proc: proc,
                    });
                }
                Err(why) => {
                    proc.stop();
                    last = why;
                    if !last.starts_with("it exited") {
                        break;
                    }
                }
            }
        }
        fail_start("aiosmtpd", &last, &log)
    }

    /// Every message received so far, oldest first (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}
