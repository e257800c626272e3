//! Chunk inflate (FORMAT.md §4): never more than the limit, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let limit = [1usize, 64, 4096, 65536, 1 << 20][sel as usize % 5];
    if let Ok(out) = cairn_core::chunk::inflate(3, rest, limit) {
        assert!(out.len() <= limit);
    }
});
