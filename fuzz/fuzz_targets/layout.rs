//! Layout 2 records (FORMAT.md §12): the marker `cairn.json`, commits under
//! `log/`, checkpoints, and folding them into a state; and their keys.
#![no_main]
use cairn_core::layout::{self, Checkpoint, Commit, Marker, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let _ = Marker::parse(rest);
        }
        1 => {
            if let Ok(c) = Commit::parse(rest, 1) {
                let again = Commit::parse(&c.render(), 1).expect("a rendered commit parses");
                assert_eq!(again, c);
                let mut s = State::default();
                if s.apply(&c).is_ok() {
                    for e in s.sorted() {
                        cairn_core::catalog::validate_object_key(&e.object)
                            .expect("safe keys only");
                    }
                    let _ = s.newest(None);
                    let _ = s.sweep_start_key();
                    let _ = Checkpoint::of(&s).render();
                }
            }
        }
        2 => {
            if let Ok(c) = Checkpoint::parse(rest, 1)
                && let Ok(s) = c.into_state()
            {
                for e in s.sorted() {
                    cairn_core::catalog::validate_object_key(&e.object).expect("safe keys only");
                }
                let again = Checkpoint::parse(&Checkpoint::of(&s).render(), 1).expect("re-renders");
                let _ = again.into_state().expect("a rendered state loads");
            }
        }
        _ => {
            if let Ok(k) = std::str::from_utf8(rest) {
                for p in [layout::LOG_PREFIX, layout::CHECKPOINT_PREFIX] {
                    if let Some(n) = layout::parse_seq_key(p, k) {
                        assert!(n > 0);
                        if p == layout::LOG_PREFIX {
                            assert_eq!(layout::log_key(n), k);
                        }
                    }
                }
            }
        }
    }
});
