//! The whole decode path, archive bytes to plaintext, with the fixed key:
//! any container, any damage. Streaming in pieces must agree with one push.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let piece = 1 + data.len() % 61;
    let _ = cairn_fuzz::decode_checked(data, piece);
});
