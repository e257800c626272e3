//! Key files (FORMAT.md §4.1): 64 hex digits or 44 base64 characters; a bad
//! key's error never echoes the file's contents.
#![no_main]
use cairn_core::MasterKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match MasterKey::parse(text) {
        Ok(k) => {
            let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(MasterKey::parse(&hex).unwrap(), k);
        }
        Err(e) => {
            let msg = e.to_string();
            let t = text.trim();
            // The message is built from the text's shape, never its
            // contents: a text that happens to spell part of the message
            // itself is not an echo.
            let shape = MasterKey::parse(&"!".repeat(t.chars().count()))
                .unwrap_err()
                .to_string();
            if t.len() >= 16 && !shape.contains(t) {
                assert!(!msg.contains(t), "the error echoes the key text: {msg}");
            }
        }
    }
});
