//! The SFTP backend: objects as files under a directory on an SSH server, over
//! russh (pure-Rust SSH on tokio) and russh-sftp's raw protocol session.
//!
//! - Trust: the server's host key must already be in known_hosts; an unknown
//!   key is refused with the command that adds it, a changed one loudly.
//! - Auth: a key file (`key=`, passphrase from `$CAIRN_SSH_KEY_PASSPHRASE`),
//!   else each ssh-agent identity, else ~/.ssh/id_{ed25519,ecdsa,rsa}.
//! - Writes go to a temp name beside the final one, are fsynced
//!   (`fsync@openssh.com`) and published by rename: plain SFTP rename for
//!   `CreateOnly` (OpenSSH links, so it never replaces an existing file),
//!   `posix-rename@openssh.com` for `Overwrite`.
//! - One SSH connection, shared; a dropped one is replaced on the next try
//!   (requests are retried through [`retry::retry`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use russh::client;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::known_hosts::{check_known_hosts_path, known_host_keys_path};
use russh::keys::{
    self, Algorithm, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::rawsession::Limits;
use russh_sftp::extensions;
use russh_sftp::protocol::{Data, FileAttributes, OpenFlags, Packet, Status, StatusCode};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::retry::{self, Policy};
use super::url::SftpConfig;
use super::{Backend, Body, ByteStream, Cond, ObjectInfo, Put};

/// TCP connect plus key exchange; a dead or filtered host fails here.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Authentication may wait on an agent that asks the user to confirm.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalives every 15 s, the connection dropped after 3 unanswered.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;
/// Backstop for a server that neither answers nor closes (also bounds a
/// write stuck on a full socket).
const INACTIVITY: Duration = Duration::from_secs(90);
/// Per SFTP request; an fsync of a large file on a slow disk takes a while.
const REQUEST_TIMEOUT_SECS: u64 = 120;
/// Reads and writes in flight on one file: SFTP is request/response, so
/// a single outstanding request would cap throughput at one piece per RTT.
const READS_IN_FLIGHT: usize = 8;
const WRITES_IN_FLIGHT: usize = 16;
/// Read and write pieces: OpenSSH's limits (256 KiB packets, 255 KiB of
/// data); without the `limits@openssh.com` answer, sizes every server takes.
const MAX_PIECE: u64 = 256 * 1024 - 1024;
const DEFAULT_READ_PIECE: u64 = 64 * 1024;
const DEFAULT_WRITE_PIECE: u64 = 32 * 1024;
const POSIX_RENAME: &str = "posix-rename@openssh.com";
pub const PASSPHRASE_ENV: &str = "CAIRN_SSH_KEY_PASSPHRASE";

/// An SFTP destination.
pub struct Sftp {
    cfg: SftpConfig,
    /// `sftp://user@host[:port]/path` for messages.
    base: String,
    /// The directory on the server, without a trailing `/` (except `/`).
    root: String,
    /// The host without IPv6 brackets, for TCP and known_hosts.
    net_host: String,
    /// `host:port` for messages.
    endpoint: String,
    known_hosts: PathBuf,
    /// The key file named by `key=`, loaded (and decrypted) once.
    identity: Option<(PathBuf, Arc<PrivateKey>)>,
    policy: Policy,
    conn: Mutex<Option<Arc<Conn>>>,
}

/// One authenticated SSH connection with its SFTP channel.
struct Conn {
    ssh: client::Handle<Client>,
    sftp: Arc<RawSftpSession>,
    endpoint: String,
    posix_rename: bool,
    fsync: bool,
    read_piece: u32,
    write_piece: usize,
    /// Set when a request failed in a way that leaves the channel suspect
    /// (lost, timed out, out of step): the next operation reconnects.
    broken: AtomicBool,
}

impl Sftp {
    /// Connects (checking the host key and authenticating) so that a bad
    /// destination fails before any work starts.
    pub async fn connect(c: SftpConfig) -> anyhow::Result<Sftp> {
        let net_host = c
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let endpoint = if net_host.contains(':') {
            format!("[{net_host}]:{}", c.port)
        } else {
            format!("{net_host}:{}", c.port)
        };
        let port = if c.port == 22 {
            String::new()
        } else {
            format!(":{}", c.port)
        };
        let sep = if c.path.starts_with('/') { "" } else { "/~/" };
        let base = format!("sftp://{}@{}{port}{sep}{}", c.user, c.host, c.path);
        let root = match c.path.trim_end_matches('/') {
            "" if c.path.starts_with('/') => "/".to_string(),
            "" => ".".to_string(),
            r => r.to_string(),
        };
        let known_hosts = match &c.known_hosts {
            Some(p) => p.clone(),
            None => home()
                .map(|h| h.join(".ssh/known_hosts"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{base}: HOME is not set, so there is no ~/.ssh/known_hosts: give known_hosts=PATH or set CAIRN_SSH_KNOWN_HOSTS"
                    )
                })?,
        };
        let identity = match &c.identity {
            Some(path) => Some((path.clone(), Arc::new(load_key_file(path)?))),
            None => None,
        };
        let sftp = Sftp {
            cfg: c,
            base,
            root,
            net_host,
            endpoint,
            known_hosts,
            identity,
            policy: Policy::from_env(),
            conn: Mutex::new(None),
        };
        let what = format!("connecting to {}", sftp.base);
        retry::retry(sftp.policy, &what, |_| async {
            sftp.conn().await.map(drop)
        })
        .await?;
        Ok(sftp)
    }

    fn path(&self, key: &str) -> io::Result<String> {
        cairn_core::catalog::validate_object_key(key).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", self.describe(key)),
            )
        })?;
        Ok(self.join(key))
    }

    fn join(&self, rel: &str) -> String {
        match (self.root.as_str(), rel) {
            (root, "") => root.to_string(),
            ("/", rel) => format!("/{rel}"),
            (root, rel) => format!("{root}/{rel}"),
        }
    }

    /// The live connection, or a new one if there is none or it broke.
    /// The lock serializes reconnects: concurrent callers wait for one.
    async fn conn(&self) -> io::Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && c.usable()
        {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Arc::new(self.open_conn().await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` on a connection, retrying transient failures (each retry
    /// takes the connection anew, so a dropped one is replaced).
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> io::Result<T>
    where
        F: Fn(Arc<Conn>, u32) -> Fut + Sync,
        Fut: Future<Output = io::Result<T>> + Send,
        T: Send,
    {
        let op = &op;
        retry::retry(self.policy, what, |n| async move {
            let conn = self.conn().await?;
            op(conn, n).await
        })
        .await
    }

    async fn open_conn(&self) -> io::Result<Conn> {
        let refusal = Arc::new(StdMutex::new(None));
        let handler = Client {
            host: self.net_host.clone(),
            port: self.cfg.port,
            endpoint: self.endpoint.clone(),
            known_hosts: self.known_hosts.clone(),
            refusal: refusal.clone(),
        };
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: KEEPALIVE_MAX,
            inactivity_timeout: Some(INACTIVITY),
            nodelay: true,
            window_size: 8 << 20,
            preferred: russh::Preferred {
                key: Cow::Owned(self.host_key_order()),
                ..Default::default()
            },
            ..Default::default()
        });
        let dest = &self.base;
        let addr = (self.net_host.as_str(), self.cfg.port);
        let mut ssh =
            match tokio::time::timeout(CONNECT_TIMEOUT, client::connect(config, addr, handler))
                .await
            {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{dest}: no SSH answer from {} within {} s",
                            self.endpoint,
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    ));
                }
                Ok(Err(e)) => {
                    // A refused host key reaches us as a bare "unknown key": the
                    // handler kept the reason.
                    if let Some(msg) = refusal.lock().ok().and_then(|mut r| r.take()) {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("{dest}: {msg}"),
                        ));
                    }
                    return Err(ssh_err(
                        e,
                        &format!("{dest}: cannot connect to {}", self.endpoint),
                    ));
                }
                Ok(Ok(h)) => h,
            };
        match tokio::time::timeout(AUTH_TIMEOUT, self.authenticate(&mut ssh)).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{dest}: SSH authentication as {}@{} took longer than {} s",
                        self.cfg.user,
                        self.endpoint,
                        AUTH_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(r) => r?,
        }
        let sftp = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let ch = ssh.channel_open_session().await?;
            ch.request_subsystem(true, "sftp").await?;
            Ok::<_, russh::Error>(ch)
        })
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{dest}: the server did not open an SFTP channel within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| ssh_err(e, &format!("{dest}: cannot open the SFTP subsystem")))?;
        let sftp_cfg = russh_sftp::client::Config {
            max_packet_len: 256 * 1024,
            request_timeout_secs: REQUEST_TIMEOUT_SECS,
            ..Default::default()
        };
        let mut raw = RawSftpSession::new_with_config(sftp.into_stream(), sftp_cfg);
        let init_err = |e: SftpError| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "{dest}: the SFTP subsystem did not start ({e}); is sftp enabled on {}?",
                    self.endpoint
                ),
            )
        };
        let version = tokio::time::timeout(CONNECT_TIMEOUT, raw.init())
            .await
            .map_err(|_| init_err(SftpError::Timeout))?
            .map_err(init_err)?;
        let has = |name: &str, ver: &str| version.extensions.get(name).is_some_and(|v| v == ver);
        let mut limits = Limits::default();
        if has(extensions::LIMITS, "1") {
            limits = raw.limits().await.map(Limits::from).map_err(init_err)?;
            raw.set_limits(limits);
        }
        let read_piece = limits
            .read_len
            .unwrap_or(DEFAULT_READ_PIECE)
            .clamp(1024, MAX_PIECE);
        let write_piece = limits
            .write_len
            .unwrap_or(DEFAULT_WRITE_PIECE)
            .clamp(1024, MAX_PIECE);
        Ok(Conn {
            ssh,
            sftp: Arc::new(raw),
            endpoint: self.endpoint.clone(),
            posix_rename: has(POSIX_RENAME, "1"),
            fsync: has(extensions::FSYNC, "1"),
            read_piece: read_piece as u32,
            write_piece: write_piece as usize,
            broken: AtomicBool::new(false),
        })
    }

    /// The host key algorithms to ask for, those already in known_hosts
    /// first: a server with several host keys then shows the one we can
    /// check (OpenSSH's client does the same).
    fn host_key_order(&self) -> Vec<Algorithm> {
        let known: Vec<Algorithm> =
            known_host_keys_path(&self.net_host, self.cfg.port, &self.known_hosts)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, k)| k.algorithm())
                .collect();
        let mut order = russh::Preferred::DEFAULT.key.to_vec();
        order.sort_by_key(|a| !known.iter().any(|k| k == a || (is_rsa(k) && is_rsa(a))));
        order
    }

    /// Tries the configured key file, else the agent's keys and the
    /// default key files; a failure lists what was tried and why it failed.
    async fn authenticate(&self, ssh: &mut client::Handle<Client>) -> io::Result<()> {
        let mut tried = Vec::new();
        let mut rsa = RsaHash::default();
        let hint = if let Some((path, key)) = &self.identity {
            if self.try_key(ssh, key, &mut rsa).await? {
                return Ok(());
            }
            let alg = key.algorithm();
            tried.push(format!(
                "the server refused key file {} ({})",
                path.display(),
                alg.as_str()
            ));
            "Is its public key in the server's authorized_keys?"
        } else {
            if self.try_agent(ssh, &mut rsa, &mut tried).await? {
                return Ok(());
            }
            if self.try_default_keys(ssh, &mut rsa, &mut tried).await? {
                return Ok(());
            }
            "Give a key with key=PATH or $CAIRN_SSH_KEY, or add one to ssh-agent."
        };
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: SSH authentication as {}@{} failed: {}. {hint}",
                self.base,
                self.cfg.user,
                self.endpoint,
                tried.join("; ")
            ),
        ))
    }

    /// Each identity ssh-agent ($SSH_AUTH_SOCK) holds.
    async fn try_agent(
        &self,
        ssh: &mut client::Handle<Client>,
        rsa: &mut RsaHash,
        tried: &mut Vec<String>,
    ) -> io::Result<bool> {
        let mut agent = match AgentClient::connect_env().await {
            Ok(a) => a,
            Err(keys::Error::EnvVar(_)) => {
                tried.push("SSH_AUTH_SOCK is not set (no ssh-agent)".into());
                return Ok(false);
            }
            Err(e) => {
                tried.push(format!("cannot reach ssh-agent ({e})"));
                return Ok(false);
            }
        };
        // OpenSSH agents only show destination-constrained keys to a bound
        // session; older agents refuse the binding, harmlessly.
        if let Some(b) = ssh.agent_session_binding() {
            let _ = agent.bind_session(b, false).await;
        }
        let ids = match agent.request_identities().await {
            Ok(ids) if ids.is_empty() => {
                tried.push("ssh-agent holds no keys".into());
                return Ok(false);
            }
            Ok(ids) => ids,
            Err(e) => {
                tried.push(format!("cannot list ssh-agent's keys ({e})"));
                return Ok(false);
            }
        };
        let user = self.cfg.user.as_str();
        let mut notes = String::new();
        for id in &ids {
            let hashes = if is_rsa(&id.public_key().algorithm()) {
                rsa.get(ssh).await
            } else {
                vec![None]
            };
            for hash in hashes {
                let r = match id {
                    AgentIdentity::PublicKey { key, .. } => {
                        ssh.authenticate_publickey_with(user, key.clone(), hash, &mut agent)
                            .await
                    }
                    AgentIdentity::Certificate { certificate, .. } => {
                        let cert = certificate.clone();
                        ssh.authenticate_certificate_with(user, cert, hash, &mut agent)
                            .await
                    }
                };
                match r {
                    Ok(r) if r.success() => return Ok(true),
                    Ok(_) => {}
                    // The agent would not sign (a locked or confirm-only key).
                    Err(e) => notes.push_str(&format!(", {} could not sign: {e}", id.comment())),
                }
            }
        }
        let n = ids.len();
        tried.push(format!(
            "the server refused the {n} key{} in ssh-agent{notes}",
            plural(n)
        ));
        Ok(false)
    }

    /// ~/.ssh/id_ed25519, id_ecdsa, id_rsa, as ssh tries them.
    async fn try_default_keys(
        &self,
        ssh: &mut client::Handle<Client>,
        rsa: &mut RsaHash,
        tried: &mut Vec<String>,
    ) -> io::Result<bool> {
        let Some(home) = home() else {
            tried.push("HOME is not set (no ~/.ssh keys)".into());
            return Ok(false);
        };
        let mut any = false;
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = home.join(".ssh").join(name);
            if !path.exists() {
                continue;
            }
            any = true;
            match load_key_file(&path) {
                Err(e) => tried.push(format!("skipped ~/.ssh/{name}: {e}")),
                Ok(key) => {
                    if self.try_key(ssh, &Arc::new(key), rsa).await? {
                        return Ok(true);
                    }
                    tried.push(format!("the server refused ~/.ssh/{name}"));
                }
            }
        }
        if !any {
            tried.push("~/.ssh has no id_ed25519, id_ecdsa or id_rsa".into());
        }
        Ok(false)
    }

    async fn try_key(
        &self,
        ssh: &mut client::Handle<Client>,
        key: &Arc<PrivateKey>,
        rsa: &mut RsaHash,
    ) -> io::Result<bool> {
        let hashes = if key.algorithm().is_rsa() {
            rsa.get(ssh).await
        } else {
            vec![None]
        };
        for hash in hashes {
            let r = ssh
                .authenticate_publickey(
                    &self.cfg.user,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
                .map_err(|e| {
                    ssh_err(
                        e,
                        &format!(
                            "{}: SSH authentication as {}@{}",
                            self.base, self.cfg.user, self.endpoint
                        ),
                    )
                })?;
            if r.success() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes `data` to a temp file and publishes it (one try; `put`
    /// retries it whole).
    async fn put_once(
        &self,
        conn: &Arc<Conn>,
        key: &str,
        data: &Bytes,
        cond: &Cond,
        attempt: u32,
    ) -> io::Result<Put> {
        let what = self.describe(key);
        let path = self.path(key)?;
        let (dir, tmp) = temp_path(&path);
        let mut f = TempFile::create(conn, &dir, &tmp, &what).await?;
        let written = async {
            f.write(data.clone()).await?;
            f.finish().await
        }
        .await;
        if let Err(e) = written {
            f.discard().await;
            return Err(e);
        }
        let put = publish(conn, &tmp, &path, cond, &what).await?;
        if put == Put::Exists && attempt > 0 {
            // An earlier try may have published before its answer was lost:
            // the same bytes there mean this write is what is there.
            if read_all(conn, &path, &what).await?.as_ref() == Some(data) {
                return Ok(Put::Written);
            }
        }
        Ok(put)
    }
}

/// Where russh asks whether to trust the server.
struct Client {
    host: String,
    port: u16,
    endpoint: String,
    known_hosts: PathBuf,
    /// Why the key was refused: russh only reports "unknown key".
    refusal: Arc<StdMutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => Cow::Borrowed(key),
            // Certificates are not asked for (no CA support); should one come,
            // its key must be listed itself.
            PublicKeyOrCertificate::Certificate(c) => {
                Cow::Owned(PublicKey::new(c.public_key().clone(), ""))
            }
        };
        match self.check(&key) {
            Ok(()) => Ok(true),
            Err(msg) => {
                if let Ok(mut r) = self.refusal.lock() {
                    *r = Some(msg);
                }
                Ok(false)
            }
        }
    }
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256);
        let alg = key.algorithm();
        let file = tilde(&self.known_hosts);
        match check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let port = if self.port == 22 {
                    String::new()
                } else {
                    format!("-p {} ", self.port)
                };
                let ssh = if file == "~/.ssh/known_hosts" {
                    "connect once with ssh".to_string()
                } else {
                    format!("connect once with `ssh -o UserKnownHostsFile={file}`")
                };
                Err(format!(
                    "host key of {} is not in {file}: check its fingerprint {fp} ({}) and add it with `ssh-keyscan {port}{} >> {file}` (or {ssh})",
                    self.endpoint,
                    alg.as_str(),
                    self.host
                ))
            }
            Err(keys::Error::KeyChanged { line }) => {
                let name = if self.port == 22 {
                    self.host.clone()
                } else {
                    format!("[{}]:{}", self.host, self.port)
                };
                Err(format!(
                    "WARNING: THE HOST KEY OF {} HAS CHANGED: it does not match line {line} of {file}. \
                     Someone could be intercepting the connection (man-in-the-middle attack), or the server was \
                     reinstalled. cairn refuses to connect. The server now shows {fp} ({}); if you have checked \
                     that this change is expected, remove the old key with `ssh-keygen -R '{name}' -f {file}` and add the new one",
                    self.endpoint,
                    alg.as_str()
                ))
            }
            Err(e) => Err(format!(
                "cannot check the host key of {} against {file}: {e}",
                self.endpoint
            )),
        }
    }
}

/// The RSA signature hash the server takes, asked once per connection
/// (`best_supported_rsa_hash` waits up to a second for the server's list).
#[derive(Default)]
struct RsaHash(Option<Vec<Option<HashAlg>>>);

impl RsaHash {
    async fn get(&mut self, ssh: &client::Handle<Client>) -> Vec<Option<HashAlg>> {
        if let Some(v) = &self.0 {
            return v.clone();
        }
        let v = match ssh.best_supported_rsa_hash().await {
            Ok(Some(h)) => vec![h],
            // No server-sig-algs: rsa-sha2-256 (OpenSSH ≥ 7.2), then SHA-1.
            _ => vec![Some(HashAlg::Sha256), None],
        };
        self.0 = Some(v.clone());
        v
    }
}

/// Loads a private key file; the passphrase comes from the environment
/// (cairn runs unattended, it never prompts).
fn load_key_file(path: &Path) -> io::Result<PrivateKey> {
    let pass = std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty());
    let shown = path.display();
    match keys::load_secret_key(path, None) {
        Ok(k) => Ok(k),
        Err(keys::Error::IO(e)) => Err(io::Error::new(e.kind(), format!("cannot read key file {shown}: {e}"))),
        Err(first) => match pass {
            None if matches!(first, keys::Error::KeyIsEncrypted) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "key file {shown} is passphrase-protected: set {PASSPHRASE_ENV} or add it to ssh-agent"
                ),
            )),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key file {shown} is not a private key cairn can read: {first}"),
            )),
            Some(p) => keys::load_secret_key(path, Some(&p)).map_err(|e| {
                let msg = if matches!(first, keys::Error::KeyIsEncrypted) {
                    format!("key file {shown}: the passphrase in {PASSPHRASE_ENV} does not decrypt it ({e})")
                } else {
                    format!("key file {shown} is not a private key cairn can read: {first}")
                };
                io::Error::new(io::ErrorKind::PermissionDenied, msg)
            }),
        },
    }
}

fn is_rsa(a: &Algorithm) -> bool {
    matches!(a, Algorithm::Rsa { .. })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// A path under $HOME as `~/…`, as users write it.
fn tilde(p: &Path) -> String {
    if let Some(rest) = home().and_then(|h| p.strip_prefix(h).ok().map(Path::to_path_buf)) {
        return format!("~/{}", rest.display());
    }
    p.display().to_string()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// An SSH-level failure as an io::Error whose kind tells retry what to do.
fn ssh_err(e: russh::Error, what: &str) -> io::Error {
    use io::ErrorKind::*;
    let kind = match &e {
        russh::Error::IO(io) => io.kind(),
        russh::Error::ConnectionTimeout
        | russh::Error::KeepaliveTimeout
        | russh::Error::InactivityTimeout => TimedOut,
        russh::Error::NoCommonAlgo { .. } => Unsupported,
        russh::Error::UnknownKey
        | russh::Error::WrongServerSig
        | russh::Error::KeyChanged { .. } => PermissionDenied,
        russh::Error::ChannelOpenFailure(_) | russh::Error::RequestDenied => PermissionDenied,
        _ => ConnectionAborted,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

impl Conn {
    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.ssh.is_closed()
    }

    /// An SFTP failure as an io::Error. A status from the server keeps the
    /// connection; anything else (lost, timed out, garbled) marks it broken
    /// and is transient, so the retry reconnects.
    fn fail(&self, e: SftpError, op: &str, what: &str) -> io::Error {
        use io::ErrorKind::*;
        let (kind, msg) = match &e {
            SftpError::Status(s) => {
                let kind = match s.status_code {
                    StatusCode::NoSuchFile => NotFound,
                    StatusCode::PermissionDenied => PermissionDenied,
                    StatusCode::OpUnsupported => Unsupported,
                    StatusCode::BadMessage => InvalidData,
                    StatusCode::Eof => UnexpectedEof,
                    StatusCode::NoConnection | StatusCode::ConnectionLost => {
                        self.broken.store(true, Ordering::Relaxed);
                        ConnectionReset
                    }
                    StatusCode::Ok | StatusCode::Failure => Other,
                };
                let text = if s.error_message.is_empty() {
                    s.status_code.to_string()
                } else {
                    s.error_message.clone()
                };
                (kind, text)
            }
            SftpError::Limited(m) => (InvalidInput, format!("over the server's limits: {m}")),
            SftpError::Timeout => {
                self.broken.store(true, Ordering::Relaxed);
                (
                    TimedOut,
                    format!(
                        "no answer from {} within {REQUEST_TIMEOUT_SECS} s",
                        self.endpoint
                    ),
                )
            }
            other => {
                self.broken.store(true, Ordering::Relaxed);
                let why = if self.ssh.is_closed() {
                    "the connection was lost"
                } else {
                    "the SFTP channel failed"
                };
                (
                    ConnectionReset,
                    format!("{why} to {} ({other})", self.endpoint),
                )
            }
        };
        io::Error::new(kind, format!("{what}: {op}: {msg}"))
    }

    /// Attributes of `path`, `None` if it does not exist.
    async fn stat(&self, path: &str, what: &str) -> io::Result<Option<FileAttributes>> {
        match self.sftp.stat(path).await {
            Ok(a) => Ok(Some(a.attrs)),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(None),
            Err(e) => Err(self.fail(e, "stat", what)),
        }
    }

    /// Removes a file; `false` if there was none.
    async fn remove(&self, path: &str, what: &str) -> io::Result<bool> {
        match self.sftp.remove(path).await {
            Ok(_) => Ok(true),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(false),
            Err(e) => Err(self.fail(e, "remove", what)),
        }
    }

    async fn close(&self, handle: String, what: &str) -> io::Result<()> {
        self.sftp
            .close(handle)
            .await
            .map(drop)
            .map_err(|e| self.fail(e, "close", what))
    }

    /// `mkdir -p`: walks up to the first directory that exists, then
    /// creates the missing ones downwards. "Exists" (a concurrent writer,
    /// or the root) is fine if it is a directory.
    async fn mkdir_p(&self, dir: &str, what: &str) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut cur = dir.to_string();
        loop {
            match self.sftp.mkdir(cur.as_str(), FileAttributes::empty()).await {
                Ok(_) => break,
                Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                    let Some(parent) = parent(&cur) else {
                        return Err(self.fail(SftpError::Status(s), &format!("mkdir {cur}"), what));
                    };
                    let parent = parent.to_string();
                    missing.push(std::mem::replace(&mut cur, parent));
                }
                Err(e) => {
                    if self.stat(&cur, what).await?.is_some_and(|a| a.is_dir()) {
                        break;
                    }
                    return Err(self.fail(e, &format!("mkdir {cur}"), what));
                }
            }
        }
        for d in missing.iter().rev() {
            if let Err(e) = self.sftp.mkdir(d.as_str(), FileAttributes::empty()).await
                && !self.stat(d, what).await?.is_some_and(|a| a.is_dir())
            {
                return Err(self.fail(e, &format!("mkdir {d}"), what));
            }
        }
        Ok(())
    }

    /// `posix-rename@openssh.com`: rename(2), replacing the target.
    async fn posix_rename(&self, from: &str, to: &str) -> Result<(), SftpError> {
        let mut data = Vec::with_capacity(8 + from.len() + to.len());
        for s in [from, to] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        match self.sftp.extended(POSIX_RENAME, data).await? {
            Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            Packet::Status(s) => Err(SftpError::Status(s)),
            _ => Err(SftpError::UnexpectedPacket),
        }
    }
}

fn parent(path: &str) -> Option<&str> {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) if path.starts_with('/') && path != "/" => Some("/"),
        Some((p, _)) if !p.is_empty() => Some(p),
        _ => None,
    }
}

/// The directory of `path` and a temp name beside it.
fn temp_path(path: &str) -> (String, String) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let tmp = super::temp_name(name);
    let dir = if dir.is_empty() && path.starts_with('/') {
        "/"
    } else {
        dir
    };
    let full = match dir {
        "" => tmp,
        "/" => format!("/{tmp}"),
        d => format!("{d}/{tmp}"),
    };
    (
        if dir.is_empty() {
            ".".to_string()
        } else {
            dir.to_string()
        },
        full,
    )
}

/// Moves a complete temp file to its final name.
async fn publish(conn: &Conn, tmp: &str, path: &str, cond: &Cond, what: &str) -> io::Result<Put> {
    let r: io::Result<Put> = async {
        match cond {
            // OpenSSH's SSH_FXP_RENAME links the new name (failing if it
            // exists) then unlinks the old: a create-only publish. The SFTP
            // draft says rename must fail on an existing target too, but some
            // servers rename(2) over it (not OpenSSH, the server cairn targets).
            Cond::CreateOnly if conn.stat(path, what).await?.is_some() => Ok(Put::Exists),
            Cond::CreateOnly => match conn.sftp.rename(tmp, path).await {
                Ok(_) => Ok(Put::Written),
                Err(e @ SftpError::Status(_)) => match conn.stat(path, what).await {
                    Ok(Some(_)) => Ok(Put::Exists),
                    Ok(None) => Err(conn.fail(e, "rename", what)),
                    Err(e2) => Err(e2),
                },
                Err(e) => Err(conn.fail(e, "rename", what)),
            },
            Cond::Overwrite if conn.posix_rename => conn
                .posix_rename(tmp, path)
                .await
                .map(|_| Put::Written)
                .map_err(|e| conn.fail(e, "posix-rename", what)),
            // No atomic replace: remove then rename (a reader may briefly see
            // no object; only hints are written so).
            Cond::Overwrite => {
                conn.remove(path, what).await?;
                conn.sftp
                    .rename(tmp, path)
                    .await
                    .map_err(|e| conn.fail(e, "rename", what))?;
                Ok(Put::Written)
            }
        }
    }
    .await;
    if !matches!(r, Ok(Put::Written)) {
        discard_temp(conn, tmp).await;
    }
    r
}

/// Best-effort removal of a temp file, skipped when the connection is
/// gone (sweep_temps finds it later) and bounded so it never hangs.
async fn discard_temp(conn: &Conn, tmp: &str) {
    if conn.usable() {
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.sftp.remove(tmp)).await;
    }
}

/// A temp file being written with pipelined writes.
struct TempFile {
    conn: Arc<Conn>,
    path: String,
    what: String,
    handle: Option<String>,
    offset: u64,
    buf: BytesMut,
    inflight: VecDeque<JoinHandle<Result<(), SftpError>>>,
}

impl TempFile {
    /// Creates `path` (exclusively: a temp name is never reused), making
    /// its directory first if it is missing.
    async fn create(conn: &Arc<Conn>, dir: &str, path: &str, what: &str) -> io::Result<TempFile> {
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let handle = match conn.sftp.open(path, flags, FileAttributes::empty()).await {
            Ok(h) => h.handle,
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                conn.mkdir_p(dir, what).await?;
                conn.sftp
                    .open(path, flags, FileAttributes::empty())
                    .await
                    .map_err(|e| conn.fail(e, "create a temp file", what))?
                    .handle
            }
            Err(e) => return Err(conn.fail(e, "create a temp file", what)),
        };
        Ok(TempFile {
            conn: conn.clone(),
            path: path.to_string(),
            what: what.to_string(),
            handle: Some(handle),
            offset: 0,
            buf: BytesMut::new(),
            inflight: VecDeque::new(),
        })
    }

    /// Appends data: sent in full pieces, at most WRITES_IN_FLIGHT of them
    /// unanswered, so memory stays bounded whatever the body size.
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.buf.extend_from_slice(&data);
        while self.buf.len() >= self.conn.write_piece {
            let piece = self.buf.split_to(self.conn.write_piece);
            self.send(piece.to_vec()).await?;
        }
        Ok(())
    }

    async fn send(&mut self, piece: Vec<u8>) -> io::Result<()> {
        while self.inflight.len() >= WRITES_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let handle = self.handle.clone().unwrap_or_default();
        let sftp = self.conn.sftp.clone();
        let offset = self.offset;
        self.offset += piece.len() as u64;
        // A task, so the request goes out now rather than when polled.
        self.inflight.push_back(tokio::spawn(async move {
            sftp.write(handle, offset, piece).await.map(drop)
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> io::Result<()> {
        let Some(t) = self.inflight.pop_front() else {
            return Ok(());
        };
        match t.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.conn.fail(e, "write", &self.what)),
            Err(e) => Err(io::Error::other(format!("{}: write: {e}", self.what))),
        }
    }

    /// Sends the rest, waits for every write, fsyncs and closes.
    async fn finish(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.send(rest.to_vec()).await?;
        }
        while !self.inflight.is_empty() {
            self.wait_oldest().await?;
        }
        let handle = self.handle.clone().unwrap_or_default();
        if self.conn.fsync {
            self.conn
                .sftp
                .fsync(handle.as_str())
                .await
                .map_err(|e| self.conn.fail(e, "fsync", &self.what))?;
        }
        self.handle = None;
        self.conn.close(handle, &self.what).await
    }

    /// Abandons the file: stops the writes, closes and removes it.
    async fn discard(mut self) {
        for t in self.inflight.drain(..) {
            t.abort();
        }
        if let Some(h) = self.handle.take()
            && self.conn.usable()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), self.conn.sftp.close(h)).await;
        }
        discard_temp(&self.conn, &self.path).await;
    }
}

/// A file being read with pipelined reads.
struct Reader {
    conn: Arc<Conn>,
    handle: Option<String>,
    what: String,
    /// The offset of the next read to send.
    offset: u64,
    pending: VecDeque<(u64, JoinHandle<Result<Data, SftpError>>)>,
}

impl Reader {
    /// Opens `path`; `None` if it does not exist.
    async fn open(conn: &Arc<Conn>, path: &str, what: &str) -> io::Result<Option<Reader>> {
        let handle = match conn
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await
        {
            Ok(h) => h.handle,
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                return Ok(None);
            }
            Err(e) => return Err(conn.fail(e, "open", what)),
        };
        Ok(Some(Reader {
            conn: conn.clone(),
            handle: Some(handle),
            what: what.to_string(),
            offset: 0,
            pending: VecDeque::new(),
        }))
    }

    /// The next piece, `None` at the end (the handle is closed then).
    async fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        let Some(handle) = self.handle.clone() else {
            return Ok(None);
        };
        let piece = self.conn.read_piece;
        while self.pending.len() < READS_IN_FLIGHT {
            let (sftp, h, off) = (self.conn.sftp.clone(), handle.clone(), self.offset);
            self.pending.push_back((
                off,
                tokio::spawn(async move { sftp.read(h, off, piece).await }),
            ));
            self.offset += u64::from(piece);
        }
        let Some((off, task)) = self.pending.pop_front() else {
            return Ok(None);
        };
        let r = task
            .await
            .map_err(|e| io::Error::other(format!("{}: read: {e}", self.what)))?;
        match r {
            Ok(d) if !d.data.is_empty() => {
                let n = d.data.len() as u64;
                if n < u64::from(piece) {
                    // A short read: the reads queued after it start past
                    // what came; drop them and go on from here (at the end
                    // of the file the next read answers EOF).
                    self.abort_pending();
                    self.offset = off + n;
                }
                Ok(Some(Bytes::from(d.data)))
            }
            Ok(_) => self.end().await,
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => self.end().await,
            Err(e) => {
                self.abort_pending();
                Err(self.conn.fail(e, "read", &self.what))
            }
        }
    }

    async fn end(&mut self) -> io::Result<Option<Bytes>> {
        self.abort_pending();
        if let Some(h) = self.handle.take() {
            self.conn.close(h, &self.what).await?;
        }
        Ok(None)
    }

    fn abort_pending(&mut self) {
        for (_, t) in self.pending.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Reader {
    /// A stream dropped before its end still closes its server handle.
    fn drop(&mut self) {
        self.abort_pending();
        if let Some(h) = self.handle.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let sftp = self.conn.sftp.clone();
            rt.spawn(async move {
                let _ = sftp.close(h).await;
            });
        }
    }
}

/// A whole file, `None` if absent.
async fn read_all(conn: &Arc<Conn>, path: &str, what: &str) -> io::Result<Option<Bytes>> {
    let Some(mut r) = Reader::open(conn, path, what).await? else {
        return Ok(None);
    };
    let mut out = BytesMut::new();
    while let Some(b) = r.next_piece().await? {
        out.extend_from_slice(&b);
    }
    Ok(Some(out.freeze()))
}

/// Regular files in `dir` (names and attributes), `None` if `dir` is absent.
async fn read_dir(
    conn: &Conn,
    dir: &str,
    what: &str,
) -> io::Result<Option<Vec<(String, FileAttributes)>>> {
    let handle = match conn.sftp.opendir(dir).await {
        Ok(h) => h.handle,
        Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => return Ok(None),
        Err(e) => return Err(conn.fail(e, "opendir", what)),
    };
    let mut out = Vec::new();
    let listed = async {
        loop {
            match conn.sftp.readdir(handle.as_str()).await {
                Ok(name) => out.extend(name.files.into_iter().map(|f| (f.filename, f.attrs))),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => return Ok(()),
                Err(e) => return Err(conn.fail(e, "readdir", what)),
            }
        }
    }
    .await;
    let closed = conn.close(handle, what).await;
    listed?;
    closed?;
    Ok(Some(out))
}

/// The outcome of a pipelined remove; an absent file is fine.
async fn removed(
    conn: &Conn,
    what: &str,
    task: JoinHandle<Result<Status, SftpError>>,
) -> io::Result<()> {
    match task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(SftpError::Status(s))) if s.status_code == StatusCode::NoSuchFile => Ok(()),
        Ok(Err(e)) => Err(conn.fail(e, "remove", what)),
        Err(e) => Err(io::Error::other(format!("{what}: remove: {e}"))),
    }
}

/// Whether the listed attributes say regular file (servers that send no
/// mode get the benefit of the doubt).
fn is_file(a: &FileAttributes) -> bool {
    a.permissions.is_none() || a.is_regular()
}

#[async_trait]
impl Backend for Sftp {
    fn describe(&self, key: &str) -> String {
        if key.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{key}", self.base)
        }
    }

    fn scheme(&self) -> &'static str {
        "sftp"
    }

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let path = self.path(key)?;
        let what = self.describe(key);
        self.run(&what, |conn, _| {
            let (path, what) = (path.clone(), what.clone());
            async move { read_all(&conn, &path, &what).await }
        })
        .await
    }

    async fn read(&self, key: &str) -> io::Result<ByteStream> {
        let path = self.path(key)?;
        let what = self.describe(key);
        let reader = self
            .run(&what, |conn, _| {
                let (path, what) = (path.clone(), what.clone());
                async move { Reader::open(&conn, &path, &what).await }
            })
            .await?
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{what}: no such object"))
            })?;
        // Once streaming, a failure ends the stream: the bytes already
        // handed out cannot be taken back, so the caller decides.
        let stream = futures::stream::try_unfold(reader, |mut r| async move {
            Ok(r.next_piece().await?.map(|b| (b, r)))
        });
        Ok(stream.boxed())
    }

    async fn put(&self, key: &str, data: Bytes, cond: Cond) -> io::Result<Put> {
        self.path(key)?;
        let what = self.describe(key);
        self.run(&what, |conn, attempt| {
            let (data, cond) = (data.clone(), cond.clone());
            async move { self.put_once(&conn, key, &data, &cond, attempt).await }
        })
        .await
    }

    async fn upload(&self, key: &str, mut body: Body, cond: Cond) -> io::Result<Put> {
        let path = self.path(key)?;
        let what = self.describe(key);
        // Opening the temp file is retried (no body read yet; each try
        // takes a new temp name, in case a lost answer hid a created file);
        // the body cannot be replayed, so a failure while streaming is final.
        let mut f = self
            .run(&what, |conn, _| {
                let (path, what) = (path.clone(), what.clone());
                async move {
                    let (dir, tmp) = temp_path(&path);
                    TempFile::create(&conn, &dir, &tmp, &what).await
                }
            })
            .await?;
        let tmp = f.path.clone();
        let streamed = async {
            loop {
                match body.next().await {
                    Ok(Some(b)) => f.write(b).await?,
                    Ok(None) => break,
                    Err(e) => return Err(io::Error::new(e.kind(), format!("{what}: {e}"))),
                }
            }
            f.finish().await
        }
        .await;
        if let Err(e) = streamed {
            f.discard().await;
            return Err(e);
        }
        // The data is safe on the server: publishing is retried, and a try
        // after a lost answer checks whether the earlier one went through.
        self.run(&what, |conn, attempt| {
            let (tmp, path, what, cond) = (tmp.clone(), path.clone(), what.clone(), cond.clone());
            async move {
                if attempt > 0 && conn.stat(&tmp, &what).await?.is_none() {
                    return match conn.stat(&path, &what).await? {
                        Some(_) => Ok(Put::Written),
                        None => Err(io::Error::other(format!(
                            "{what}: the uploaded temp file {tmp} vanished before it was published"
                        ))),
                    };
                }
                publish(&conn, &tmp, &path, &cond, &what).await
            }
        })
        .await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>> {
        let what = self.describe(prefix);
        let dir = match prefix {
            "" => self.root.clone(),
            p => {
                let Some(inner) = p.strip_suffix('/') else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{what}: a list prefix must be empty or end in /"),
                    ));
                };
                self.path(inner)?
            }
        };
        let entries = self
            .run(&what, |conn, _| {
                let (dir, what) = (dir.clone(), what.clone());
                async move { read_dir(&conn, &dir, &what).await }
            })
            .await?
            .unwrap_or_default();
        let mut out: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|(name, a)| !name.starts_with('.') && is_file(a))
            .map(|(name, a)| ObjectInfo {
                key: format!("{prefix}{name}"),
                size: a.size.unwrap_or(0),
                modified_ms: a.mtime.map(|s| i64::from(s) * 1000),
            })
            .filter(|o| start_after.is_none_or(|s| o.key.as_str() > s))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> io::Result<()> {
        let paths = keys
            .iter()
            .map(|k| Ok((self.path(k)?, self.describe(k))))
            .collect::<io::Result<Vec<(String, String)>>>()?;
        let what = format!(
            "deleting {} object{} from {}",
            keys.len(),
            plural(keys.len()),
            self.base
        );
        // Removes of absent files succeed, so a retry after a partial pass
        // is harmless; several go out at once (SFTP is request/response).
        self.run(&what, |conn, _| {
            let paths = paths.clone();
            async move {
                let mut inflight: VecDeque<(String, JoinHandle<_>)> = VecDeque::new();
                for (path, what) in paths {
                    if inflight.len() >= WRITES_IN_FLIGHT
                        && let Some((w, t)) = inflight.pop_front()
                    {
                        removed(&conn, &w, t).await?;
                    }
                    let sftp = conn.sftp.clone();
                    inflight
                        .push_back((what, tokio::spawn(async move { sftp.remove(path).await })));
                }
                while let Some((w, t)) = inflight.pop_front() {
                    removed(&conn, &w, t).await?;
                }
                Ok(())
            }
        })
        .await
    }

    async fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize> {
        let cutoff = super::now_ms().saturating_sub(older_than_ms);
        let what = format!("sweeping temp files in {}", self.base);
        self.run(&what, |conn, _| {
            let what = what.clone();
            async move {
                let Some(top) = read_dir(&conn, &self.root, &what).await? else {
                    return Ok(0);
                };
                let mut dirs = vec![self.root.clone()];
                dirs.extend(
                    top.iter()
                        .filter(|(n, a)| n != "." && n != ".." && a.is_dir())
                        .map(|(n, _)| self.join(n)),
                );
                let mut removed = 0;
                for (i, dir) in dirs.iter().enumerate() {
                    let entries = if i == 0 {
                        Some(top.clone())
                    } else {
                        read_dir(&conn, dir, &what).await?
                    };
                    for (name, a) in entries.unwrap_or_default() {
                        let old = a.mtime.is_some_and(|s| i64::from(s) * 1000 < cutoff);
                        if super::is_temp_name(&name) && a.is_regular() && old {
                            let p = if dir == "/" {
                                format!("/{name}")
                            } else {
                                format!("{dir}/{name}")
                            };
                            if conn.remove(&p, &what).await? {
                                removed += 1;
                            }
                        }
                    }
                }
                Ok(removed)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_temp_paths() {
        assert_eq!(parent("/srv/b/x"), Some("/srv/b"));
        assert_eq!(parent("/srv"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(parent("b/x"), Some("b"));
        assert_eq!(parent("b"), None);
        let (dir, tmp) = temp_path("/srv/b/manifest.json");
        assert_eq!(dir, "/srv/b");
        assert!(tmp.starts_with("/srv/b/.manifest.json.") && tmp.ends_with(".tmp"));
        let (dir, tmp) = temp_path("/x");
        assert_eq!(dir, "/");
        assert!(tmp.starts_with("/.x."));
        let (dir, tmp) = temp_path("x");
        assert_eq!(dir, ".");
        assert!(tmp.starts_with(".x.") && super::super::is_temp_name(&tmp));
    }
}
