//! cairn: backups of SQLite and PostgreSQL databases. This library is what the `cairn`
//! binary runs; other Rust programs can call the same operations.
//!
//! - [`backup`], [`restore`], [`verify`]: the operations.
//! - [`prune`], [`pull`], [`repair`]: retention, copies, catalog rebuild.
//! - [`sources`]: what is backed up (a SQLite file, a PostgreSQL database).
//! - [`storage`]: where backups live (a local directory, S3, SFTP).
//! - [`daemon`]: cairn.toml, schedules, notifications, drills, metrics.
//! - [`repo`]: a destination's catalog (layout 2, reading layout 1).
//! - [`replicate`]: continuous WAL replication and point-in-time restore;
//!   [`replicate::embed`] runs a replicator inside an application.
//! - [`engine`], [`sandbox`]: the core natively or as a wasm component.

pub mod backup;
pub mod cli;
pub mod daemon;
pub mod decode;
pub mod direct;
pub mod engine;
pub mod hints;
pub mod keys;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod repair;
pub mod replicate;
pub mod repo;
pub mod restore;
pub mod sandbox;
pub mod sources;
pub mod storage;
pub mod verifier;
pub mod verify;
pub mod writeback;

mod component_hash;
pub use component_hash::component_source_hash;
/// The SQLite snapshot module under its former name.
pub use sources::sqlite as snapshot;
