//! When a job runs: a 5-field cron expression in a time zone, or an
//! interval with an optional first-run time. Pure next-run arithmetic on
//! millisecond timestamps, so it is tested without a clock.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron {
        expr: String,
        cron: Box<Cron>,
        tz: chrono_tz::Tz,
    },
    Every {
        every_ms: i64,
        /// The first run; later runs fall on `start + k * every`.
        start_ms: Option<i64>,
    },
}

impl Schedule {
    /// A 5-field cron expression (minute hour day-of-month month day-of-week)
    /// in `tz` (an IANA name such as `Europe/Paris`; default UTC).
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 && !expr.trim_start().starts_with('@') {
            return Err(format!(
                "{expr:?} has {fields} fields; a cron expression has 5: minute hour day-of-month month day-of-week (e.g. \"0 3 * * *\")"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("{expr:?} is not a valid cron expression ({e})"))?;
        let tz = match tz {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                format!("unknown time zone {name:?}: use an IANA name such as \"UTC\" or \"Europe/Paris\"")
            })?,
        };
        Ok(Schedule::Cron {
            expr: expr.to_string(),
            cron: Box::new(cron),
            tz,
        })
    }

    /// An interval such as `24h` or `90s`, optionally anchored at an RFC 3339 time.
    pub fn every(every: &str, start: Option<&str>) -> Result<Schedule, String> {
        let d = humantime::parse_duration(every.trim())
            .map_err(|e| format!("{every:?} is not a duration like 24h, 15m or 90s ({e})"))?;
        if d.as_secs() < 1 {
            return Err(format!("{every:?} is too short: at least 1s"));
        }
        let start_ms = start
            .map(|s| {
                DateTime::parse_from_rfc3339(s.trim())
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        format!("{s:?} is not an RFC 3339 time like \"2026-07-01T10:00:00Z\" ({e})")
                    })
            })
            .transpose()?;
        Ok(Schedule::Every {
            every_ms: d.as_millis() as i64,
            start_ms,
        })
    }

    /// The first run strictly after `t_ms`.
    pub fn next_after(&self, t_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every {
                every_ms,
                start_ms: None,
            } => Some(t_ms + every_ms),
            Schedule::Every {
                every_ms,
                start_ms: Some(s),
            } => {
                if t_ms < *s {
                    Some(*s)
                } else {
                    Some(s + ((t_ms - s) / every_ms + 1) * every_ms)
                }
            }
            Schedule::Cron { cron, tz, .. } => {
                let t = tz.timestamp_millis_opt(t_ms).single()?;
                cron.find_next_occurrence(&t, false)
                    .ok()
                    .map(|n| n.timestamp_millis())
            }
        }
    }

    /// When a job is next due, given when it last started (from the state
    /// file) and now. A time at or before `now` means "run at once": a run
    /// missed while the daemon was down runs once, not once per missed slot.
    pub fn next_due(&self, last_start_ms: Option<i64>, now_ms: i64) -> i64 {
        let due = match (last_start_ms, self) {
            (Some(last), _) => self.next_after(last),
            // Never ran: an unanchored interval runs at start-up; anything
            // else waits for its first slot.
            (None, Schedule::Every { start_ms: None, .. }) => Some(now_ms),
            (None, _) => self.next_after(now_ms - 1),
        };
        due.unwrap_or(i64::MAX)
    }

    /// For messages: `cron "0 3 * * *" (Europe/Paris)` or `every 24h`.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron { expr, tz, .. } => format!("cron \"{expr}\" ({tz})"),
            Schedule::Every { every_ms, start_ms } => {
                let base = format!(
                    "every {}",
                    humantime::format_duration(std::time::Duration::from_millis(*every_ms as u64))
                );
                match start_ms {
                    Some(s) => format!("{base} from {}", rfc3339(*s)),
                    None => base,
                }
            }
        }
    }
}

/// A millisecond timestamp as `2026-07-01T10:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn cron_in_a_time_zone() {
        let s = Schedule::cron("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 03:00 in Paris in winter is 02:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T02:00:00Z"))
        );
        let s = Schedule::cron("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-10T12:15:00Z"))
        );
    }

    #[test]
    fn cron_errors() {
        assert!(
            Schedule::cron("0 3 * *", None)
                .unwrap_err()
                .contains("has 4 fields")
        );
        assert!(
            Schedule::cron("0 0 3 * * *", None)
                .unwrap_err()
                .contains("has 6 fields")
        );
        assert!(
            Schedule::cron("61 3 * * *", None)
                .unwrap_err()
                .contains("not a valid cron")
        );
        assert!(
            Schedule::cron("0 3 * * *", Some("Mars/Base"))
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    #[test]
    fn anchored_interval() {
        let s = Schedule::every("24h", Some("2026-07-01T10:00:00Z")).unwrap();
        let start = ms("2026-07-01T10:00:00Z");
        assert_eq!(s.next_after(start - 5_000), Some(start));
        assert_eq!(s.next_after(start), Some(start + 86_400_000));
        assert_eq!(s.next_after(start + 1), Some(start + 86_400_000));
        // Never ran, start long past: the next slot, not at once.
        assert_eq!(s.next_due(None, start + 3_600_000), start + 86_400_000);
    }

    #[test]
    fn missed_runs_run_once_at_start_up() {
        let s = Schedule::every("1h", None).unwrap();
        let now = ms("2026-07-02T00:00:00Z");
        // Last ran 5 hours ago: due now (≤ now), once.
        assert!(s.next_due(Some(now - 5 * 3_600_000), now) <= now);
        // Last ran 10 minutes ago: due in 50 minutes.
        assert_eq!(s.next_due(Some(now - 600_000), now), now + 3_000_000);
        // Never ran: at once.
        assert_eq!(s.next_due(None, now), now);
        let c = Schedule::cron("0 3 * * *", None).unwrap();
        assert!(c.next_due(Some(ms("2026-06-30T03:00:00Z")), now) <= now);
        assert_eq!(c.next_due(None, now), ms("2026-07-02T03:00:00Z"));
    }

    #[test]
    fn interval_errors() {
        assert!(
            Schedule::every("soon", None)
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            Schedule::every("10ms", None)
                .unwrap_err()
                .contains("too short")
        );
        assert!(
            Schedule::every("1h", Some("tomorrow"))
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
