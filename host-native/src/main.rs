//! The `cairn` binary: a thin main over the library (cli.rs does the wiring).

use clap::Parser;

fn main() {
    // A bug must still read as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error ({info}); please report it");
    }));
    bounded_malloc();
    let cli = cairn::cli::Cli::parse();
    if let Err(e) = cairn::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// glibc serves big blocks (S3 download ranges, pipeline chunks) with mmap
/// only until the first one is freed; then it raises its threshold and
/// takes them from arenas, which fragment and do not shrink. Measured on a
/// 4 GiB restore from S3: peak RSS 150 MiB with the default, 89 MiB with the
/// threshold fixed at 1 MiB (bench/README.md). Memory must stay flat
/// whatever the database size, so the threshold is fixed.
fn bounded_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
