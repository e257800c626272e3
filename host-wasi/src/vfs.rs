//! A read-only SQLite VFS over one `std::fs::File`: how the verifier lets
//! SQLite read a decoded database without holding it in linear memory.
//!
//! Why this design: the guest decodes the archive (untrusted, so inside the
//! sandbox) into a scratch file in a writable directory the host lends it,
//! then SQLite reads that file page by page through this VFS. Memory is then
//! the page cache plus the decoder's buffers, whatever the database's size,
//! and the guest still needs nothing beyond WASI files, so the same module
//! runs in any WASI runtime (`cairn verifier export`, wasmtime's CLI). A VFS
//! that pulled pages from the host through an import of our own would save
//! the scratch file, but would tie the portable build to cairn's host, and
//! SQLite's own unix VFS wants locks, mmap and a process id that WASI lacks
//! or emulates. This one is small: open the main database only, read, report
//! the size; every write, lock and journal is refused or a no-op, since the
//! database is opened `immutable`.
//!
//! The header is presented in rollback-journal mode (bytes 18 and 19 read as
//! 1 when they say WAL): a WAL-mode database would otherwise make SQLite look
//! for a `-wal` file a decoded image cannot have. The digests were taken from
//! the decoded stream before, so this changes nothing that is reported.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Once;

use rusqlite::ffi;

/// The name the VFS is registered under.
pub const NAME: &CStr = c"cairn-readonly";
const MAX_PATH: c_int = 1024;

/// The per-file state SQLite allocates (`szOsFile` bytes) and we fill in.
#[repr(C)]
struct RoFile {
    /// Must come first: SQLite reads `pMethods` through a `sqlite3_file*`.
    base: ffi::sqlite3_file,
    state: *mut State,
}

struct State {
    file: File,
    /// Where the OS file offset is, so sequential reads skip the seek.
    pos: u64,
    len: u64,
}

/// Registers the VFS (once per process); open with `vfs = NAME`.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 1,
            szOsFile: std::mem::size_of::<RoFile>() as c_int,
            mxPathname: MAX_PATH,
            pNext: std::ptr::null_mut(),
            zName: NAME.as_ptr(),
            pAppData: std::ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: None,
            xDlError: None,
            xDlSym: None,
            xDlClose: None,
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: None,
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // Safety: the VFS lives for the rest of the process (leaked), and
        // every callback below matches SQLite's declared signature.
        let rc = unsafe { ffi::sqlite3_vfs_register(Box::leak(vfs), 0) };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the read-only VFS");
    });
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_lock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let f = file as *mut RoFile;
    // Safety: SQLite hands us szOsFile writable bytes; a null pMethods tells
    // it there is nothing to close if we fail.
    unsafe { (*f).base.pMethods = std::ptr::null() };
    // The main database only, read-only: no journal, WAL or temp file exists
    // for an immutable database with temp_store = MEMORY.
    if name.is_null()
        || flags & ffi::SQLITE_OPEN_MAIN_DB == 0
        || flags & (ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE) != 0
    {
        return ffi::SQLITE_CANTOPEN;
    }
    // Safety: SQLite passes a NUL-terminated name it produced with xFullPathname.
    let Ok(path) = unsafe { CStr::from_ptr(name) }.to_str() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let Ok(file) = File::open(path) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return ffi::SQLITE_CANTOPEN;
    };
    let state = Box::new(State { file, pos: 0, len });
    // Safety: as above; out_flags may be null.
    unsafe {
        (*f).state = Box::into_raw(state);
        (*f).base.pMethods = &IO_METHODS;
        if !out_flags.is_null() {
            *out_flags = ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_MAIN_DB;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = file as *mut RoFile;
    // Safety: x_open set `state` from Box::into_raw before installing the
    // methods through which SQLite calls this, once.
    unsafe {
        if !(*f).state.is_null() {
            drop(Box::from_raw((*f).state));
            (*f).state = std::ptr::null_mut();
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // Safety: an open file's state is valid until x_close; SQLite gives a
    // buffer of `amount` bytes.
    let (state, out) = unsafe {
        (
            &mut *(*(file as *mut RoFile)).state,
            std::slice::from_raw_parts_mut(buf as *mut u8, amount.max(0) as usize),
        )
    };
    let Ok(offset) = u64::try_from(offset) else {
        return ffi::SQLITE_IOERR_READ;
    };
    match read_at(state, out, offset) {
        Ok(n) if n == out.len() => {
            present_rollback_mode(out, offset);
            ffi::SQLITE_OK
        }
        Ok(n) => {
            // SQLite requires the rest zeroed on a short read.
            out[n..].fill(0);
            present_rollback_mode(out, offset);
            ffi::SQLITE_IOERR_SHORT_READ
        }
        Err(_) => ffi::SQLITE_IOERR_READ,
    }
}

/// Reads as much of `out` as the file holds at `offset`.
fn read_at(state: &mut State, out: &mut [u8], offset: u64) -> std::io::Result<usize> {
    if offset >= state.len {
        return Ok(0);
    }
    if state.pos != offset {
        state.pos = u64::MAX; // unknown until the seek succeeds
        state.file.seek(SeekFrom::Start(offset))?;
        state.pos = offset;
    }
    let mut done = 0;
    while done < out.len() {
        match state.file.read(&mut out[done..]) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                state.pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                state.pos = u64::MAX;
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Bytes 18 and 19 of the header (file format write and read versions) say
/// 2 for WAL mode: show 1, rollback mode, which an immutable file needs.
fn present_rollback_mode(out: &mut [u8], offset: u64) {
    for at in [18u64, 19] {
        if let Some(i) = at.checked_sub(offset).map(|i| i as usize)
            && i < out.len()
            && out[i] == 2
        {
            out[i] = 1;
        }
    }
}

unsafe extern "C" fn x_write(
    _: *mut ffi::sqlite3_file,
    _: *const c_void,
    _: c_int,
    _: ffi::sqlite3_int64,
) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_truncate(_: *mut ffi::sqlite3_file, _: ffi::sqlite3_int64) -> c_int {
    ffi::SQLITE_READONLY
}

unsafe extern "C" fn x_sync(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // Safety: as in x_read.
    unsafe { *size = (*(*(file as *mut RoFile)).state).len as ffi::sqlite3_int64 };
    ffi::SQLITE_OK
}

/// Locks are no-ops: the file is immutable and this process its only reader.
unsafe extern "C" fn x_lock(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(_: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // Safety: SQLite passes a valid out pointer.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(_: *mut ffi::sqlite3_file, _: c_int, _: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_IMMUTABLE
}

unsafe extern "C" fn x_delete(_: *mut ffi::sqlite3_vfs, _: *const c_char, _: c_int) -> c_int {
    ffi::SQLITE_READONLY
}

/// No journal, WAL or other file exists as far as SQLite is concerned.
unsafe extern "C" fn x_access(
    _: *mut ffi::sqlite3_vfs,
    _: *const c_char,
    _: c_int,
    out: *mut c_int,
) -> c_int {
    // Safety: SQLite passes a valid out pointer.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

/// Names are used as given: the guest passes an absolute path under a preopen.
unsafe extern "C" fn x_full_pathname(
    _: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // Safety: `name` is NUL-terminated, `out` holds `n_out` bytes.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out.max(0) as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
    }
    ffi::SQLITE_OK
}

/// Nothing read-only needs randomness; zeros keep runs reproducible.
unsafe extern "C" fn x_randomness(_: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // Safety: `out` holds `n` bytes.
    unsafe { std::ptr::write_bytes(out, 0, n.max(0) as usize) };
    n
}

unsafe extern "C" fn x_sleep(_: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    micros
}

/// The Unix epoch, as a Julian day: the checks never ask for the time.
unsafe extern "C" fn x_current_time(_: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // Safety: SQLite passes a valid out pointer.
    unsafe { *out = 2_440_587.5 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(_: *mut ffi::sqlite3_vfs, _: c_int, _: *mut c_char) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::present_rollback_mode;

    #[test]
    fn the_wal_flags_read_as_rollback_mode_wherever_the_read_starts() {
        let mut page = vec![0u8; 100];
        page[18] = 2;
        page[19] = 2;
        present_rollback_mode(&mut page, 0);
        assert_eq!((page[18], page[19]), (1, 1));
        let mut tail = [2u8, 2, 2];
        present_rollback_mode(&mut tail, 18);
        assert_eq!(tail, [1, 1, 2]);
        let mut later = [2u8; 4];
        present_rollback_mode(&mut later, 20);
        assert_eq!(later, [2; 4]);
    }
}
