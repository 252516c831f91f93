//! Kubernetes resource quantities (`k8s.io/apimachinery/pkg/api/resource`): parsing, and the
//! form the apiserver stores a container's requests and limits in ("1024Mi" is stored as
//! "1Gi", "0.5" as "500m", "0.1m" as "1m"). The controller writes quantities in that form, so a
//! stored CronJob compares equal to the one it would apply (and is not re-applied on every
//! reconcile); the injector's flags and `/validate` reject what is no quantity.
//!
//! Values are held exactly as nano-units in an `i128`, the precision the apiserver's decoder
//! keeps (it rounds finer values up). Magnitudes beyond 2^63-1 units are refused here: the
//! apiserver caps binary ones there and keeps larger decimal ones, and no request or limit
//! needs either. So are spellings it reads as zero although they hold no digit ("Mi", ".").

use std::fmt;

/// How a quantity was written, which decides how it is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `Ki`, `Mi`, … `Ei`.
    BinarySi,
    /// `n`, `u`, `m`, none, `k`, `M`, … `E`.
    DecimalSi,
    /// `e3`, `E-6`, ….
    DecimalExponent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;
/// The apiserver's bound: 2^63-1 units.
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
const DECIMAL_SUFFIXES: [(i32, &str); 10] = [
    (-9, "n"),
    (-6, "u"),
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];

impl Quantity {
    /// Whether the value is below zero (resource requests and limits must not be).
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// Whether this value is larger than `other`'s, whatever their suffixes.
    pub fn exceeds(&self, other: &Quantity) -> bool {
        self.nanos > other.nanos
    }

    /// What the apiserver's defaulting makes of a value in a resource list (requests, limits,
    /// quotas): rounded up, away from zero, to a whole milli-unit.
    pub fn in_resource_list(self) -> Self {
        const NANOS_PER_MILLI: i128 = 1_000_000;
        let rest = self.nanos % NANOS_PER_MILLI;
        Quantity {
            nanos: self.nanos - rest + rest.signum() * NANOS_PER_MILLI,
            ..self
        }
    }
}

/// Parses `<sign><digits>[.<digits>]<suffix>` as the apiserver does (but see the module's
/// notes on what is refused here); the error says what is wrong in a phrase that follows
/// "is not a quantity: ".
pub fn parse(s: &str) -> Result<Quantity, String> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') {
        return Err("more than one decimal point".into());
    }
    if whole.is_empty() && fraction.is_empty() {
        return Err("no number (expected digits, then an optional suffix such as Mi or m)".into());
    }
    // Zeros that carry no value do not count against the precision an i128 holds.
    let (whole, fraction) = (
        whole.trim_start_matches('0'),
        fraction.trim_end_matches('0'),
    );
    let digits = whole.len() + fraction.len();
    if digits > 30 {
        return Err(format!("{digits} significant digits; out of range"));
    }
    let (base, exponent, format) = suffix_of(suffix)?;
    let mantissa: i128 = match format!("{whole}{fraction}") {
        zero if zero.is_empty() => 0,
        digits => digits.parse().map_err(|_| "no number".to_owned())?,
    };
    // nanos = mantissa * 10^(9 - fraction digits) * base^exponent, rounded up to a whole nano.
    let mut tens = 9 - i32::try_from(fraction.len()).unwrap_or(i32::MAX);
    let mut nanos = mantissa;
    if base == 10 {
        tens = tens.saturating_add(exponent);
    } else {
        nanos = nanos
            .checked_mul(1i128 << exponent)
            .ok_or_else(out_of_range)?;
    }
    if tens >= 0 {
        let factor = u32::try_from(tens)
            .ok()
            .and_then(|t| 10i128.checked_pow(t))
            .ok_or_else(out_of_range)?;
        nanos = nanos.checked_mul(factor).ok_or_else(out_of_range)?;
    } else {
        // Finer than a nano-unit: rounded up, as the apiserver does.
        nanos = match 10i128.checked_pow(tens.unsigned_abs()) {
            Some(divisor) => nanos / divisor + i128::from(nanos % divisor != 0),
            None => i128::from(nanos != 0),
        };
    }
    if nanos > MAX_NANOS {
        return Err(out_of_range());
    }
    Ok(Quantity {
        nanos: if negative { -nanos } else { nanos },
        format,
    })
}

fn out_of_range() -> String {
    "out of range (at most 2^63-1)".into()
}

/// Base, exponent and format of a suffix.
fn suffix_of(suffix: &str) -> Result<(i128, i32, Format), String> {
    if let Some(i) = BINARY_SUFFIXES.iter().skip(1).position(|s| *s == suffix) {
        let power = i32::try_from(i + 1).unwrap_or(0) * 10;
        return Ok((2, power, Format::BinarySi));
    }
    if let Some((exponent, _)) = DECIMAL_SUFFIXES.iter().find(|(_, s)| *s == suffix) {
        return Ok((10, *exponent, Format::DecimalSi));
    }
    if let Some(exponent) = suffix
        .strip_prefix(['e', 'E'])
        .filter(|e| !e.is_empty() && e.bytes().skip(1).all(|b| b.is_ascii_digit()))
        .and_then(|e| e.parse::<i32>().ok())
    {
        return Ok((10, exponent, Format::DecimalExponent));
    }
    Err(format!(
        "unknown suffix {suffix:?} (binary Ki, Mi, Gi, Ti, Pi, Ei; decimal n, u, m, k, M, G, T, P, E; or an exponent such as e3)"
    ))
}

/// Strips `base` from `value` as often as it divides it; returns what is left and how often.
fn remove_factors(mut value: i128, base: i128) -> (i128, i32) {
    let mut times = 0;
    while value != 0 && value % base == 0 {
        value /= base;
        times += 1;
    }
    (value, times)
}

/// The canonical form (apimachinery's `Quantity.String()`): no fraction digits, the largest
/// suffix that loses nothing, the suffix family it was written in (binary only for whole
/// values of at least 1024, as the apiserver does).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let whole = self.nanos % NANOS_PER_UNIT == 0;
        if self.format == Format::BinarySi && whole && self.nanos.abs() >= 1024 * NANOS_PER_UNIT {
            let (amount, times) = remove_factors(self.nanos / NANOS_PER_UNIT, 1024);
            let suffix = usize::try_from(times)
                .ok()
                .and_then(|t| BINARY_SUFFIXES.get(t))
                .copied()
                .unwrap_or_default();
            return write!(f, "{amount}{suffix}");
        }
        let (mut amount, times) = remove_factors(self.nanos, 10);
        let mut exponent = times - 9;
        while exponent.rem_euclid(3) != 0 {
            amount *= 10;
            exponent -= 1;
        }
        if self.format == Format::DecimalExponent {
            return match exponent {
                0 => write!(f, "{amount}"),
                e => write!(f, "{amount}e{e}"),
            };
        }
        let suffix = DECIMAL_SUFFIXES
            .iter()
            .find(|(e, _)| *e == exponent)
            .map_or("", |(_, s)| *s);
        write!(f, "{amount}{suffix}")
    }
}

/// `s` as the apiserver stores it in a resource list, or why it is no quantity.
pub fn canonical(s: &str) -> Result<String, String> {
    parse(s).map(|q| q.in_resource_list().to_string())
}

/// A request or limit as the apiserver stores it, or one line on why the apiserver would refuse
/// it.
pub fn resource(s: &str) -> Result<String, String> {
    let q = parse(s).map_err(|e| format!("{s:?} is not a quantity: {e}"))?;
    if q.is_negative() {
        return Err(format!(
            "{s:?} is negative; requests and limits are at least 0"
        ));
    }
    Ok(q.in_resource_list().to_string())
}

/// Requests and limits as the apiserver stores them. A value that is no quantity is left as
/// written: the apiserver's error then names it (`/validate` denies it before it gets there).
pub fn canonical_resources(
    r: &k8s_openapi::api::core::v1::ResourceRequirements,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Stored;
    let list = |l: &Option<std::collections::BTreeMap<String, Stored>>| {
        // An empty list is not stored either.
        l.as_ref().filter(|l| !l.is_empty()).map(|l| {
            l.iter()
                .map(|(name, q)| {
                    (
                        name.clone(),
                        Stored(canonical(&q.0).unwrap_or_else(|_| q.0.clone())),
                    )
                })
                .collect()
        })
    };
    k8s_openapi::api::core::v1::ResourceRequirements {
        limits: list(&r.limits),
        requests: list(&r.requests),
        claims: r.claims.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_follow_the_apiserver() {
        // The apiserver's own forms; tests/e2e_quantity.rs checks many more against a real one.
        for (written, stored) in [
            ("1.5", "1500m"),
            ("1.5Gi", "1536Mi"),
            ("1024Mi", "1Gi"),
            ("0.5Ki", "512"),
            ("1.5Ki", "1536"),
            ("100m", "100m"),
            ("1000m", "1"),
            ("0.1m", "1m"),
            ("1.0005Ki", "1024512m"),
            ("1e3", "1e3"),
            ("129e6", "129e6"),
            ("1500e0", "1500"),
            ("1E", "1E"),
            ("2000k", "2M"),
            ("+1", "1"),
            ("-1.5", "-1500m"),
            (".5", "500m"),
            ("5.", "5"),
            ("0Mi", "0"),
            ("1.5n", "1m"),
            ("-0.1m", "-1m"),
            ("1e-12", "1e-3"),
            ("0001.5000", "1500m"),
            ("1.000000000000000000000000000000Ei", "1Ei"),
            ("0.0", "0"),
            ("0.0000000001e-2147483648", "1e-3"),
        ] {
            assert_eq!(canonical(written).as_deref(), Ok(stored), "{written}");
        }
    }

    #[test]
    fn what_is_no_quantity_says_why() {
        for (bad, why) in [
            ("", "no number"),
            ("Mi", "no number"),
            ("16MB", "unknown suffix \"MB\""),
            ("1.2.3", "more than one decimal point"),
            ("1e", "unknown suffix"),
            ("1e+", "unknown suffix"),
            (" 1", "no number"),
            ("1 ", "unknown suffix"),
            ("10Ei", "out of range"),
            ("1e40", "out of range"),
        ] {
            let err = canonical(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
