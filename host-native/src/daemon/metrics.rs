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
    repl_lag: FGauge,
    repl_txid: FGauge,
    repl_last_shipped: FGauge,
    repl_up: FGauge,
    repl_segments: FCounter,
    repl_bytes: FCounter,
    repl_failures: FCounter,
    repl_generations: FCounter,
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
            repl_lag: FGauge::default(),
            repl_txid: FGauge::default(),
            repl_last_shipped: FGauge::default(),
            repl_up: FGauge::default(),
            repl_segments: FCounter::default(),
            repl_bytes: FCounter::default(),
            repl_failures: FCounter::default(),
            repl_generations: FCounter::default(),
            registry: Registry::default(),
        };
        for (name, help, g) in [
            (
                "replication_lag_seconds",
                "How long transactions read from the WAL have waited to be shipped (0: all shipped)",
                &m.repl_lag,
            ),
            (
                "replication_shipped_txid",
                "The newest transaction id shipped to every destination",
                &m.repl_txid,
            ),
            (
                "replication_last_shipped_timestamp_seconds",
                "When the replicator last shipped a segment",
                &m.repl_last_shipped,
            ),
            (
                "replication_up",
                "1 while the replicator runs (starting, running, retrying), 0 after it failed",
                &m.repl_up,
            ),
        ] {
            registry.register(name, help, g.clone());
        }
        for (name, help, c) in [
            (
                "replication_segments_shipped",
                "Segments shipped (to every destination)",
                &m.repl_segments,
            ),
            (
                "replication_bytes_shipped",
                "Segment bytes shipped (to each destination)",
                &m.repl_bytes,
            ),
            (
                "replication_failures",
                "Replicator runs that failed (each started again after a back-off)",
                &m.repl_failures,
            ),
            (
                "replication_generations",
                "Generations started (at start-up, on the snapshot interval, after missed frames)",
                &m.repl_generations,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
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

    /// A running replicator's status, and what it shipped since the last call.
    pub fn replication(
        &self,
        database: &str,
        st: &crate::replicate::Status,
        segments: u64,
        bytes: u64,
        new_generation: bool,
    ) {
        let l = db(database);
        let now = crate::storage::now_ms();
        self.repl_lag
            .get_or_create(&l)
            .set(st.lag_ms(now) as f64 / 1000.0);
        self.repl_txid.get_or_create(&l).set(st.shipped_txid as f64);
        if let Some(t) = st.last_shipped_at_ms {
            self.repl_last_shipped
                .get_or_create(&l)
                .set(t as f64 / 1000.0);
        }
        self.repl_up
            .get_or_create(&l)
            .set(if st.is_live() { 1.0 } else { 0.0 });
        self.repl_segments.get_or_create(&l).inc_by(segments);
        self.repl_bytes.get_or_create(&l).inc_by(bytes);
        if new_generation {
            self.repl_generations.get_or_create(&l).inc();
        }
    }

    pub fn replication_failed(&self, database: &str) {
        self.repl_failures.get_or_create(&db(database)).inc();
        self.replication_down(database);
    }

    /// Not running (failed, waiting for its back-off).
    pub fn replication_down(&self, database: &str) {
        self.repl_up.get_or_create(&db(database)).set(0.0);
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

    #[test]
    fn replication_metrics_per_database() {
        let m = Metrics::new();
        let mut st = crate::replicate::Status {
            state: crate::replicate::State::Running,
            shipped_txid: 42,
            last_shipped_at_ms: Some(1_700_000_000_000),
            ..Default::default()
        };
        st.pending(true);
        st.pending_since_ms = Some(crate::storage::now_ms() - 3000);
        m.replication("app", &st, 3, 1000, true);
        m.replication("app", &st, 2, 500, false);
        m.replication_failed("app");
        let t = m.text();
        for want in [
            "cairn_replication_shipped_txid{database=\"app\"} 42",
            "cairn_replication_segments_shipped_total{database=\"app\"} 5",
            "cairn_replication_bytes_shipped_total{database=\"app\"} 1500",
            "cairn_replication_generations_total{database=\"app\"} 1",
            "cairn_replication_failures_total{database=\"app\"} 1",
            "cairn_replication_up{database=\"app\"} 0",
            "cairn_replication_last_shipped_timestamp_seconds{database=\"app\"} 1700000000",
        ] {
            assert!(t.contains(want), "{want}:\n{t}");
        }
        let lag: f64 = t
            .lines()
            .find_map(|l| l.strip_prefix("cairn_replication_lag_seconds{database=\"app\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((2.9..10.0).contains(&lag), "{lag}");
    }
}
