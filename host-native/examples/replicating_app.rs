//! An application that replicates its own SQLite database in-process: it
//! starts a cairn replicator inside its tokio runtime, writes rows, and
//! shuts the replicator down with itself (every committed row shipped).
//!
//! ```sh
//! cargo run --release -p cairn --example replicating_app -- app.db /var/backups/app \
//!     [--rows 500] [--key-file cairn.key]
//! cairn restore /var/backups/app -o restored.db [--key-file cairn.key]
//! ```
//!
//! It prints `committed N rows` on stdout when it is done; the replicator's
//! messages go through the application's `tracing` subscriber (on stderr).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn::replicate::config::ReplicatorConfig;
use cairn::replicate::embed::Replicator;
use rusqlite::Connection;

struct Args {
    db: String,
    dest: String,
    rows: u32,
    key_file: Option<String>,
}

fn args() -> Result<Args> {
    let mut pos = Vec::new();
    let (mut rows, mut key_file) = (500, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rows" => rows = it.next().context("--rows N")?.parse()?,
            "--key-file" => key_file = Some(it.next().context("--key-file PATH")?),
            _ => pos.push(a),
        }
    }
    let [db, dest] = <[String; 2]>::try_from(pos).map_err(|_| {
        anyhow::anyhow!("usage: replicating_app DB DEST [--rows N] [--key-file PATH]")
    })?;
    Ok(Args {
        db,
        dest,
        rows,
        key_file,
    })
}

/// The settings an application should use beside a replicator (README,
/// "Replicating from inside your app").
fn open(db: &Path) -> Result<Connection> {
    let c = Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(5))?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("{} cannot switch to WAL mode (it is {mode})", db.display());
    }
    c.execute_batch(
        "PRAGMA synchronous=NORMAL;
         PRAGMA wal_autocheckpoint=0;
         CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, at TEXT NOT NULL, body TEXT NOT NULL);",
    )?;
    Ok(c)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let a = args()?;
    // The database exists, in WAL mode, before the replicator looks at it.
    let conn = open(Path::new(&a.db))?;

    // The same field names as a [[databases]] entry in cairn.toml.
    let mut toml = format!(
        "source = {:?}\ndestinations = [{:?}]\ninterval = \"20ms\"\n",
        a.db, a.dest
    );
    if let Some(k) = &a.key_file {
        toml += &format!("key_file = {k:?}\n");
    }
    let config = ReplicatorConfig::from_toml(&toml)?;
    let replicator = Replicator::start(config).await?;
    tracing::info!("replicator running");

    // The application's work: rows written from a blocking task, while
    // the runtime stays free for other async work.
    let rows = a.rows;
    let writer = tokio::task::spawn_blocking(move || -> Result<u32> {
        for i in 0..rows {
            conn.execute(
                "INSERT INTO events(at, body) VALUES (datetime('now'), ?1)",
                [format!("event {i} {}", "x".repeat(200))],
            )?;
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(rows)
    });
    let mut ticks = 0u32;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    let committed = writer.await??;
    let st = replicator.status();
    tracing::info!(
        ticks,
        state = st.state.as_str(),
        shipped_txid = st.shipped_txid,
        "writes done"
    );
    if replicator.is_finished() {
        // It stopped by itself: shutdown() returns why.
        replicator.shutdown().await?;
        bail!("the replicator stopped early");
    }
    // Graceful shutdown: everything committed above is shipped first.
    let report = replicator.shutdown().await?;
    tracing::info!(
        transactions = report.transactions,
        segments = report.segments,
        "replicator stopped"
    );
    println!("committed {committed} rows");
    Ok(())
}
