//! The header record (docs/FORMAT.md §2): length prefix, CRC, postcard metadata.
#![no_main]
use cairn_core::Metadata;
use cairn_core::header::header_len;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = header_len(data);
    match Metadata::from_header_bytes(data) {
        Ok(meta) => {
            // A header that parses was complete, and says so.
            assert_eq!(len.unwrap(), Some(data.len()));
            // What it says survives a round trip.
            let again = meta.to_header_bytes().expect("a parsed header re-encodes");
            assert_eq!(Metadata::from_header_bytes(&again).unwrap(), meta);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
