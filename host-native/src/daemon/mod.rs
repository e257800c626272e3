//! The daemon: one config file (`cairn.toml`, docs/CONFIG.md), schedules,
//! notifications, restore drills, metrics. `cairn daemon` runs it;
//! `cairn run-once`, `cairn status` and `cairn config check` read the same file.
//! `replicate = true` runs a continuous replicator in the daemon ([`replication`]).

pub mod check;
pub mod config;
pub mod expand;
pub mod job;
pub mod litestream;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod record;
pub mod replication;
pub mod run_once;
pub mod runner;
pub mod schedule;
pub mod serve;
pub mod state;
pub mod status;
