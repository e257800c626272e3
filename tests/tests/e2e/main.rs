//! The end-to-end suite as one test binary: each module is one area, run with
//! `cargo test -p cairn-e2e --test e2e <module>::`. One binary, not one per
//! file, because every test binary links wasmtime, the AWS SDK and russh, and
//! those links dominated the test command's time.

mod bad_input;
mod daemon;
mod embed;
mod engines;
mod faults;
mod hostile;
mod jco;
mod kill;
mod layout;
mod live;
mod main_job;
mod postgres;
mod proxy_selftest;
mod remote;
mod replica_check;
mod replicate;
mod replicate_dir;
mod replicate_levels;
mod replicate_torture;
mod sandbox;
mod servers_selftest;
mod spec;
mod storage_s3;
mod storage_sftp;
mod sweep;
mod zstd;
