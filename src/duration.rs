//! Durations on the command line, in Go's notation (`10s`, `1m30s`, `1.5h`, `250ms`), as the
//! Kubernetes components and kubectl write them.
//!
//! Parsed here rather than with kube-core's `Duration`, whose parser panics on a later negative
//! part (`1m-30s`) or a sum that overflows: a bad flag must be a one-line error, never a panic.

use std::time::Duration;

/// A non-negative duration: one or more `<number><unit>` parts (units `ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h`; the number may have a fraction), or a bare `0`.
pub fn parse(s: &str) -> Result<Duration, String> {
    parse_parts(s, false)
}

/// [`parse`], and a bare number is seconds (`2`, `2.5`), as `backup-notifier --timeout` has
/// always taken it.
pub fn parse_or_seconds(s: &str) -> Result<Duration, String> {
    parse_parts(s, true)
}

fn parse_parts(s: &str, bare_seconds: bool) -> Result<Duration, String> {
    let hint = || format!("{s:?} is not a duration like 10s, 1m30s or 1.5h");
    if s.starts_with('-') {
        return Err(format!("{s:?} must not be negative"));
    }
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(hint());
    }
    let mut total = Duration::ZERO;
    let mut rest = rest;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        // Only digits with one optional point, and at least one digit, get past this.
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(hint());
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" if bare_seconds && number.len() == s.len() => 1_000_000_000,
            "" => {
                return Err(format!(
                    "{s:?} has a number without a unit (ns, us, ms, s, m, h)"
                ));
            }
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {unit:?}; use ns, us, ms, s, m or h"
                ));
            }
        };
        let too_long = || format!("{s:?} is too long");
        let part = part_nanos(number, nanos_per_unit).ok_or_else(too_long)?;
        let part = u64::try_from(part / 1_000_000_000)
            .ok()
            .map(|secs| Duration::new(secs, (part % 1_000_000_000) as u32))
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = tail;
    }
    Ok(total)
}

/// `<whole>.<fraction>` units in nanoseconds, in integers so that no digit is lost to a float;
/// a fraction finer than a nanosecond is truncated, as Go's `time.ParseDuration` does.
fn part_nanos(number: &str, nanos_per_unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole = match whole {
        "" => 0,
        digits => digits.parse::<u128>().ok()?.checked_mul(nanos_per_unit)?,
    };
    // Digits past the 24th are worth less than 10⁻¹¹ ns in the largest unit; dropping them
    // keeps `fraction * nanos_per_unit` inside a u128.
    let fraction = &fraction[..fraction.len().min(24)];
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let fraction = match fraction {
        "" => 0,
        digits => digits.parse::<u128>().ok()? * nanos_per_unit / scale,
    };
    whole.checked_add(fraction)
}

/// [`parse`], then `min..=max`, with the range in the error.
pub fn within(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse(s)?;
    if d < min || d > max {
        return Err(format!(
            "{s:?} is out of range: at least {} and at most {}",
            show(min),
            show(max)
        ));
    }
    Ok(d)
}

/// `36h`, `5m`, `10s`, `1.5s`, `250ms`, `1.5ms`: a duration as the command line takes it back.
pub fn show(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        // Debug writes `1.5ms`, `250µs`, `7ns`, `1.000000001s`: Go notation too.
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if d.subsec_nanos() == 0 && secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_notation_is_read() {
        for (s, want) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("+10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("87600h", Duration::from_secs(87600 * 3600)),
            ("5us", Duration::from_micros(5)),
            ("5µs", Duration::from_micros(5)),
            ("7ns", Duration::from_nanos(7)),
            (".5s", Duration::from_millis(500)),
            ("1.5ns", Duration::from_nanos(1)),
            ("0.1h", Duration::from_secs(360)),
            (
                "87600.000000000001h",
                Duration::from_secs(87600 * 3600) + Duration::from_nanos(3),
            ),
            ("1.000000001s", Duration::new(1, 1)),
            ("1.0000000019s", Duration::new(1, 1)),
            ("2.000000000000000000000000000009s", Duration::from_secs(2)),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_durations_are_one_line_errors_not_panics() {
        for (s, says) in [
            ("", "is not a duration"),
            ("10", "without a unit"),
            ("1m-30s", "unknown unit \"m-\""),
            ("-1s", "must not be negative"),
            ("10x", "unknown unit \"x\""),
            ("1e3s", "unknown unit \"e\""),
            ("infs", "is not a duration"),
            ("s", "is not a duration"),
            (".s", "is not a duration"),
            ("1..5s", "is not a duration"),
            ("99999999999999999999h", "is too long"),
            ("1234567890123456789012345678901234567890s", "is too long"),
            ("5000000000000000h5000000000000000h", "is too long"),
            ("10s ", "unknown unit \"s \""),
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains(says), "{s}: {e}");
            assert!(!e.contains('\n'), "{s}: {e}");
        }
    }

    #[test]
    fn a_bare_number_is_seconds_only_where_asked() {
        assert_eq!(parse_or_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_or_seconds("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse("2.5").is_err());
        for bad in ["1m30", "+2", "2 "] {
            assert!(parse_or_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_are_checked_and_named() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(3600));
        assert_eq!(within("30s", min, max), Ok(Duration::from_secs(30)));
        assert_eq!(within("1h", min, max), Ok(max));
        assert_eq!(
            within("0s", min, max),
            Err("\"0s\" is out of range: at least 1s and at most 1h".to_owned())
        );
        assert!(within("61m", min, max).is_err());
    }

    #[test]
    fn durations_are_shown_as_the_command_line_takes_them() {
        for (d, want) in [
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(876_000 * 3600), "876000h"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_micros(250), "250µs"),
            (Duration::new(1, 1), "1.000000001s"),
        ] {
            assert_eq!(show(d), want);
            assert_eq!(parse(&show(d)), Ok(d), "{want} reads back");
        }
    }
}
