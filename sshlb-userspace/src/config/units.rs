//! Parsers for the file's unit-bearing strings: durations (`"250ms"`), rates (`"30/m"`) and port
//! ranges (`"10000-32767"`). Pure; `None` means "not of this form", the caller says what is allowed.

use std::time::Duration;

/// `"10/s"`, `"30/m"`, `"100/h"` → the time per connection (the rate limiter's parser, reused).
pub(super) use crate::protection::parse_rate;

/// `"FIRST-LAST"` → `(FIRST, LAST)` with `1024 <= FIRST <= LAST`.
pub(super) fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a >= 1024 && a <= b).then_some((a, b))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"5d"` → a duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(432_000)));
        for bad in ["", "5", "ms", "5 parsecs", "-1s", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_start_above_the_privileged_ports_and_ascend() {
        assert_eq!(parse_port_range("10000-32767"), Some((10_000, 32_767)));
        assert_eq!(parse_port_range(" 2000 - 2000 "), Some((2000, 2000)));
        for bad in ["", "1000-2000", "3000-2000", "2000", "2000-70000", "a-b"] {
            assert_eq!(parse_port_range(bad), None, "{bad:?}");
        }
    }
}
