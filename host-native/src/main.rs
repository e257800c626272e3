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
/// threshold fixed (bench/README.md). Memory must stay flat whatever the
/// database size, so the threshold is fixed: just above the default chunk
/// size, so that the chunk buffers every worker allocates and frees a
/// thousand times per GiB are reused from the arenas instead of being
/// mapped, faulted in page by page and unmapped each time (that cost a
/// 1 GiB restore 270,000 page faults, a tenth of its CPU). Fixing the
/// threshold also fixes the trim threshold at 128 KiB, which would give
/// those buffers back to the kernel as soon as they are freed: 16 MiB keeps
/// a few of them per arena, and bigger blocks (S3 ranges of 8 MiB and up)
/// are still mapped and unmapped. Arenas are capped at 2: by default each
/// thread that allocates gets its own (up to 8 per core), each keeping its
/// own 16 MiB, which took a 1 GiB plain restore to 55-64 MiB peak RSS;
/// with 2, 41-44 MiB and the same time (backup time unchanged too).
fn bounded_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        let chunk = cairn_core::DEFAULT_CHUNK_SIZE as i32;
        libc::mallopt(libc::M_MMAP_THRESHOLD, chunk + (64 << 10));
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
