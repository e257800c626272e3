//! Writing a new file front to back past the page cache (`O_DIRECT`,
//! Linux), for a restore whose result is not read again before its rename.
//!
//! Why: through the page cache every restored byte is copied into kernel
//! pages, charged to the cgroup, put on LRU lists and written back later;
//! on the 2-core bench machine that kernel work is a fifth of a 1 GiB
//! restore's CPU, and buffered writes plus the final fsync reach ~330 MB/s
//! where direct writes of the same disk reach ~1.3 GB/s. A restore that
//! runs `integrity_check` on its result reads every page back at once and
//! wants them cached, so it writes through the page cache as before (see
//! `restore.rs`, which chooses).
//!
//! Direct I/O needs block-aligned memory, offsets and lengths: bytes are
//! gathered into aligned blocks that a writer thread writes while the caller
//! decodes and hashes the next ones; the unaligned tail goes through the
//! ordinary descriptor at the end. A file system that refuses direct I/O
//! (tmpfs, some FUSE ones) gets the same bytes by ordinary writes, so the
//! result never depends on it. The caller still fsyncs the file: direct
//! writes may sit in the disk's volatile cache, and the file's size and
//! extents are metadata.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Alignment of memory, offsets and lengths: the largest logical block
/// size in common use.
const ALIGN: usize = 4096;
/// Bytes per write: large enough for the disk's full speed.
const BLOCK: usize = 2 << 20;
/// Blocks in all: one filling, the rest queued or being written. Bounds
/// the memory at 6 MiB whatever the file's size.
const BLOCKS: usize = 3;

/// `BLOCK` bytes at an `ALIGN`-aligned address, and how many are used.
struct Block {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Block {
        // Over-allocate and start at the first aligned address: no unsafe
        // allocation with a custom layout is needed.
        let mem = vec![0u8; BLOCK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Block { mem, start, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// A sequential writer of a new, empty file. `finish` (or `Write::flush`)
/// writes everything given so far; the caller then fsyncs.
pub struct DirectWriter {
    /// The ordinary descriptor: the tail, and everything after `finish`.
    plain: File,
    cur: Block,
    /// File offset of `cur`'s first byte.
    offset: u64,
    /// Blocks made so far (at most `BLOCKS`).
    made: usize,
    to_disk: Option<SyncSender<(u64, Block)>>,
    /// Written blocks coming back for reuse, or the writer thread's error.
    back: Receiver<io::Result<Block>>,
    thread: Option<JoinHandle<()>>,
    done: bool,
}

impl DirectWriter {
    /// A direct writer of `path` (just created, empty), whose ordinary
    /// descriptor is `plain`; `None` where direct I/O cannot be had, and the
    /// caller writes as usual.
    pub fn open(path: &Path, plain: &File) -> Option<DirectWriter> {
        let direct = open_direct(path)?;
        DirectWriter::start(direct, plain.try_clone().ok()?)
    }

    /// The writer over `direct` (the `O_DIRECT` descriptor; generic so a
    /// test can stand in a file system that refuses direct writes) and
    /// `plain` (an ordinary one of the same file).
    fn start<D: FileExt + Send + 'static>(direct: D, plain: File) -> Option<DirectWriter> {
        let fallback = plain.try_clone().ok()?;
        let (to_disk, jobs) = sync_channel::<(u64, Block)>(BLOCKS - 1);
        let (give_back, back) = sync_channel::<io::Result<Block>>(BLOCKS);
        let thread = std::thread::Builder::new()
            .name("cairn-direct".into())
            .spawn(move || write_blocks(direct, fallback, jobs, give_back))
            .ok()?;
        Some(DirectWriter {
            plain,
            cur: Block::new(),
            offset: 0,
            made: 1,
            to_disk: Some(to_disk),
            back,
            thread: Some(thread),
            done: false,
        })
    }

    /// Hands the full current block to the writer thread and takes an
    /// empty one (a new one, or one written already).
    fn send(&mut self) -> io::Result<()> {
        let next = if self.made < BLOCKS {
            self.made += 1;
            Block::new()
        } else {
            match self.back.recv() {
                Ok(Ok(mut b)) => {
                    b.len = 0;
                    b
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.stopped()),
            }
        };
        let full = std::mem::replace(&mut self.cur, next);
        let at = self.offset;
        self.offset += full.len as u64;
        let sent = self.to_disk.as_ref().map(|tx| tx.send((at, full)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Ends the writer thread once it has written what it was given, and
    /// returns its error, if it had one.
    fn join(&mut self) -> Option<io::Error> {
        self.to_disk = None;
        let panicked = self.thread.take().is_some_and(|t| t.join().is_err());
        let failed = self.back.try_iter().find_map(Result::err);
        failed.or_else(|| panicked.then(|| io::Error::other("the direct writer panicked")))
    }

    /// The writer thread stopped early: its error, if it sent one.
    fn stopped(&mut self) -> io::Error {
        self.join()
            .unwrap_or_else(|| io::Error::other("the direct writer stopped"))
    }

    /// Writes everything given so far; later writes go through the
    /// ordinary descriptor.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if let Some(e) = self.join() {
            return Err(e);
        }
        self.plain.write_all_at(self.cur.bytes(), self.offset)?;
        self.offset += self.cur.len as u64;
        self.cur.len = 0;
        Ok(())
    }
}

impl io::Write for DirectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.done {
            self.plain.write_all_at(buf, self.offset)?;
            self.offset += buf.len() as u64;
            return Ok(buf.len());
        }
        let room = BLOCK - self.cur.len;
        let n = buf.len().min(room);
        let at = self.cur.start + self.cur.len;
        self.cur.mem[at..at + n].copy_from_slice(&buf[..n]);
        self.cur.len += n;
        if self.cur.len == BLOCK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.finish()
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // An abandoned restore: stop the thread; its temp file is removed
        // by the caller.
        self.join();
    }
}

/// The writer thread: each block at its offset, directly while the file
/// system allows it, then through the ordinary descriptor.
fn write_blocks<D: FileExt>(
    direct: D,
    plain: File,
    jobs: Receiver<(u64, Block)>,
    give_back: SyncSender<io::Result<Block>>,
) {
    let mut use_direct = true;
    for (at, block) in jobs {
        let mut r = if use_direct {
            direct.write_all_at(block.bytes(), at)
        } else {
            plain.write_all_at(block.bytes(), at)
        };
        if use_direct
            && r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // Opened, but refused at the first write (some file systems
            // check alignment rules only then): ordinary writes from here.
            use_direct = false;
            r = plain.write_all_at(block.bytes(), at);
        }
        let failed = r.is_err();
        if give_back.send(r.map(|()| block)).is_err() || failed {
            return;
        }
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Bytes of many write sizes, some crossing blocks, one unaligned tail:
    /// the file holds exactly them, wherever the temp dir is (direct I/O or
    /// the fallback).
    fn round_trip(dir: &Path) {
        let path = dir.join("direct-test");
        let f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..(3 * BLOCK + 12345))
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let mut w = DirectWriter::open(&path, &f).expect("direct I/O or a fallback");
        let mut at = 0;
        for size in [1usize, 4095, 4097, 1 << 20, BLOCK, 3].into_iter().cycle() {
            if at == data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            w.write_all(&data[at..end]).unwrap();
            at = end;
        }
        w.flush().unwrap();
        w.write_all(b"after").unwrap();
        drop(w);
        f.sync_all().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), data.len() + 5);
        assert!(
            got[..data.len()] == data[..],
            "the file differs from what was written"
        );
        assert_eq!(&got[data.len()..], b"after");
    }

    #[test]
    fn a_file_written_directly_is_exactly_its_bytes() {
        let d = tempfile::tempdir().unwrap();
        round_trip(d.path());
    }

    #[test]
    fn a_failing_disk_is_reported() {
        // /dev/full refuses every write with ENOSPC (it cannot be opened
        // O_DIRECT, so it stands in for both descriptors).
        let full = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
        };
        let mut w = DirectWriter::start(full(), full()).unwrap();
        let block = vec![1u8; BLOCK];
        let mut err = None;
        for _ in 0..(BLOCKS + 2) {
            if let Err(e) = w.write_all(&block) {
                err = Some(e);
                break;
            }
        }
        let e = err.or_else(|| w.finish().err()).expect("an error");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    }

    /// Stands in for an `O_DIRECT` descriptor on a file system that opens
    /// it but refuses the first aligned write with EINVAL; counts the tries.
    struct RefusesDirect(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl FileExt for RefusesDirect {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    #[test]
    fn a_file_system_refusing_direct_writes_gets_ordinary_ones() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("refused");
        let f = File::create(&path).unwrap();
        let tries = std::sync::Arc::default();
        let refusing = RefusesDirect(std::sync::Arc::clone(&tries));
        let mut w = DirectWriter::start(refusing, f.try_clone().unwrap()).unwrap();
        let data: Vec<u8> = (0..(4 * BLOCK + 999)).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        drop(w);
        assert!(std::fs::read(&path).unwrap() == data, "the file differs");
        // Tried once, then never again: not once per block.
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
