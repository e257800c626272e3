//! `catalog.json` (layout 1, FORMAT.md §7): envelope, body hash, entries.
#![no_main]
use cairn_core::catalog::{Catalog, validate_object_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Catalog::parse(data) {
        // A catalog that parses names only safe objects, and survives a rewrite.
        for e in &c.entries {
            validate_object_key(&e.object).expect("parse validated the keys");
        }
        let again = Catalog::parse(&c.render()).expect("a rendered catalog parses");
        assert_eq!(again, c);
        let _ = c.newest();
    }
});
