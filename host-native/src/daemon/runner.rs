//! Runs one job in a child process (`cairn internal-job`) with a deadline.
//!
//! Why a child and not a thread: the backup pipeline runs on its own
//! threads and cannot be interrupted halfway. A child can: on a timeout or
//! at shutdown its process group is killed. That is safe because a backup
//! publishes nothing until its final commit (the archive goes under a
//! temporary name, the catalog record last), so a killed run leaves nothing
//! a reader can find; its temporary objects are swept later (the next local
//! backup, or prune).

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::job::{Kind, Outcome};

/// What the child needs: the validated config text and where it came from.
pub struct Spec<'a> {
    pub config_text: &'a str,
    pub config_file: &'a std::path::Path,
    pub database: &'a str,
    pub kind: Kind,
    pub timeout: Duration,
}

/// Runs the job; never fails: a crash, a timeout or an abort is a failed
/// [`Outcome`] saying so. `abort` turning true kills the child at once.
pub async fn run(spec: Spec<'_>, mut abort: watch::Receiver<bool>) -> (Outcome, f64) {
    let started = Instant::now();
    let out = run_inner(&spec, &mut abort).await;
    (out, started.elapsed().as_secs_f64())
}

async fn run_inner(spec: &Spec<'_>, abort: &mut watch::Receiver<bool>) -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::failed(format!("cannot find the cairn executable: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("internal-job")
        .arg("--config")
        .arg(spec.config_file)
        .arg("--database")
        .arg(spec.database)
        .arg("--kind")
        .arg(spec.kind.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C in a terminal reaches the daemon
        // only, which then decides (grace period); a kill takes the group.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        cmd.pre_exec(|| {
            // If the daemon dies, so does the run.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("cannot start the job process: {e}")),
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let text = spec.config_text.to_string();
        tokio::spawn(async move {
            let _ = stdin.write_all(text.as_bytes()).await;
        });
    }
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let db = spec.database.to_string();
    let kind = spec.kind.as_str();
    // The child's own messages go into the daemon's log; the last few are
    // kept for an error that has no JSON outcome (a crash).
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail: Vec<String> = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            tracing::debug!(database = %db, job = kind, "job: {l}");
            tail.push(l);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
        tail
    });
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let why_killed = tokio::select! {
        status = child.wait() => {
            let buf = out_task.await.unwrap_or_default();
            let tail = err_task.await.unwrap_or_default();
            return match (serde_json::from_slice::<Outcome>(&buf), status) {
                (Ok(o), _) => o,
                (Err(_), Ok(st)) => Outcome::failed(format!(
                    "the job process ended ({st}) without a result: {}",
                    tail.last().map_or("no message", |s| s.as_str())
                )),
                (Err(_), Err(e)) => Outcome::failed(format!("cannot wait for the job process: {e}")),
            };
        }
        _ = tokio::time::sleep(spec.timeout) => format!(
            "timed out after {} and was stopped; nothing from this run was published",
            humantime::format_duration(spec.timeout)
        ),
        Ok(()) = async { abort.wait_for(|a| *a).await.map(|_| ()) } => "stopped at shutdown (the grace period ended); nothing from this run was published".to_string(),
    };
    if let Some(pid) = pid {
        // SAFETY: signals the child's own process group (it leads it).
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
    out_task.abort();
    err_task.abort();
    Outcome::failed(why_killed)
}
