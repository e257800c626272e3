//! The WAL reader and segments on a real SQLite WAL (core/tests/wal/, made
//! by make-fixtures.sh with the sqlite3 CLI): replaying its committed
//! transactions on the database as it was before them gives, page for page,
//! the database SQLite wrote after a checkpoint.

use cairn_core::segment::{Applier, Segment, segment_key};
use cairn_core::wal::{WalCursor, WalHeader};
use cairn_core::{Compression, KeyMaterial, SourceKind, WriterParams};

const GEN: &str = "20261202T033000Z-0a1b2c3d";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/wal/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn replaying_a_real_wal_gives_the_checkpointed_database() {
    let (base, wal, fin) = (fixture("base.db"), fixture("wal.bin"), fixture("final.db"));
    let h = WalHeader::parse(&wal).unwrap();
    assert_eq!(h.page_size, 1024);
    let mut c = WalCursor::new(h);
    // Fed in uneven pieces, as a poller would see a growing file.
    let mut txns = Vec::new();
    let mut end = 32usize;
    while end < wal.len() {
        end = (end + 3000).min(wal.len());
        txns.extend(c.read(&wal[c.offset() as usize..end]));
    }
    // The script commits 6 transactions (the rolled-back one writes no frame).
    assert_eq!(
        txns.len(),
        6,
        "{:?}",
        txns.iter().map(|t| t.pages.len()).collect::<Vec<_>>()
    );
    assert_eq!(c.offset() as usize, wal.len());

    // One segment per transaction, and one for all: both replay to final.db.
    let mut one_by_one = base.clone();
    let mut ap = Applier::new(GEN, 1024, 1);
    for (i, t) in txns.iter().enumerate() {
        let s = Segment::from_txns(GEN, i as u64 + 1, 1024, 0, std::slice::from_ref(t)).unwrap();
        ap.apply(&mut one_by_one, &s).unwrap();
    }
    assert!(one_by_one == fin, "replayed database differs from final.db");

    let all = Segment::from_txns(GEN, 1, 1024, 0, &txns).unwrap();
    let params = WriterParams {
        archive_id: [1; 16],
        source: SourceKind::File,
        db_name: "app.db".into(),
        created_at_ms: 0,
        page_size: 0,
        chunk_size: cairn_core::DEFAULT_CHUNK_SIZE,
        compression: Compression::Deflate { level: 6 },
        encryption: None,
    };
    let bytes = all.build(params).unwrap();
    assert!(
        bytes.len() < wal.len() / 2,
        "a segment is compressed: {} bytes",
        bytes.len()
    );
    let key = segment_key(GEN, 0, 1, 6, false);
    let back = Segment::open(&bytes, &key, &KeyMaterial::None).unwrap();
    let mut at_once = base.clone();
    Applier::new(GEN, 1024, 1)
        .apply(&mut at_once, &back)
        .unwrap();
    assert!(at_once == fin);
}

#[test]
fn a_torn_tail_is_not_a_transaction() {
    let wal = fixture("wal.bin");
    let h = WalHeader::parse(&wal).unwrap();
    let flen = h.frame_len() as usize;
    // Flip a byte in the last frame: the last transaction is no longer committed.
    let mut torn = wal.clone();
    let last = torn.len() - flen / 2;
    torn[last] ^= 0xff;
    let n = WalCursor::new(h).read(&torn[32..]).len();
    assert_eq!(n, 5);
}
