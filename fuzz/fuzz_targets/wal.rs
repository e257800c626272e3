//! SQLite WAL parsing (core/src/wal.rs): the header, and the frames a cursor
//! accepts. Structure-aware: a valid WAL of fuzzer-chosen transactions,
//! then byte mutations; a clean one must read back exactly.
#![no_main]
use arbitrary::Arbitrary;
use cairn_core::wal::{WalCursor, WalHeader, encode_frame};
use cairn_fuzz::{Mutation, mutate};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built {
        big_endian: bool,
        page_shift: u8,
        checkpoint_seq: u32,
        salt1: u32,
        salt2: u32,
        /// Transactions: (page number, fill byte) frames; the last commits.
        txns: Vec<Vec<(u8, u8)>>,
        mutations: Vec<Mutation>,
        /// Read in two calls, split at this frame.
        split: u8,
    },
}

fuzz_target!(|input: Input| match input {
    Input::Raw(b) => {
        if let Ok(h) = WalHeader::parse(&b) {
            let mut c = WalCursor::new(h);
            let txns = c.read(&b[32..]);
            check(&c, &txns);
        }
    }
    Input::Built {
        big_endian,
        page_shift,
        checkpoint_seq,
        salt1,
        salt2,
        txns,
        mutations,
        split,
    } => {
        let page_size = 512u32 << (page_shift % 3);
        let h = WalHeader {
            big_endian,
            page_size,
            checkpoint_seq,
            salt1,
            salt2,
            checksum: (0, 0),
        };
        let mut bytes = h.to_bytes().to_vec();
        let h = WalHeader::parse(&bytes).expect("a written header parses");
        let mut run = h.checksum;
        let mut want = Vec::new();
        let mut db_pages = 0u32;
        for t in txns.iter().take(6).filter(|t| !t.is_empty()) {
            let frames = &t[..t.len().min(6)];
            let mut pages = std::collections::BTreeMap::new();
            for (k, (pg, fill)) in frames.iter().enumerate() {
                let pgno = u32::from(*pg) % 32 + 1;
                db_pages = db_pages.max(pgno);
                let commit = if k + 1 == frames.len() { db_pages } else { 0 };
                let page = vec![*fill; page_size as usize];
                bytes.extend(encode_frame(&h, &mut run, pgno, commit, &page));
                pages.insert(pgno, page);
            }
            want.push((db_pages, pages));
        }
        let clean = mutations.is_empty();
        mutate(&mut bytes, &mutations);
        let Ok(h2) = WalHeader::parse(&bytes) else {
            assert!(!clean);
            return;
        };
        let mut c = WalCursor::new(h2);
        let flen = h2.frame_len() as usize;
        let body = bytes.get(32..).unwrap_or_default();
        let cut = (split as usize * flen).min(body.len());
        let mut got = c.read(&body[..cut]);
        let off = (c.offset() - 32) as usize;
        got.extend(c.read(body.get(off..).unwrap_or_default()));
        check(&c, &got);
        if clean {
            assert_eq!(got.len(), want.len());
            for (g, (db, pages)) in got.iter().zip(&want) {
                assert_eq!(g.db_pages, *db);
                assert_eq!(&g.pages, pages);
            }
        }
    }
});

fn check(c: &WalCursor, txns: &[cairn_core::wal::Txn]) {
    let ps = c.header.page_size as usize;
    let mut next = 1;
    for t in txns {
        assert!(t.first_frame >= next && t.first_frame <= t.last_frame);
        assert!(t.db_pages > 0 && !t.pages.is_empty());
        assert!(t.pages.values().all(|p| p.len() == ps));
        next = t.last_frame + 1;
    }
    if let Some(t) = txns.last() {
        assert_eq!(c.next_frame, t.last_frame + 1);
    }
}
