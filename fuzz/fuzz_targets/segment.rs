//! Replication segments (core/src/segment.rs, FORMAT.md §13): the segment
//! body, its key, and whole segment objects (archive + body) opened with the
//! fixed key; structure-aware objects are built valid, then mutated.
#![no_main]
use arbitrary::Arbitrary;
use cairn_core::segment::{self, Applier, Segment, SegmentInfo};
use cairn_fuzz::{Mutation, material, mutate, params};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
enum Input {
    Body(Vec<u8>),
    Key(String),
    Object {
        encrypted: bool,
        level: u8,
        min_txid: u16,
        span: u8,
        pages: Vec<(u8, u8)>,
        extra_pages: u8,
        mutations: Vec<Mutation>,
        rename: bool,
    },
}

const GEN: &str = "20251124T160000Z-0a0b0c0d";

fuzz_target!(|input: Input| match input {
    Input::Body(b) => {
        if let Ok(s) = Segment::parse_body(&b, "fuzz") {
            assert_eq!(Segment::parse_body(&s.body(), "again").unwrap(), s);
            check(&s);
        }
    }
    Input::Key(k) => {
        if let Some((g, l, lo, hi)) = segment::parse_segment_key(&k) {
            assert!(segment::is_generation_id(&g));
            let enc = k.ends_with(".cairn");
            assert_eq!(segment::segment_key(&g, l, lo, hi, enc), k);
        }
    }
    Input::Object {
        encrypted,
        level,
        min_txid,
        span,
        pages,
        extra_pages,
        mutations,
        rename,
    } => {
        let mut map = BTreeMap::new();
        let mut db_pages = 1u32;
        for (p, fill) in pages.iter().take(8) {
            let p = u32::from(*p % 16) + 1;
            db_pages = db_pages.max(p);
            map.insert(p, vec![*fill; 512]);
        }
        let db_pages = db_pages + u32::from(extra_pages % 4);
        let min_txid = u64::from(min_txid) + 1;
        let seg = Segment {
            info: SegmentInfo {
                generation: GEN.into(),
                level: level % 4,
                min_txid,
                max_txid: min_txid + u64::from(span),
                page_size: 512,
                db_pages,
                min_db_pages: db_pages / 2,
                time_ms: 1_764_000_000_000,
            },
            pages: map,
        };
        let mut bytes = seg
            .build(params(encrypted, 6, 0))
            .expect("a segment builds");
        let i = &seg.info;
        let key = segment::segment_key(
            GEN,
            i.level,
            i.min_txid,
            i.max_txid + u64::from(rename),
            encrypted,
        );
        let clean = mutations.is_empty() && !rename;
        mutate(&mut bytes, &mutations);
        match Segment::open(&bytes, &key, &material()) {
            Ok(s) => {
                assert!(!rename, "a renamed segment opened");
                assert_eq!(s, seg, "a segment opened to other contents");
                check(&s);
            }
            Err(e) => assert!(!clean, "a valid segment failed to open: {e}"),
        }
    }
});

fn check(s: &Segment) {
    let i = &s.info;
    assert!(i.min_txid >= 1 && i.min_txid <= i.max_txid && i.min_db_pages <= i.db_pages);
    assert!(s.pages.keys().all(|p| *p >= 1 && *p <= i.db_pages));
    assert!(s.pages.values().all(|p| p.len() == i.page_size as usize));
    let mut a = Applier::new(&i.generation, i.page_size, i.min_txid);
    a.accept(s).expect("a segment follows its own start");
    // In memory only when small: a hostile db_pages must not be applied
    // to a Vec by a host (it sets a file's length instead).
    if u64::from(i.db_pages) * u64::from(i.page_size) <= 1 << 22 {
        let mut img = Vec::new();
        Applier::new(&i.generation, i.page_size, i.min_txid)
            .apply(&mut img, s)
            .unwrap();
        assert_eq!(img.len(), i.db_pages as usize * i.page_size as usize);
    }
}
