//! Steady writeback of a large file while it is written, so that its final
//! `fsync` has little left to do.
//!
//! Why: a restore writes a whole database and must fsync it before the
//! rename. With the kernel's default thresholds (background writeback at 10%
//! of RAM) nothing reaches the disk until that fsync, so the disk sits idle
//! while chunks are downloaded and decoded, then the whole file is flushed
//! at the end, in series. Asking for writeback of each window as soon as it
//! is written (`sync_file_range`, Linux) overlaps the disk with the CPU, and
//! waiting for the window before it bounds the dirty pages a restore leaves
//! in memory. Best effort: errors are left to the final fsync, which reports
//! them.

use std::fs::File;

/// Bytes per window: large enough for sequential I/O, small against RAM.
const WINDOW: u64 = 16 << 20;

#[derive(Debug, Default)]
pub struct Writeback {
    /// Start of the bytes not yet handed to writeback.
    queued: u64,
    /// Start of the window handed to writeback but not yet waited for.
    waiting: u64,
}

impl Writeback {
    /// `written` bytes of `file` are now written (from its start).
    pub fn advance(&mut self, file: &File, written: u64) {
        if written < self.queued + WINDOW {
            return;
        }
        start(file, self.queued, written - self.queued);
        // Wait for the windows before the one just queued: the disk works
        // on the newest while we wait for the older, never idle.
        if self.queued > self.waiting {
            wait(file, self.waiting, self.queued - self.waiting);
            self.waiting = self.queued;
        }
        self.queued = written;
    }
}

#[cfg(target_os = "linux")]
fn start(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(target_os = "linux")]
fn wait(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: as above.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start(_: &File, _: u64, _: u64) {}

#[cfg(not(target_os = "linux"))]
fn wait(_: &File, _: u64, _: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn windows_advance_and_the_file_is_whole() {
        let mut f = tempfile::tempfile().unwrap();
        let mut wb = Writeback::default();
        let block = vec![7u8; 1 << 20];
        let mut n = 0u64;
        for _ in 0..40 {
            f.write_all(&block).unwrap();
            n += block.len() as u64;
            wb.advance(&f, n);
            assert!(wb.waiting <= wb.queued && wb.queued <= n);
        }
        assert_eq!(wb.queued, 32 << 20);
        assert_eq!(wb.waiting, 16 << 20);
        f.sync_all().unwrap();
        assert_eq!(f.metadata().unwrap().len(), n);
    }
}
