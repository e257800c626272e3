//! Finding PostgreSQL's client programs and running them as children whose
//! exit status and stderr decide the outcome.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, ExitStatus};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};

/// Directory holding pg_dump, pg_restore and psql, overriding the search.
pub const BIN_ENV: &str = "CAIRN_PG_BIN";

/// Most of a child's stderr kept for the message; its first lines say why.
const STDERR_KEEP: usize = 16 << 10;

/// The path of a PostgreSQL client program: in `$CAIRN_PG_BIN` if set, else
/// on PATH, else in the newest `/usr/lib/postgresql/<version>/bin` (Debian
/// installs the versioned binaries there).
pub fn find(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_ENV).filter(|d| !d.is_empty()) {
        let p = Path::new(&dir).join(name);
        if is_executable(&p) {
            return Ok(p);
        }
        bail!(
            "{name} not found in {BIN_ENV}={}: point {BIN_ENV} at the directory holding PostgreSQL's client programs, or install them (Debian/Ubuntu: apt-get install postgresql-client)",
            Path::new(&dir).display()
        );
    }
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| is_executable(p));
    if let Some(p) = on_path {
        return Ok(p);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            is_executable(&p).then_some((v, p))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow!(
            "{name} not found: install PostgreSQL's client programs (Debian/Ubuntu: apt-get install postgresql-client; Fedora: dnf install postgresql; macOS: brew install libpq) or set {BIN_ENV} to the directory holding {name}"
        )
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A child program whose stderr is being collected.
pub struct Running {
    /// "pg_dump", "pg_restore", "psql": for messages.
    pub what: &'static str,
    child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    done: bool,
}

impl Running {
    /// Spawns `cmd` (stdin, stdout as the caller set them; stderr piped).
    pub fn spawn(what: &'static str, mut cmd: std::process::Command) -> Result<Running> {
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| anyhow!("cannot run {what}: {e}"))?;
        let mut err = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            // Read to the end even past the limit: a child blocked on a full
            // stderr pipe would never exit.
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEEP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        });
        Ok(Running {
            what,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            stderr: Some(stderr),
            done: false,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited already (without reaping it twice).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Closes stdin, waits, and turns a failure into a one-line error with
    /// the child's stderr.
    pub fn finish(mut self) -> Result<()> {
        self.stdin = None;
        self.stdout = None;
        let status = self.child.wait();
        self.done = true;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let status = status.map_err(|e| anyhow!("cannot wait for {}: {e}", self.what))?;
        if status.success() {
            return Ok(());
        }
        Err(anyhow!(
            "{} failed ({}): {}",
            self.what,
            describe_status(status),
            one_line(&stderr)
        ))
    }

    /// Stops the child (SIGKILL) and reaps it: for when the input it was
    /// given turned out to be bad, so it must not finish its work.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if !self.done {
            self.stdin = None;
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.done = true;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// "exit status 1", "killed by signal 9 (SIGKILL)".
pub fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGPIPE => " (SIGPIPE)",
                libc::SIGSEGV => " (SIGSEGV)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        _ => s.to_string(),
    }
}

/// A child's stderr as one line: lines trimmed and joined with "; ".
pub fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "it printed nothing".to_string()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_becomes_one_line() {
        assert_eq!(
            one_line(b"pg_dump: error: connection failed\n  DETAIL: x\n\n"),
            "pg_dump: error: connection failed; DETAIL: x"
        );
        assert_eq!(one_line(b""), "it printed nothing");
    }
}
