//! The pure part of `weft check`: reading an HTTP `Date`, the clock skew it shows, how a
//! certificate's expiry classifies, durations as people read them.

use std::time::Duration;

/// Seconds since the Unix epoch of an HTTP `Date` in IMF-fixdate form (RFC 9110 §5.6.7:
/// `Sun, 06 Nov 1994 08:49:37 GMT`), the form hyper and every current server send.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut parts = s.split_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT"
        || parts.next().is_some()
        || hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..61).contains(&sec)
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The smallest offset of a component's clock from ours (seconds, positive when it is ahead)
/// that explains a response dated `date` which we sent at `sent` and got back at `received`
/// (our clock, Unix seconds).
///
/// `Date` is truncated to the second, so the component's clock read somewhere in
/// `[date, date + 1)` while ours read somewhere in `[sent, received]`: the skew is how far
/// apart the two intervals are, zero when they overlap. Neither the second's resolution nor
/// the round trip is ever counted as skew.
pub fn skew(date: i64, sent: f64, received: f64) -> f64 {
    let (lo, hi) = (date as f64, date as f64 + 1.0);
    if hi < sent {
        hi - sent
    } else if lo > received {
        lo - received
    } else {
        0.0
    }
}

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Already expired, this long ago.
    Expired(Duration),
    /// Still valid but for less than the warning threshold.
    Soon(Duration),
    /// Valid for this long, at least the warning threshold.
    Valid(Duration),
}

/// Classifies a certificate expiring at `not_after` (Unix seconds) at `now`: expired, expiring
/// within `warning`, or valid.
pub fn expiry(now: f64, not_after: f64, warning: Duration) -> Expiry {
    let left = not_after - now;
    if left <= 0.0 {
        Expiry::Expired(Duration::from_secs_f64(-left))
    } else if left < warning.as_secs_f64() {
        Expiry::Soon(Duration::from_secs_f64(left))
    } else {
        Expiry::Valid(Duration::from_secs_f64(left))
    }
}

/// A duration as its two largest units, rounded down: `3d4h`, `23h59m`, `4m30s`, `12s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// A skew as people say it: `in sync`, `3s ahead`, `1m2s behind`.
pub fn describe_skew(skew: f64) -> String {
    if skew == 0.0 {
        return "in sync (within the 1s resolution of Date)".into();
    }
    let d = Duration::from_secs_f64(skew.abs());
    let d = if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        human(d)
    };
    format!(
        "{d} {} this machine's",
        if skew > 0.0 { "ahead of" } else { "behind" }
    )
}
