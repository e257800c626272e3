//! `latest.txt` and object keys (FORMAT.md §7.4): whatever the file says,
//! what comes out is a safe relative path inside the destination.
#![no_main]
use cairn_core::catalog::parse_latest_pointer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = parse_latest_pointer(data) {
        assert!(!key.is_empty() && key.len() <= 512);
        assert!(!key.starts_with('/') && !key.contains('\0') && !key.contains('\\'));
        assert!(
            key.split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
        );
    }
});
