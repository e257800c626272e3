//! Members of the gzip container (FORMAT.md §6), after a valid header so
//! the fuzzer starts at the frame parser; frames are then opened with the
//! fixed key (CRCs, inflate, trailer).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| cairn_fuzz::frames(data, false));
