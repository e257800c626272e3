//! The trailer record (FORMAT.md §5): parsed alone, checked against a tally,
//! and opened from a final frame of both containers.
#![no_main]
use cairn_core::chunk::Trailer;
use cairn_core::{RawChunk, Tally};
use cairn_fuzz::FIXED;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Trailer::from_bytes(data) {
        assert_eq!(&t.to_bytes()[..], data);
        let mut tally = Tally::default();
        tally.add(b"x");
        let _ = tally.check(&t);
        Tally::default().check(&t).err();
    }
    // The readers are made once (cairn_fuzz::FIXED): what is tested here
    // is opening the final frame, not making a reader.
    for enc in [false, true] {
        let r = &FIXED[usize::from(enc)][6][0].reader;
        let c = RawChunk {
            index: 0,
            last: true,
            body: data.to_vec(),
            plain_crc: 0,
            plain_len: 0,
        };
        if let Ok(t) = r.open_trailer(&c) {
            assert!(!enc, "a forged encrypted trailer opened");
            let _ = Tally::default().check(&t);
        }
    }
});
