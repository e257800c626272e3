//! Notifications: a webhook (HTTP POST of a JSON body with a stable,
//! documented schema) or an email (SMTP), per route, each subscribed to
//! successes, failures or both.
//!
//! Delivery runs off the scheduler's path, on tasks of its own: each
//! attempt has its own timeout, failed attempts are retried a bounded
//! number of times, and what cannot be delivered is logged with the reason.
//! A dead webhook thus never delays a backup.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use tokio::task::JoinSet;

use super::config::{Route, RouteKind, Smtp, Tls};
use super::job::{DestOutcome, Kind, Outcome};
use super::schedule::rfc3339;

/// The webhook body (docs/CONFIG.md, "Webhook body"). Fields are only ever
/// added, never renamed; `schema` says which version this is.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub schema: &'static str,
    /// "backup", "drill" (a restore drill) or "replication" (a replicator
    /// failed: `status` "failure"; or recovered after that: "success").
    pub event: &'static str,
    pub database: String,
    /// "success" or "failure".
    pub status: &'static str,
    pub error: Option<String>,
    /// The backup written (backup) — absent when none was.
    pub backup_id: Option<String>,
    /// Archive bytes written to each destination (backup) or checked (drill).
    pub bytes: u64,
    pub duration_seconds: f64,
    pub destinations: Vec<DestOutcome>,
    pub host: String,
    /// When the run ended (RFC 3339, UTC).
    pub time: String,
}

pub const SCHEMA: &str = "cairn.notification.v1";

impl Event {
    pub fn new(kind: Kind, database: &str, out: &Outcome, seconds: f64, end_ms: i64) -> Event {
        Event {
            schema: SCHEMA,
            event: kind.as_str(),
            database: database.to_string(),
            status: if out.ok { "success" } else { "failure" },
            error: out.error.clone(),
            backup_id: out.id.clone(),
            bytes: out.bytes,
            duration_seconds: (seconds * 1000.0).round() / 1000.0,
            destinations: out.destinations.clone(),
            host: crate::storage::hostname(),
            time: rfc3339(end_ms),
        }
    }

    /// A replicator failed (`error`), or recovered after a notified failure.
    pub fn replication(database: &str, error: Option<String>) -> Event {
        Event {
            schema: SCHEMA,
            event: "replication",
            database: database.to_string(),
            status: if error.is_none() {
                "success"
            } else {
                "failure"
            },
            error,
            backup_id: None,
            bytes: 0,
            duration_seconds: 0.0,
            destinations: Vec::new(),
            host: crate::storage::hostname(),
            time: rfc3339(crate::storage::now_ms()),
        }
    }

    fn ok(&self) -> bool {
        self.status == "success"
    }

    fn subject(&self) -> String {
        let what = match self.event {
            "drill" => "restore drill",
            "replication" => "replication",
            _ => "backup",
        };
        if self.event == "replication" && self.ok() {
            format!(
                "cairn: replication of {} recovered on {}",
                self.database, self.host
            )
        } else if self.ok() {
            format!(
                "cairn: {what} of {} succeeded on {}",
                self.database, self.host
            )
        } else {
            format!("cairn: {what} of {} FAILED on {}", self.database, self.host)
        }
    }

    fn text(&self) -> String {
        let mut s = format!(
            "{}\n\ndatabase: {}\nstatus: {}\nhost: {}\ntime: {}\nduration: {:.1}s\n",
            self.subject(),
            self.database,
            self.status,
            self.host,
            self.time,
            self.duration_seconds
        );
        if let Some(e) = &self.error {
            s += &format!("error: {e}\n");
        }
        if let Some(id) = &self.backup_id {
            s += &format!("backup: {id} ({} bytes)\n", self.bytes);
        }
        for d in &self.destinations {
            match &d.error {
                None => s += &format!("  ok      {}\n", d.destination),
                Some(e) => {
                    s += &format!(
                        "  {}  {}: {e}\n",
                        if d.ok { "ok    " } else { "FAILED" },
                        d.destination
                    )
                }
            }
        }
        s
    }
}

/// Sends events to routes on background tasks.
#[derive(Default)]
pub struct Notifier {
    tasks: JoinSet<()>,
}

impl Notifier {
    /// Queues `ev` for every route in `routes` subscribed to its status.
    /// Returns at once.
    pub fn send(&mut self, routes: &[&Route], ev: &Event) {
        while self.tasks.try_join_next().is_some() {}
        for r in routes {
            if (ev.ok() && r.on_success) || (!ev.ok() && r.on_failure) {
                let r = (*r).clone();
                let ev = ev.clone();
                self.tasks.spawn(deliver(r, ev));
            }
        }
    }

    /// Queues `ev` for every route in `routes`, whatever it subscribed to
    /// (the caller chose them: a replicator's recovery goes to the routes
    /// that were told of its failure).
    pub fn send_all(&mut self, routes: &[&Route], ev: &Event) {
        while self.tasks.try_join_next().is_some() {}
        for r in routes {
            self.tasks.spawn(deliver((*r).clone(), ev.clone()));
        }
    }

    /// Waits for deliveries still under way, at most `max`.
    pub async fn drain(&mut self, max: Duration) {
        let _ = tokio::time::timeout(max, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if !self.tasks.is_empty() {
            tracing::warn!(
                pending = self.tasks.len(),
                "exiting with notifications still undelivered"
            );
        }
    }
}

async fn deliver(r: Route, ev: Event) {
    let attempts = r.retries + 1;
    let mut last = String::new();
    for attempt in 1..=attempts {
        let res = tokio::time::timeout(r.timeout, attempt_once(&r, &ev)).await;
        match res {
            Ok(Ok(())) => {
                tracing::info!(route = %r.name, database = %ev.database, status = ev.status, "notification delivered");
                return;
            }
            Ok(Err(e)) => last = crate::storage::url::redact(&format!("{e:#}")),
            Err(_) => last = format!("no answer within {}", humantime::format_duration(r.timeout)),
        }
        if attempt < attempts {
            tracing::warn!(route = %r.name, attempt, "notification not delivered, retrying: {last}");
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
        }
    }
    tracing::error!(
        route = %r.name,
        database = %ev.database,
        status = ev.status,
        "notification undeliverable after {attempts} attempts: {last}"
    );
}

async fn attempt_once(r: &Route, ev: &Event) -> Result<()> {
    match &r.kind {
        RouteKind::Webhook { url, headers } => {
            let url = url.expose().to_string();
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            let body = serde_json::to_string(ev)?;
            let timeout = r.timeout;
            // ureq is blocking: a thread of its own, which its global
            // timeout ends. Not the runtime's blocking pool: the runtime
            // waits for those when it shuts down, and a hanging webhook
            // must not hold up the daemon's exit.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("cairn-webhook".into())
                .spawn(move || {
                    let _ = tx.send(post(&url, &headers, body, timeout));
                })
                .context("cannot start a webhook thread")?;
            rx.await
                .map_err(|_| anyhow!("the webhook thread ended without a result"))?
        }
        RouteKind::Email(s) => email(s, ev, r.timeout).await,
    }
}

fn post(url: &str, headers: &[(String, String)], body: String, timeout: Duration) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut req = agent.post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    // The URL may carry a token: errors name the route, not the URL.
    req.send(body)
        .map_err(|e| anyhow!("webhook POST failed: {e}"))?;
    Ok(())
}

fn smtp_transport(
    s: &Smtp,
    timeout: Duration,
) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>> {
    use lettre::AsyncSmtpTransport as T;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls as L, TlsParameters};
    let b = match (&s.tls, &s.ca_pem) {
        (Tls::Implicit, None) => T::<lettre::Tokio1Executor>::relay(&s.host)?,
        (Tls::Starttls, None) => T::<lettre::Tokio1Executor>::starttls_relay(&s.host)?,
        (Tls::None, _) => T::<lettre::Tokio1Executor>::builder_dangerous(&s.host),
        (tls, Some(pem)) => {
            // The built-in roots plus ca_file's; the host name is still checked.
            let p = TlsParameters::builder(s.host.clone())
                .add_root_certificate(Certificate::from_pem(pem)?)
                .build()?;
            let b = T::<lettre::Tokio1Executor>::builder_dangerous(&s.host);
            match tls {
                Tls::Implicit => b.tls(L::Wrapper(p)),
                _ => b.tls(L::Required(p)),
            }
        }
    };
    let mut b = b.port(s.port).timeout(Some(timeout));
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.expose().to_string()));
    }
    Ok(b.build())
}

async fn email(s: &Smtp, ev: &Event, timeout: Duration) -> Result<()> {
    use lettre::AsyncTransport;
    use lettre::message::{Message, header::ContentType};
    let mut m = Message::builder()
        .from(s.from.parse().context("from address")?)
        .subject(ev.subject())
        .header(ContentType::TEXT_PLAIN);
    for t in &s.to {
        m = m.to(t.parse().context("to address")?);
    }
    let msg = m.body(ev.text())?;
    smtp_transport(s, timeout)?
        .send(msg)
        .await
        .map_err(|e| anyhow!("SMTP delivery to {}:{} failed: {e}", s.host, s.port))?;
    Ok(())
}

/// `config check --connect`: can we talk to the SMTP server (and log in)?
pub async fn check_smtp(s: &Smtp, timeout: Duration) -> Result<()> {
    let t = smtp_transport(s, timeout)?;
    match tokio::time::timeout(timeout, t.test_connection()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(anyhow!("{}:{} did not accept a connection", s.host, s.port)),
        Ok(Err(e)) => Err(anyhow!("cannot reach {}:{}: {e}", s.host, s.port)),
        Err(_) => Err(anyhow!(
            "no answer from {}:{} within {}",
            s.host,
            s.port,
            humantime::format_duration(timeout)
        )),
    }
}
