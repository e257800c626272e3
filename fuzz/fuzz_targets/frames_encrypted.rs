//! Frames of the encrypted container (FORMAT.md §3), after a valid header so
//! the fuzzer starts at the frame parser; frames are then opened with the
//! fixed key (AEAD, inflate, trailer).
#![no_main]
use cairn_core::{ArchiveReader, Event, FrameParser};
use cairn_fuzz::{ARCHIVE_ID, material, params};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let w = cairn_core::ArchiveWriter::new(params(true, sel, sel >> 4)).unwrap();
    run(w.preamble(), rest, (sel as usize >> 3) % 97);
});

fn run(pre: Vec<u8>, rest: &[u8], piece: usize) {
    let mut p = FrameParser::new();
    let mut reader = None;
    let mut next = 0u64;
    let mut feed: Vec<&[u8]> = vec![&pre];
    feed.extend(rest.chunks(piece.max(1) * 7));
    for part in feed {
        p.push(part);
        loop {
            match p.next_event() {
                Ok(Some(Event::Header { bytes, meta })) => {
                    assert_eq!(meta.archive_id, ARCHIVE_ID);
                    reader = Some(ArchiveReader::new(bytes, meta, &material()).unwrap());
                }
                Ok(Some(Event::Chunk(c))) => {
                    assert_eq!(c.index, next, "frames come out in order");
                    next += 1;
                    let r = reader.as_ref().expect("header first");
                    assert!(
                        c.body.len() <= cairn_core::frame::max_body_len(r.metadata().chunk_size)
                    );
                    if c.last {
                        let _ = r.open_trailer(&c);
                    } else if let Ok(plain) = r.open_chunk(&c) {
                        assert!(
                            !plain.is_empty() && plain.len() <= r.metadata().chunk_size as usize
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = p.finish();
}
