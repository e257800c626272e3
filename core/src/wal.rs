//! Reading a SQLite write-ahead log (https://www.sqlite.org/fileformat2.html#walformat)
//! from bytes the host feeds: the 32-byte header, then frames of a 24-byte
//! header and one page. A frame belongs to the log only while its salts
//! equal the header's and its cumulative checksum is right; a transaction is
//! committed once a frame with a non-zero "database size" ends it. This is
//! exactly the rule SQLite uses when it recovers a WAL, so what we ship is
//! what SQLite itself would consider committed.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub const WAL_HEADER_LEN: usize = 32;
pub const FRAME_HEADER_LEN: usize = 24;
/// Magic with checksums computed on little-endian words (the low bit says which).
pub const MAGIC_LE: u32 = 0x377f_0682;
pub const MAGIC_BE: u32 = 0x377f_0683;
pub const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing
/// from `s`: words are read big- or little-endian as the magic says.
pub fn checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    debug_assert!(data.len().is_multiple_of(8));
    let (mut s0, mut s1) = s;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (
                u32::from_le_bytes(pair[0..4].try_into().expect("4 bytes")),
                u32::from_le_bytes(pair[4..8].try_into().expect("4 bytes")),
            )
        };
        s0 = s0.wrapping_add(a).wrapping_add(s1);
        s1 = s1.wrapping_add(b).wrapping_add(s0);
    }
    (s0, s1)
}

/// The WAL header. All fields are big-endian on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums over big-endian words (magic `0x377f0683`).
    pub big_endian: bool,
    pub page_size: u32,
    /// Incremented by SQLite at every checkpoint that restarts the log.
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

/// How a WAL header seen now relates to the one a reader followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The same log: keep reading where we stopped.
    Same,
    /// SQLite restarted the log after a checkpoint (salt-1 incremented by
    /// one): frames start again at 1. Whether frames of the old log were
    /// missed is for the host to know (it must have held a read
    /// transaction throughout).
    Restarted,
    /// Anything else: another file, or several restarts; frames were missed.
    Replaced,
}

impl WalHeader {
    /// Parses and checks the first 32 bytes of a WAL file.
    pub fn parse(b: &[u8]) -> Result<WalHeader> {
        if b.len() < WAL_HEADER_LEN {
            return Err(Error::param(
                "WAL header",
                format!("it is {} bytes, a WAL header is {WAL_HEADER_LEN}", b.len()),
            ));
        }
        let magic = be32(b, 0);
        if magic != MAGIC_LE && magic != MAGIC_BE {
            return Err(Error::param(
                "WAL header",
                format!("bad magic {magic:#010x}: not a SQLite WAL file"),
            ));
        }
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(Error::param(
                "WAL header",
                format!("WAL format version {version} is not {WAL_VERSION}"),
            ));
        }
        let page_size = be32(b, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::param(
                "WAL header",
                format!("page size {page_size} is not a power of two from 512 to 65536"),
            ));
        }
        let big_endian = magic == MAGIC_BE;
        let want = checksum(big_endian, &b[..24], (0, 0));
        let got = (be32(b, 24), be32(b, 28));
        if want != got {
            return Err(Error::param(
                "WAL header",
                "the header checksum does not match: the WAL header is damaged or being written",
            ));
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: got,
        })
    }

    /// The 32 bytes of this header (for tests and tools that write a WAL).
    pub fn to_bytes(&self) -> [u8; WAL_HEADER_LEN] {
        let mut b = [0u8; WAL_HEADER_LEN];
        let magic = if self.big_endian { MAGIC_BE } else { MAGIC_LE };
        for (i, v) in [
            magic,
            WAL_VERSION,
            self.page_size,
            self.checkpoint_seq,
            self.salt1,
            self.salt2,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        let (c0, c1) = checksum(self.big_endian, &b[..24], (0, 0));
        b[24..28].copy_from_slice(&c0.to_be_bytes());
        b[28..32].copy_from_slice(&c1.to_be_bytes());
        b
    }

    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.page_size)
    }

    /// Byte offset of frame `n` (1-based) in the file.
    pub fn frame_offset(&self, n: u64) -> u64 {
        WAL_HEADER_LEN as u64 + (n - 1) * self.frame_len()
    }

    pub fn continuity(&self, now: &WalHeader) -> Continuity {
        if self == now {
            Continuity::Same
        } else if now.salt1 == self.salt1.wrapping_add(1)
            && now.page_size == self.page_size
            && now.big_endian == self.big_endian
        {
            Continuity::Restarted
        } else {
            Continuity::Replaced
        }
    }
}

/// One committed transaction: the pages it wrote (the last version of
/// each) and the database size after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Its frames in the log, 1-based, inclusive.
    pub first_frame: u64,
    pub last_frame: u64,
    /// Database size in pages after the commit.
    pub db_pages: u32,
    pub pages: BTreeMap<u32, Vec<u8>>,
}

/// Follows one log (one header, one salt pair) from frame 1: feed it the
/// file's bytes from [`WalCursor::offset`] on, get the transactions
/// committed since the last call. Frames after the last commit are left
/// for the next call (they may be a transaction still being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCursor {
    pub header: WalHeader,
    /// The next frame to read (1-based): every frame before it is in a
    /// transaction already returned.
    pub next_frame: u64,
    /// The cumulative checksum after frame `next_frame - 1`.
    pub checksum: (u32, u32),
}

impl WalCursor {
    pub fn new(header: WalHeader) -> Self {
        WalCursor {
            header,
            next_frame: 1,
            checksum: header.checksum,
        }
    }

    /// Where the next unread frame starts in the WAL file.
    pub fn offset(&self) -> u64 {
        self.header.frame_offset(self.next_frame)
    }

    /// Reads the frames in `bytes` (which start at [`offset`](Self::offset))
    /// up to the first that is incomplete, carries other salts or fails its
    /// checksum: that frame is the end of the log as SQLite sees it. Returns
    /// the committed transactions among them, in order.
    pub fn read(&mut self, bytes: &[u8]) -> Vec<Txn> {
        let h = self.header;
        let flen = h.frame_len() as usize;
        let ps = h.page_size as usize;
        let mut out = Vec::new();
        let mut sum = self.checksum;
        let mut pending: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut first = self.next_frame;
        for (frame, f) in (self.next_frame..).zip(bytes.chunks_exact(flen)) {
            let pgno = be32(f, 0);
            let commit = be32(f, 4);
            if pgno == 0 || be32(f, 8) != h.salt1 || be32(f, 12) != h.salt2 {
                break;
            }
            let s = checksum(h.big_endian, &f[..8], sum);
            let s = checksum(h.big_endian, &f[FRAME_HEADER_LEN..], s);
            if s != (be32(f, 16), be32(f, 20)) {
                break;
            }
            sum = s;
            pending.insert(pgno, f[FRAME_HEADER_LEN..FRAME_HEADER_LEN + ps].to_vec());
            if commit != 0 {
                out.push(Txn {
                    first_frame: first,
                    last_frame: frame,
                    db_pages: commit,
                    pages: std::mem::take(&mut pending),
                });
                self.next_frame = frame + 1;
                self.checksum = sum;
                first = frame + 1;
            }
        }
        out
    }
}

/// Builds WAL bytes the way SQLite does (for tests here and in hosts).
pub fn encode_frame(
    header: &WalHeader,
    running: &mut (u32, u32),
    pgno: u32,
    commit_db_pages: u32,
    page: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(header.frame_len() as usize);
    for v in [pgno, commit_db_pages, header.salt1, header.salt2] {
        f.extend_from_slice(&v.to_be_bytes());
    }
    let s = checksum(header.big_endian, &f[..8], *running);
    let s = checksum(header.big_endian, page, s);
    *running = s;
    f.extend_from_slice(&s.0.to_be_bytes());
    f.extend_from_slice(&s.1.to_be_bytes());
    f.extend_from_slice(page);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(big_endian: bool, salt1: u32) -> WalHeader {
        let b = WalHeader {
            big_endian,
            page_size: 512,
            checkpoint_seq: 3,
            salt1,
            salt2: 0xdead_beef,
            checksum: (0, 0),
        }
        .to_bytes();
        WalHeader::parse(&b).unwrap()
    }

    /// A WAL of `txns` (each a list of (pgno, fill byte)), the last
    /// frame of each a commit.
    fn wal(h: &WalHeader, txns: &[Vec<(u32, u8)>]) -> Vec<u8> {
        let mut out = h.to_bytes().to_vec();
        let mut run = h.checksum;
        for t in txns {
            for (i, (p, fill)) in t.iter().enumerate() {
                let commit = if i + 1 == t.len() { 100 } else { 0 };
                let page = vec![*fill; h.page_size as usize];
                out.extend(encode_frame(h, &mut run, *p, commit, &page));
            }
        }
        out
    }

    #[test]
    fn header_checks_name_the_problem() {
        let h = header(false, 1);
        let mut b = h.to_bytes();
        assert_eq!(WalHeader::parse(&b).unwrap(), h);
        b[31] ^= 1;
        assert!(format!("{}", WalHeader::parse(&b).unwrap_err()).contains("checksum"));
        assert!(format!("{}", WalHeader::parse(&[0; 32]).unwrap_err()).contains("magic"));
        assert!(format!("{}", WalHeader::parse(&[0; 5]).unwrap_err()).contains("5 bytes"));
    }

    #[test]
    fn continuity_tells_a_restart_from_a_replacement() {
        let a = header(false, 7);
        assert_eq!(a.continuity(&a), Continuity::Same);
        assert_eq!(a.continuity(&header(false, 8)), Continuity::Restarted);
        assert_eq!(a.continuity(&header(false, 9)), Continuity::Replaced);
        assert_eq!(a.continuity(&header(true, 8)), Continuity::Replaced);
    }

    #[test]
    fn a_bad_frame_ends_the_log_and_uncommitted_frames_wait() {
        let h = header(true, 1);
        let bytes = wal(&h, &[vec![(1, 1), (2, 2)], vec![(3, 3)], vec![(2, 9)]]);
        let mut c = WalCursor::new(h);
        // Cut inside the last transaction: two committed.
        let flen = h.frame_len() as usize;
        let cut = &bytes[32..32 + 3 * flen + 10];
        let t = c.read(cut);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].first_frame, t[0].last_frame), (1, 2));
        assert_eq!(c.next_frame, 4);
        // Then the rest, from where it stopped.
        let t = c.read(&bytes[c.offset() as usize..]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].pages[&2], vec![9; 512]);
        // A flipped bit in frame 2 ends the log at frame 1 (no commit yet).
        let mut bad = bytes.clone();
        bad[32 + flen + 100] ^= 1;
        assert!(WalCursor::new(h).read(&bad[32..]).is_empty());
        // Frames with other salts (a restarted log's leftovers) end it too.
        let other = wal(&header(true, 2), &[vec![(1, 5)]]);
        let mut mixed = bytes[..32 + 2 * flen].to_vec();
        mixed.extend_from_slice(&other[32..]);
        assert_eq!(WalCursor::new(h).read(&mixed[32..]).len(), 1);
    }

    proptest! {
        #[test]
        fn reads_every_commit_whatever_the_feeding(
            big in any::<bool>(),
            txns in prop::collection::vec(prop::collection::vec((1u32..20, any::<u8>()), 1..5), 0..8),
            cut in 0usize..20_000,
        ) {
            let h = header(big, 42);
            let bytes = wal(&h, &txns);
            let mut c = WalCursor::new(h);
            let cut = (32 + cut).min(bytes.len());
            let mut got = c.read(&bytes[32..cut]);
            got.extend(c.read(&bytes[c.offset() as usize..]));
            prop_assert_eq!(got.len(), txns.len());
            for (g, t) in got.iter().zip(&txns) {
                let mut want = BTreeMap::new();
                for (p, f) in t { want.insert(*p, vec![*f; 512]); }
                prop_assert_eq!(&g.pages, &want);
            }
            prop_assert_eq!(c.offset() as usize, bytes.len());
        }
    }
}
