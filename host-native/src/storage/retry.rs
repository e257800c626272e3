//! Retries for remote stores: exponential backoff with full jitter
//! (the AWS architecture blog's "full jitter"), a bounded number of tries,
//! and a rule for which errors are worth another try.

use std::future::Future;
use std::io;
use std::time::Duration;

/// How often and how long to retry one request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Policy {
    /// Tunable for tests through `CAIRN_RETRY_ATTEMPTS` / `CAIRN_RETRY_BASE_MS`.
    pub fn from_env() -> Policy {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Policy {
            attempts: num("CAIRN_RETRY_ATTEMPTS")
                .map(|n| n.clamp(1, 100) as u32)
                .unwrap_or(6),
            base: Duration::from_millis(num("CAIRN_RETRY_BASE_MS").unwrap_or(200)),
            cap: Duration::from_secs(20),
        }
    }

    /// The wait before try `n` (1-based: before the second try, n = 1).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.min(16));
        let top = exp.min(self.cap).as_millis() as u64;
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        Duration::from_millis(u64::from_le_bytes(r) % (top + 1))
    }
}

/// Whether an I/O error from a store may pass on another try: timeouts,
/// resets, refused connections, 5xx and throttling (mapped to these kinds
/// by the backends). Permission, not-found and bad-request errors do not.
pub fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        TimedOut
            | ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | UnexpectedEof
            | Interrupted
            | NotConnected
            | ResourceBusy
    ) && !e.to_string().contains("abandoned")
}

/// Runs `op` until it succeeds, fails for good, or the tries run out. The
/// final error says how many tries were made.
pub async fn retry<T, F, Fut>(policy: Policy, what: &str, mut op: F) -> io::Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let mut n = 0;
    loop {
        match op(n).await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && n + 1 < policy.attempts => {
                n += 1;
                let wait = policy.delay(n);
                tracing_log(what, n, &e, wait);
                tokio::time::sleep(wait).await;
            }
            Err(e) if n > 0 => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} (after {} tries)", n + 1),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

fn tracing_log(what: &str, n: u32, e: &io::Error, wait: Duration) {
    if std::env::var_os("CAIRN_DEBUG_RETRY").is_some() {
        eprintln!("retry {n} of {what} in {wait:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_transient_errors_then_gives_up_with_a_count() {
        let p = Policy {
            attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let mut calls = 0;
        let r: io::Result<()> = retry(p, "x", |_| {
            calls += 1;
            async { Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")) }
        })
        .await;
        assert_eq!(calls, 3);
        assert!(r.unwrap_err().to_string().contains("after 3 tries"));
        let mut calls = 0;
        let r: io::Result<()> = retry(p, "x", |_| {
            calls += 1;
            async { Err(io::Error::new(io::ErrorKind::PermissionDenied, "no")) }
        })
        .await;
        assert_eq!(calls, 1);
        assert_eq!(r.unwrap_err().to_string(), "no");
        let r = retry(p, "x", |n| async move {
            if n < 2 {
                Err(io::Error::new(io::ErrorKind::TimedOut, "slow"))
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[test]
    fn delays_stay_under_the_cap() {
        let p = Policy::from_env();
        for n in 1..40 {
            assert!(p.delay(n) <= p.cap);
        }
    }
}
