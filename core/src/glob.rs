//! File-name globs for the directory mode of replication (`--pattern
//! '*.db'`): `*` any run of characters, `?` one character, `[abc]`,
//! `[a-z]` and `[!abc]` one character of (or not of) a set; `\` takes the
//! next character literally. A pattern matches a whole file name, never a
//! path: there is no `/` and no `**`.

/// Whether `pattern` is a valid glob; the error says what is wrong.
pub fn check(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("the pattern is empty; e.g. '*.db'".into());
    }
    if pattern.contains('/') {
        return Err(format!(
            "{pattern:?} contains '/': a pattern matches file names in the directory, not paths"
        ));
    }
    let p: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '[' => match class_end(&p, i) {
                Some(e) => i = e + 1,
                None => return Err(format!("{pattern:?} has a '[' without its ']'")),
            },
            '\\' if i + 1 == p.len() => {
                return Err(format!("{pattern:?} ends with a lone '\\'"));
            }
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index of the `]` closing the class opened at `open`.
fn class_end(p: &[char], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if p.get(i) == Some(&'!') {
        i += 1;
    }
    // A `]` right after `[` or `[!` is a member, as in shells.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    while i < p.len() {
        if p[i] == ']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn class_matches(set: &[char], c: char) -> bool {
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            if set[i] <= c && c <= set[i + 2] {
                return true;
            }
            i += 3;
        } else {
            if set[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

/// Whether `name` matches `pattern` (an invalid pattern matches nothing).
pub fn matches(pattern: &str, name: &str) -> bool {
    if check(pattern).is_err() {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point (the last `*`): linear
    // in practice, never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => {
                let end = class_end(&p, pi).expect("checked");
                let (neg, from) = if p[pi + 1] == '!' {
                    (true, pi + 2)
                } else {
                    (false, pi + 1)
                };
                (class_matches(&p[from..end], n[ni]) != neg).then_some(end + 1)
            }
            Some('\\') => (p[pi + 1] == n[ni]).then_some(pi + 2),
            Some(c) => (*c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_a_shell() {
        assert!(matches("*.db", "app.db"));
        assert!(matches("*.db", ".db"));
        assert!(!matches("*.db", "app.db-wal"));
        assert!(!matches("*.db", "app.sqlite"));
        assert!(matches("*", "anything"));
        assert!(matches("a?c.db", "abc.db"));
        assert!(!matches("a?c.db", "ac.db"));
        assert!(matches("t[0-9]*.db", "t7x.db"));
        assert!(!matches("t[0-9]*.db", "tx.db"));
        assert!(matches("t[!0-9].db", "tx.db"));
        assert!(!matches("t[!0-9].db", "t1.db"));
        assert!(matches("[]]x", "]x"));
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(matches("*a*b*c", "xxaybzzc"));
        assert!(!matches("*a*b*c", "xxaybzz"));
        assert!(matches("é*.db", "été.db"));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(check("").unwrap_err().contains("empty"));
        assert!(check("a/*.db").unwrap_err().contains("'/'"));
        assert!(check("[ab").unwrap_err().contains("']'"));
        assert!(check("x\\").unwrap_err().contains("'\\'"));
        assert!(!matches("[ab", "[ab"));
    }

    proptest::proptest! {
        /// A literal pattern (no special characters) matches only itself;
        /// `*` + a suffix matches exactly the names ending with it.
        #[test]
        fn literals_and_suffixes(name in "[a-z.]{0,12}", suffix in "[a-z.]{0,4}") {
            proptest::prop_assert!(matches(&name, &name) || name.is_empty());
            proptest::prop_assert_eq!(matches(&format!("*{suffix}"), &name), name.ends_with(&suffix));
        }
    }
}
