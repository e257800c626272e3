//! Retention: which backups a policy keeps, and why. A pure function of the
//! backups, the policy and `now`, with restic's `forget` semantics:
//!
//! - `keep_last N`: the N newest backups.
//! - `keep_hourly/daily/weekly/monthly/yearly N`: walking from the newest
//!   backup back, the newest backup of each of the last N hours (days, ISO
//!   weeks, months, years) *that hold a backup*. Empty periods do not count.
//! - `keep_within D`: every backup taken within D of the newest one.
//! - `max_age D`: nothing older than D before `now` is kept, whatever the
//!   rules above say (the seeds' "delete backups older than N days").
//!
//! A backup is kept when any keep rule keeps it (or when the policy has no
//! keep rule, only `max_age`) and it is not past `max_age`. The newest backup
//! is always kept: no policy can empty a group. Periods are UTC calendar
//! periods; the core reads no clock and knows no time zone.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `prune` is told to keep. `None` and `Some(0)` both mean "no such rule".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Milliseconds before the newest backup within which all are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_ms: Option<i64>,
    /// Milliseconds before `now` past which nothing is kept (but the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<i64>,
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    pub id: &'a str,
    pub created_at_ms: i64,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub created_at_ms: i64,
    pub keep: bool,
    /// Why: every rule that keeps it, or why nothing does.
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// A number that is equal for two instants in the same period.
    fn bucket(self, ms: i64) -> i64 {
        let day = ms.div_euclid(86_400_000);
        match self {
            Period::Hour => ms.div_euclid(3_600_000),
            Period::Day => day,
            Period::Week => {
                let (y, w) = iso_week(day);
                y * 100 + i64::from(w)
            }
            Period::Month => {
                let (y, m, _) = crate::time::civil_from_days(day);
                y * 12 + i64::from(m)
            }
            Period::Year => crate::time::civil_from_days(day).0,
        }
    }

    /// The period's label for reasons: `2026-11-24`, `2026-W48`, …
    fn label(self, ms: i64) -> String {
        let day = ms.div_euclid(86_400_000);
        let (y, m, d) = crate::time::civil_from_days(day);
        match self {
            Period::Hour => format!(
                "{y:04}-{m:02}-{d:02}T{:02}",
                ms.div_euclid(3_600_000).rem_euclid(24)
            ),
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Week => {
                let (wy, w) = iso_week(day);
                format!("{wy:04}-W{w:02}")
            }
            Period::Month => format!("{y:04}-{m:02}"),
            Period::Year => format!("{y:04}"),
        }
    }
}

/// ISO 8601 week-numbering year and week of a day number (days since 1970-01-01).
fn iso_week(day: i64) -> (i64, u32) {
    // 1970-01-01 was a Thursday; ISO weekday 1 = Monday.
    let weekday = (day + 3).rem_euclid(7) + 1;
    // The Thursday of this week decides the week-numbering year.
    let thursday = day - weekday + 4;
    let (year, _, _) = crate::time::civil_from_days(thursday);
    let jan1 = crate::time::days_from_civil(year, 1, 1);
    let week = (thursday - jan1) / 7 + 1;
    (year, week as u32)
}

impl Policy {
    fn count(v: Option<u32>) -> u32 {
        v.unwrap_or(0)
    }

    fn rules(&self) -> [(Period, u32); 5] {
        [
            (Period::Hour, Self::count(self.keep_hourly)),
            (Period::Day, Self::count(self.keep_daily)),
            (Period::Week, Self::count(self.keep_weekly)),
            (Period::Month, Self::count(self.keep_monthly)),
            (Period::Year, Self::count(self.keep_yearly)),
        ]
    }

    /// True when some keep rule is set (as opposed to only `max_age`).
    pub fn has_keep_rule(&self) -> bool {
        Self::count(self.keep_last) > 0
            || self.rules().iter().any(|(_, n)| *n > 0)
            || self.keep_within_ms.is_some_and(|d| d > 0)
    }

    /// True when the policy says anything at all.
    pub fn is_empty(&self) -> bool {
        !self.has_keep_rule() && self.max_age_ms.is_none()
    }

    /// Refuses policies that would be surprising rather than strict.
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::param(
                "retention policy",
                "it is empty: give at least one of keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly, keep-within or max-age",
            ));
        }
        for (name, v) in [
            ("keep-within", self.keep_within_ms),
            ("max-age", self.max_age_ms),
        ] {
            if v.is_some_and(|d| d <= 0) {
                return Err(Error::param(
                    "retention policy",
                    format!("{name} must be a positive duration"),
                ));
            }
        }
        Ok(())
    }

    /// A one-line description, e.g. `keep-daily 7, keep-weekly 4`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last.filter(|n| *n > 0) {
            parts.push(format!("keep-last {n}"));
        }
        for (p, n) in self.rules() {
            if n > 0 {
                parts.push(format!("keep-{} {n}", p.name()));
            }
        }
        if let Some(d) = self.keep_within_ms {
            parts.push(format!("keep-within {}", duration(d)));
        }
        if let Some(d) = self.max_age_ms {
            parts.push(format!("max-age {}", duration(d)));
        }
        parts.join(", ")
    }
}

/// `90d`, `36h`, `15m`, `20s` or milliseconds: the largest exact unit.
pub fn duration(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Applies `policy` to one group of backups (one database's). The result
/// lists every item once, newest first, whatever the order of `items`.
pub fn plan(items: &[Item<'_>], policy: &Policy, now_ms: i64) -> Vec<Decision> {
    let mut sorted: Vec<&Item> = items.iter().collect();
    // Newest first; ties broken by id, so the order of the input never matters.
    sorted.sort_by(|a, b| (b.created_at_ms, b.id).cmp(&(a.created_at_ms, a.id)));
    sorted.dedup_by(|a, b| a.id == b.id);
    let Some(newest) = sorted.first().map(|i| i.created_at_ms) else {
        return Vec::new();
    };
    let mut last_left = Policy::count(policy.keep_last);
    let mut rules: Vec<(Period, u32, Option<i64>)> = policy
        .rules()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (p, n, None))
        .collect();
    let keep_rules = policy.has_keep_rule();
    let last_n = last_left;
    let mut out = Vec::with_capacity(sorted.len());
    for (i, item) in sorted.iter().enumerate() {
        let t = item.created_at_ms;
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push("the newest backup".to_string());
        }
        if last_left > 0 {
            last_left -= 1;
            reasons.push(format!("keep-last {} of {last_n}", last_n - last_left));
        }
        for (period, left, seen) in rules.iter_mut() {
            let b = period.bucket(t);
            if *left > 0 && *seen != Some(b) {
                *left -= 1;
                *seen = Some(b);
                reasons.push(format!("{} {}", period.name(), period.label(t)));
            }
        }
        if let Some(d) = policy.keep_within_ms.filter(|d| *d > 0)
            && newest - t <= d
        {
            reasons.push(format!("within {} of the newest", duration(d)));
        }
        let too_old = policy.max_age_ms.is_some_and(|d| now_ms - t > d);
        let kept_by_rule = !reasons.is_empty() || !keep_rules;
        let keep = i == 0 || (kept_by_rule && !too_old);
        if !keep {
            reasons.clear();
            if too_old {
                reasons.push(format!(
                    "older than max-age {}",
                    duration(policy.max_age_ms.unwrap_or_default())
                ));
            } else {
                reasons.push("no keep rule matches".to_string());
            }
        } else if reasons.is_empty() {
            reasons.push(format!(
                "younger than max-age {}",
                duration(policy.max_age_ms.unwrap_or_default())
            ));
        }
        out.push(Decision {
            id: item.id.to_string(),
            created_at_ms: t,
            keep,
            reasons,
        });
    }
    out
}

/// The ids `plan` keeps, for tests and callers that need only the set.
pub fn kept_ids(decisions: &[Decision]) -> BTreeSet<String> {
    decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn items(times: &[(&'static str, i64)]) -> Vec<Item<'static>> {
        times
            .iter()
            .map(|(id, t)| Item {
                id,
                created_at_ms: *t,
            })
            .collect()
    }

    #[test]
    fn iso_weeks_match_the_calendar() {
        // 2021-01-03 (Sunday) belongs to 2020-W53; 2021-01-04 starts 2021-W01.
        let d = crate::time::days_from_civil(2021, 1, 3);
        assert_eq!(iso_week(d), (2020, 53));
        assert_eq!(iso_week(d + 1), (2021, 1));
        // 2026-11-24 is a Tuesday of 2026-W48.
        assert_eq!(
            iso_week(crate::time::days_from_civil(2026, 11, 24)),
            (2026, 48)
        );
        // 2024-12-30 (Monday) is 2025-W01.
        assert_eq!(
            iso_week(crate::time::days_from_civil(2024, 12, 30)),
            (2025, 1)
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_with_a_backup() {
        let base = crate::time::days_from_civil(2026, 11, 1) * D;
        // Two backups a day on days 0, 1, 3 (day 2 is empty).
        let it = items(&[
            ("a", base + H),
            ("b", base + 5 * H),
            ("c", base + D + H),
            ("d", base + D + 5 * H),
            ("e", base + 3 * D + H),
            ("f", base + 3 * D + 5 * H),
        ]);
        let p = Policy {
            keep_daily: Some(3),
            ..Policy::default()
        };
        let plan = plan(&it, &p, base + 10 * D);
        // Three days that hold a backup: 3, 1, 0 (day 2 does not count).
        assert_eq!(
            kept_ids(&plan),
            ["b", "d", "f"].iter().map(|s| s.to_string()).collect()
        );
        let f = plan.iter().find(|d| d.id == "f").unwrap();
        assert_eq!(f.reasons, ["the newest backup", "daily 2026-11-04"]);
        let e = plan.iter().find(|d| d.id == "e").unwrap();
        assert_eq!(e.reasons, ["no keep rule matches"]);
    }

    #[test]
    fn max_age_removes_old_backups_but_never_the_newest() {
        let now = 100 * D;
        let it = items(&[("old", now - 40 * D), ("older", now - 50 * D)]);
        let p = Policy {
            max_age_ms: Some(30 * D),
            ..Policy::default()
        };
        let plan = plan(&it, &p, now);
        assert_eq!(kept_ids(&plan), ["old".to_string()].into());
        assert_eq!(plan[1].reasons, ["older than max-age 30d"]);
        let young = items(&[("y", now - D), ("x", now - 2 * D), ("o", now - 31 * D)]);
        let plan2 = super::plan(&young, &p, now);
        assert_eq!(kept_ids(&plan2).len(), 2);
        assert_eq!(plan2[1].reasons, ["younger than max-age 30d"]);
    }

    #[test]
    fn keep_within_counts_from_the_newest_backup() {
        let it = items(&[("n", 10 * D), ("m", 9 * D), ("l", 2 * D)]);
        let p = Policy {
            keep_within_ms: Some(2 * D),
            ..Policy::default()
        };
        assert_eq!(
            kept_ids(&plan(&it, &p, 1000 * D)),
            ["m", "n"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn empty_policies_are_refused() {
        assert!(Policy::default().validate().is_err());
        let p = Policy {
            keep_within_ms: Some(0),
            keep_last: Some(1),
            ..Policy::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("keep-within")
        );
        assert_eq!(
            Policy {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                max_age_ms: Some(90 * D),
                ..Policy::default()
            }
            .describe(),
            "keep-daily 7, keep-weekly 4, max-age 90d"
        );
    }
}
