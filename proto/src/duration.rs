//! Durations in flags, in Mesos's style (`15secs`, `10mins`) or the short one
//! (`200ms`, `1.5s`). A bare number is seconds.

use std::time::Duration;

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 200ms, 15secs, 2mins"))?;
    let secs = match unit.trim() {
        "ns" | "nsecs" => n / 1e9,
        "us" | "usecs" => n / 1e6,
        "ms" | "msecs" => n / 1e3,
        "" | "s" | "sec" | "secs" => n,
        "m" | "min" | "mins" => n * 60.0,
        "h" | "hr" | "hrs" => n * 3600.0,
        "d" | "day" | "days" => n * 86400.0,
        "w" | "week" | "weeks" => n * 7.0 * 86400.0,
        u => return Err(format!("invalid duration {text:?}: unknown unit {u:?}")),
    };
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse("15secs").unwrap(), Duration::from_secs(15));
        assert_eq!(parse("10mins").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "x", "5 parsecs", "-1s", "1e99s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
