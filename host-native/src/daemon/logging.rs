//! Logs through `tracing` on stderr: text lines or JSON lines, at the
//! config's level for cairn (others at warn); `CAIRN_LOG` overrides the
//! filter with a full `tracing` directive (e.g. `debug`).

use tracing_subscriber::EnvFilter;

use super::config::LogFormat;

pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,cairn={level}")));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests, or a library user with its own) is not an error.
    let _ = match format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.with_ansi(false).try_init(),
    };
}
