//! Calendar arithmetic on caller-supplied Unix timestamps (the core reads no clock).

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01; Howard Hinnant's `days_from_civil`.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `2026-11-22T15:01:02Z` or `2026-11-22T15:01:02.345Z` (UTC only,
/// as cairn writes them) into Unix milliseconds.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: core::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = &s[19..];
    let (ms, tail) = match rest.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let mut ms = 0i64;
            for (i, c) in frac[..digits].bytes().take(3).enumerate() {
                ms += i64::from(c - b'0') * [100, 10, 1][i];
            }
            (ms, &frac[digits..])
        }
        None => (0, rest),
    };
    if tail != "Z" && tail != "z" && tail != "+00:00" {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None;
    }
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + ms)
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: i64,
    mi: i64,
    s: i64,
    ms: i64,
}

fn parts(unix_ms: i64) -> Parts {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    Parts {
        y,
        mo,
        d,
        h: sod / 3600,
        mi: sod % 3600 / 60,
        s: sod % 60,
        ms,
    }
}

/// `2026-11-22T15:01:02.345Z`
pub fn rfc3339(unix_ms: i64) -> String {
    let p = parts(unix_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.ms
    )
}

/// `20261122T150102Z`: sortable, file-name safe.
pub fn compact(unix_ms: i64) -> String {
    let p = parts(unix_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_359_662_345), "2026-11-22T15:01:02.345Z");
        assert_eq!(compact(1_795_359_662_345), "20261122T150102Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn days_round_trip_and_rfc3339_parses() {
        for d in [-800_000, -1, 0, 1, 59, 10_957, 20_781, 800_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(
            parse_rfc3339_utc("2026-11-22T15:01:02.345Z"),
            Some(1_795_359_662_345)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-11-22T15:01:02Z"),
            Some(1_795_359_662_000)
        );
        assert_eq!(parse_rfc3339_utc("2026-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-11-22 15:01:02Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-11-22T15:01:02+01:00"), None);
    }
}
