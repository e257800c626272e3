//! Property tests of retention (core/src/retention.rs): the newest backup is
//! always kept, a stricter policy never keeps more, and the verdict does not
//! depend on the order of the backups.

use cairn_core::retention::{Item, Policy, kept_ids, plan};
use proptest::prelude::*;

const H: i64 = 3_600_000;

/// Backup times spread over about three years, some in the same hour.
fn times() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![0i64..(3 * 365 * 24), 0i64..48].prop_map(|h| 1_700_000_000_000 + h * H),
        0..60,
    )
}

fn count() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![Just(None), (0u32..12).prop_map(Some)]
}

fn dur() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![Just(None), (1i64..2000).prop_map(|h| Some(h * H))]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        dur(),
        dur(),
    )
        .prop_map(|(l, h, d, w, m, y, within, age)| Policy {
            keep_last: l,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            keep_within_ms: within,
            max_age_ms: age,
        })
}

/// A policy no looser than `p` in any rule, drawn from `fractions`.
fn stricter(p: &Policy, f: &[f64; 8]) -> Policy {
    let c = |v: Option<u32>, f: f64| v.map(|n| (f64::from(n) * f) as u32);
    let d = |v: Option<i64>, f: f64| v.map(|n| ((n as f64) * f) as i64).filter(|n| *n > 0);
    Policy {
        keep_last: c(p.keep_last, f[0]),
        keep_hourly: c(p.keep_hourly, f[1]),
        keep_daily: c(p.keep_daily, f[2]),
        keep_weekly: c(p.keep_weekly, f[3]),
        keep_monthly: c(p.keep_monthly, f[4]),
        keep_yearly: c(p.keep_yearly, f[5]),
        keep_within_ms: d(p.keep_within_ms, f[6]),
        // A shorter max-age is stricter; adding one where there was none is too.
        max_age_ms: match p.max_age_ms {
            Some(a) => Some(((a as f64 * f[7]) as i64).max(1)),
            None if f[7] < 0.5 => Some(((f[7] * 4000.0) as i64 + 1) * H),
            None => None,
        },
    }
}

fn items(ts: &[i64]) -> Vec<(String, i64)> {
    ts.iter()
        .enumerate()
        .map(|(i, t)| (format!("id{i:03}"), *t))
        .collect()
}

fn as_items(v: &[(String, i64)]) -> Vec<Item<'_>> {
    v.iter()
        .map(|(id, t)| Item {
            id,
            created_at_ms: *t,
        })
        .collect()
}

const NOW: i64 = 1_700_000_000_000 + 3 * 365 * 24 * H + 5 * H;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_newest_is_always_kept_and_every_backup_is_judged_once(ts in times(), p in policy()) {
        let v = items(&ts);
        let decisions = plan(&as_items(&v), &p, NOW);
        prop_assert_eq!(decisions.len(), v.len());
        if let Some(newest) = v.iter().max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))) {
            prop_assert!(kept_ids(&decisions).contains(&newest.0));
        }
        for d in &decisions {
            prop_assert!(!d.reasons.is_empty());
        }
    }

    #[test]
    fn a_stricter_policy_never_keeps_more(
        ts in times(),
        p in policy(),
        f in prop::array::uniform8(0.0f64..=1.0),
    ) {
        let q = stricter(&p, &f);
        // Without any keep rule, a policy keeps everything younger than
        // max-age: dropping the last keep rule is not "stricter".
        prop_assume!(q.has_keep_rule() || !p.has_keep_rule());
        let v = items(&ts);
        let loose = kept_ids(&plan(&as_items(&v), &p, NOW));
        let strict = kept_ids(&plan(&as_items(&v), &q, NOW));
        prop_assert!(strict.is_subset(&loose), "{:?} keeps {:?}, {:?} keeps {:?}", q, strict, p, loose);
    }

    #[test]
    fn the_order_of_the_backups_does_not_matter(
        ts in times(),
        p in policy(),
        seed in any::<u64>(),
    ) {
        let v = items(&ts);
        let mut shuffled = v.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(plan(&as_items(&v), &p, NOW), plan(&as_items(&shuffled), &p, NOW));
    }

    #[test]
    fn keep_last_n_keeps_exactly_the_n_newest(ts in times(), n in 1u32..20) {
        let v = items(&ts);
        let p = Policy { keep_last: Some(n), ..Policy::default() };
        let kept = kept_ids(&plan(&as_items(&v), &p, NOW));
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
        let want: std::collections::BTreeSet<String> =
            sorted.iter().take(n as usize).map(|x| x.0.clone()).collect();
        prop_assert_eq!(kept, want);
    }
}
