//! `spec.schedule` and `spec.timeZone`, checked exactly as the Kubernetes CronJob API checks them
//! (robfig/cron's standard parser and Go's zone database), so a resource the webhook admits never
//! produces a CronJob the apiserver refuses.

/// Descriptors accepted in place of five fields (the CronJob API also knows @annually and
/// @midnight as aliases).
const DESCRIPTORS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Field {
        name: "day of week",
        min: 0,
        max: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

/// Checks a cron schedule. The error is one line without the field path.
pub fn check_schedule(schedule: &str) -> Result<(), String> {
    let trimmed = schedule.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    if trimmed.contains("TZ") {
        return Err("cannot use TZ or CRON_TZ in the schedule; use spec.timeZone instead".into());
    }
    if trimmed.starts_with('@') {
        // robfig/cron (the CronJob API's parser) takes a descriptor only when the untrimmed
        // schedule starts with `@` and then compares it exactly, so `@Daily`, `@daily ` and
        // ` @daily` are refused there. The controller copies the schedule verbatim into the
        // CronJob, so admitting them here would mean no backup ever runs.
        if DESCRIPTORS.contains(&schedule) {
            return Ok(());
        }
        if trimmed.starts_with("@every") {
            return Err("@every is not supported; use a five-field cron expression".into());
        }
        let lower = trimmed.to_ascii_lowercase();
        if let Some(exact) = DESCRIPTORS.iter().find(|d| **d == lower) {
            return Err(format!(
                "descriptor {schedule:?} must be written exactly {exact:?}: lower case, without spaces around it"
            ));
        }
        return Err(format!(
            "unknown descriptor {trimmed:?}; use @hourly, @daily, @weekly, @monthly, @yearly or five fields"
        ));
    }
    let parts: Vec<&str> = trimmed.split_whitespace().collect();
    if parts.len() != 5 {
        return Err(format!(
            "has {} fields; a cron schedule has five (minute hour day-of-month month day-of-week)",
            parts.len()
        ));
    }
    for (part, field) in parts.iter().zip(FIELDS.iter()) {
        // Empty items are skipped, as robfig/cron splits with FieldsFunc (`0,,30` is `0,30`).
        // A field of nothing but commas it takes too, as a schedule that never fires: refused.
        let mut items = part.split(',').filter(|i| !i.is_empty()).peekable();
        if items.peek().is_none() {
            return Err(format!(
                "{} field {part:?} names no value, so the schedule would never fire",
                field.name
            ));
        }
        for item in items {
            check_item(item, field).map_err(|e| format!("{} field {part:?}: {e}", field.name))?;
        }
    }
    Ok(())
}

fn check_item(item: &str, f: &Field) -> Result<(), String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (item, None),
    };
    // As robfig/cron's getRange: a `*` or `?` before a hyphen is the whole range, and whatever
    // follows the hyphen is not looked at (`*-5` is every minute).
    let low = range.split('-').next().unwrap_or(range);
    let (start, end) = if low == "*" || low == "?" {
        (f.min, f.max)
    } else {
        match range.split_once('-') {
            Some((a, b)) => (value(a, f)?, value(b, f)?),
            None => {
                let v = value(range, f)?;
                // `5/15` means from 5 to the end of the range in steps of 15.
                (v, if step.is_some() { f.max } else { v })
            }
        }
    };
    if start > end {
        return Err(format!("range start {start} is after its end {end}"));
    }
    if let Some(step) = step {
        // Go's strconv.Atoi: any 64-bit integer, however far beyond the range.
        let n: i64 = step
            .parse()
            .map_err(|_| format!("step {step:?} is not a number"))?;
        if n <= 0 {
            return Err("step must be a positive number".into());
        }
    }
    Ok(())
}

fn value(s: &str, f: &Field) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + f.min);
    }
    let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v < f.min || v > f.max {
        return Err(format!("{v} is out of range {}-{}", f.min, f.max));
    }
    Ok(v)
}

/// Checks an IANA time zone name as the CronJob API does.
pub fn check_time_zone(tz: &str) -> Result<(), String> {
    if tz.is_empty() {
        return Err("must not be empty when set".into());
    }
    if tz.eq_ignore_ascii_case("local") {
        return Err("must be an explicit IANA time zone such as Europe/Berlin, not Local".into());
    }
    let valid_parts = tz.split('/').all(|p| {
        p != "."
            && p != ".."
            && !p.starts_with('-')
            && !p.is_empty()
            && p.len() <= 14
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_+".contains(&b))
    });
    if !valid_parts || tz.parse::<chrono_tz::Tz>().is_err() {
        return Err(format!(
            "{tz:?} is not a known IANA time zone (for example Europe/Berlin or UTC)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 1 * *",
            "0 0 * * 0",
            "0 0 * * 6",
            "0 0 * * SUN",
            "0 0 * JAN-MAR mon-fri",
            "5/10 1-5,7 ? * *",
            "0 0 31 12 *",
            "  0 3 * * *  ",
            "@hourly",
            "@daily",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@midnight",
            // Five fields are split on whitespace, so spaces around them are fine.
            "\t0 3 * * *\n",
            // robfig/cron reads `*` before a hyphen as the whole range, and steps as 64-bit.
            "*-5 * * * *",
            "?-x/2 * * * *",
            "*/99999999999 * * * *",
        ] {
            assert_eq!(check_schedule(ok), Ok(()), "{ok}");
        }
        for (bad, want) in [
            ("", "must not be empty"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("* 24 * * *", "hour field"),
            (
                "* * 0 * *",
                "day of month field \"0\": 0 is out of range 1-31",
            ),
            ("* * * 13 *", "month"),
            (
                "* * * * 7",
                "day of week field \"7\": 7 is out of range 0-6",
            ),
            ("* * * *", "has 4 fields"),
            ("* * * * * *", "has 6 fields"),
            ("*/0 * * * *", "step must be a positive number"),
            ("*/-1 * * * *", "step must be a positive number"),
            ("*/99999999999999999999 * * * *", "is not a number"),
            ("5-1 * * * *", "range start 5 is after its end 1"),
            ("a * * * *", "\"a\" is not a number"),
            ("@every 5m", "@every is not supported"),
            ("@often", "unknown descriptor"),
            ("CRON_TZ=UTC 0 3 * * *", "use spec.timeZone"),
            ("0 3 * * L", "\"L\" is not a number"),
            // Descriptors are matched exactly, as the CronJob API does.
            (
                "@Daily",
                "descriptor \"@Daily\" must be written exactly \"@daily\": lower case, without spaces around it",
            ),
            ("@DAILY", "must be written exactly \"@daily\""),
            ("@Hourly", "must be written exactly \"@hourly\""),
            ("@MIDNIGHT", "must be written exactly \"@midnight\""),
            (
                " @daily",
                "descriptor \" @daily\" must be written exactly \"@daily\"",
            ),
            (
                "@daily ",
                "descriptor \"@daily \" must be written exactly \"@daily\"",
            ),
            ("\t@weekly", "must be written exactly \"@weekly\""),
            ("@monthly\n", "must be written exactly \"@monthly\""),
            (" @every 5m", "@every is not supported"),
        ] {
            let err = check_schedule(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn time_zones() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert_eq!(check_time_zone(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Local",
            "local",
            "Mars/Olympus",
            "../etc/passwd",
            "Europe/-Berlin",
            "Europe/Berlin ",
        ] {
            assert!(check_time_zone(bad).is_err(), "{bad}");
        }
    }
}
