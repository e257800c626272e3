//! A private PostgreSQL server on 127.0.0.1 for the PostgreSQL tests:
//! `initdb` into a temp directory (as the `postgres` user when the tests run
//! as root: initdb refuses root), then `postgres` in the foreground on a
//! free high port, stopped by PID (fast shutdown) when the fixture drops.
//!
//! TCP connections need the password (scram-sha-256), as cairn's users'
//! would; the fixture's own admin commands use the Unix socket (trust).
//! Missing binaries are a skip on a developer machine and a panic under
//! `CI=true`, like the other servers (servers.rs).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::servers::{free_port, log_tail, release_port, unavailable};

pub const PASSWORD: &str = "pg-Secret-4711";
pub const USER: &str = "postgres";

pub struct PgServer {
    pub port: u16,
    /// The directory of initdb, postgres, psql, pgbench, pg_restore.
    pub bin: PathBuf,
    pub sock: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    // Last: the server stops before its files go.
    _dir: tempfile::TempDir,
}

/// `$CAIRN_PG_BIN`, else the newest `/usr/lib/postgresql/<N>/bin` with a server.
fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_PG_BIN").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d)).filter(|d| d.join("postgres").is_file());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// The uid and gid to run the server as: `postgres` when we are root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: a NUL-terminated name; the result is read at once, before any
    // other getpw* call in this thread.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        panic!("the tests run as root but there is no `postgres` user to run initdb as");
    }
    // SAFETY: non-null, from getpwnam above.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn as_server_user(cmd: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
}

fn chown_tree(p: &Path) {
    let Some((uid, gid)) = server_user() else {
        return;
    };
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path());
        }
    }
}

impl PgServer {
    /// A fresh cluster with a password for `postgres`, running.
    pub fn start() -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            return unavailable("PostgreSQL", "no /usr/lib/postgresql/<N>/bin/postgres");
        };
        let dir = tempfile::Builder::new()
            .prefix("cairn-pg-")
            .tempdir()
            .expect("a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        let log = dir.path().join("postgres.log");
        let pwfile = dir.path().join("pw");
        std::fs::create_dir_all(&sock).unwrap();
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        File::create(&log).unwrap();
        chown_tree(dir.path());
        let mut init = Command::new(bin.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-U", USER, "-E", "UTF8", "--no-sync", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        as_server_user(&mut init);
        let out = init.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            port: 0,
            bin,
            sock,
            log,
            child: None,
            _dir: dir,
        };
        let mut last = String::new();
        for _ in 0..4 {
            let port = free_port();
            let r = server.spawn(&data, port);
            release_port(port);
            match r {
                Ok(()) => return Some(server),
                Err(why) => last = why,
            }
        }
        panic!(
            "PostgreSQL did not start on 127.0.0.1: {last}\nits log:\n{}",
            log_tail(&server.log)
        );
    }

    fn spawn(&mut self, data: &Path, port: u16) -> Result<(), String> {
        let out = File::options().append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&self.sock)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=40"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        as_server_user(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("it exited ({status})"));
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.sock)
                .args(["-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("it did not accept connections within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// The same without the password (give it in PGPASSWORD).
    pub fn url_no_password(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// What cairn's catalog calls database `db` of this server.
    pub fn catalog_name(&self, db: &str) -> String {
        format!("postgres://127.0.0.1:{}/{db}", self.port)
    }

    /// A client program of this server's version, connected over the socket
    /// (through libpq's environment: pgbench's `-d` is not a database).
    pub fn client(&self, program: &str, db: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGDATABASE", db)
            .env_remove("PGPASSWORD");
        c
    }

    /// Runs `sql` in `db`; the output as unaligned tuples, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.try_psql(db, sql);
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Output {
        self.client("psql", db)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("running psql")
    }

    pub fn createdb(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    pub fn database_exists(&self, name: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ) == "1"
    }

    /// `pgbench -i -s SCALE` into a new database `db`.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        self.createdb(db);
        let out = self
            .client("pgbench", db)
            .args(["-i", "-q", "-s", &scale.to_string()])
            .output()
            .expect("running pgbench");
        assert!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server: a fast shutdown, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our unreaped child: the PID cannot be reused.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; the group holds its backends.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
