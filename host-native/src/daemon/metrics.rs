//! Prometheus metrics of the daemon (text exposition format) and the tiny
//! HTTP server that serves them on a loopback address: `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::job::{Kind, Outcome};

type Labels = Vec<(String, String)>;
type FGauge = Family<Labels, Gauge<f64, AtomicU64>>;
type FCounter = Family<Labels, Counter>;
type FHist = Family<Labels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    last_success: FGauge,
    last_failure: FGauge,
    runs: FCounter,
    duration: FHist,
    dest_bytes: FCounter,
    dest_failures: FCounter,
    dest_last_success: FGauge,
    drill_last_pass: FGauge,
    drill_failures: FCounter,
}

fn db(d: &str) -> Labels {
    vec![("database".into(), d.into())]
}

fn dest(d: &str, to: &str) -> Labels {
    vec![
        ("database".into(), d.into()),
        ("destination".into(), to.into()),
    ]
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let m = Metrics {
            last_success: FGauge::default(),
            last_failure: FGauge::default(),
            runs: FCounter::default(),
            duration: FHist::new_with_constructor(histogram as fn() -> Histogram),
            dest_bytes: FCounter::default(),
            dest_failures: FCounter::default(),
            dest_last_success: FGauge::default(),
            drill_last_pass: FGauge::default(),
            drill_failures: FCounter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last fully successful backup of the database ended",
            m.last_success.clone(),
        );
        registry.register(
            "backup_last_failure_timestamp_seconds",
            "When the last failed backup of the database ended",
            m.last_failure.clone(),
        );
        registry.register(
            "backup_runs",
            "Backup runs by result (success or failure)",
            m.runs.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "How long backup runs took",
            m.duration.clone(),
        );
        registry.register(
            "destination_bytes_written",
            "Archive bytes written to the destination",
            m.dest_bytes.clone(),
        );
        registry.register(
            "destination_failures",
            "Backups that failed at this destination",
            m.dest_failures.clone(),
        );
        registry.register(
            "destination_last_success_timestamp_seconds",
            "When the last backup to this destination succeeded",
            m.dest_last_success.clone(),
        );
        registry.register(
            "drill_last_pass_timestamp_seconds",
            "When the newest backup at this destination last passed a restore drill",
            m.drill_last_pass.clone(),
        );
        registry.register(
            "drill_failures",
            "Restore drills that failed at this destination",
            m.drill_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn record(&self, kind: Kind, database: &str, out: &Outcome, seconds: f64, end_ms: i64) {
        let t = end_ms as f64 / 1000.0;
        match kind {
            Kind::Backup => {
                let status = if out.ok { "success" } else { "failure" };
                let mut l = db(database);
                l.push(("status".into(), status.into()));
                self.runs.get_or_create(&l).inc();
                self.duration.get_or_create(&db(database)).observe(seconds);
                if out.ok {
                    self.last_success.get_or_create(&db(database)).set(t);
                } else {
                    self.last_failure.get_or_create(&db(database)).set(t);
                }
                for d in &out.destinations {
                    let l = dest(database, &d.destination);
                    if d.ok {
                        self.dest_bytes.get_or_create(&l).inc_by(d.bytes);
                        self.dest_last_success.get_or_create(&l).set(t);
                    } else {
                        self.dest_failures.get_or_create(&l).inc();
                    }
                }
            }
            Kind::Drill => {
                for d in &out.destinations {
                    let l = dest(database, &d.destination);
                    if d.ok {
                        self.drill_last_pass.get_or_create(&l).set(t);
                    } else {
                        self.drill_failures.get_or_create(&l).inc();
                    }
                }
            }
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<std::sync::Mutex<Metrics>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded), with a deadline.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let line = head.lines().next().unwrap_or("");
            let (status, ctype, body) =
                if line.starts_with("GET /metrics ") || line == "GET /metrics" {
                    let text = metrics.lock().map(|m| m.text()).unwrap_or_default();
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    )
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        "try GET /metrics\n".to_string(),
                    )
                };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::job::DestOutcome;

    #[test]
    fn records_runs_per_database_and_destination() {
        let m = Metrics::new();
        let out = Outcome {
            ok: false,
            error: Some("x".into()),
            id: Some("id".into()),
            bytes: 100,
            destinations: vec![
                DestOutcome {
                    destination: "/b".into(),
                    ok: true,
                    bytes: 100,
                    ..Default::default()
                },
                DestOutcome {
                    destination: "s3://x/y".into(),
                    ok: false,
                    error: Some("down".into()),
                    ..Default::default()
                },
            ],
        };
        m.record(Kind::Backup, "app", &out, 1.5, 1_700_000_000_000);
        let t = m.text();
        assert!(
            t.contains("cairn_backup_runs_total{database=\"app\",status=\"failure\"} 1"),
            "{t}"
        );
        assert!(
            t.contains(
                "cairn_destination_bytes_written_total{database=\"app\",destination=\"/b\"} 100"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "cairn_destination_failures_total{database=\"app\",destination=\"s3://x/y\"} 1"
            ),
            "{t}"
        );
        assert!(
            t.contains("cairn_backup_last_failure_timestamp_seconds{database=\"app\"} 1700000000"),
            "{t}"
        );
        assert!(
            t.contains("cairn_backup_duration_seconds_count{database=\"app\"} 1"),
            "{t}"
        );
        assert!(t.trim_end().ends_with("# EOF"), "{t}");
    }
}
