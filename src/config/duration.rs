//! Durations as the config files and the CLI write them: a whole number
//! and one unit, `s`, `m`, `h` or `d` (`5s`, `10m`, `1h`, `7d`).

use std::time::Duration;

/// The longest duration accepted anywhere: ten years.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// Parses `5s`, `10m`, `1h`, `7d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || {
        format!("{text:?} is not a duration: write a number and a unit, like 30s, 10m, 1h or 7d")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit_secs).filter(|s| *s <= MAX_SECS);
    match secs {
        Some(0) => Err(format!(
            "{text:?} is zero: write a duration longer than that"
        )),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{text:?} is longer than ten years")),
    }
}

/// The shortest text `parse` reads back as `d` (whole seconds).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("d", 24 * 3600), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_units_and_refuses_the_rest() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "1.5h",
            "-1s",
            "5x",
            "1h30m",
            "0s",
            "99999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn format_reads_back() {
        for secs in [1, 59, 60, 90, 3600, 7200, 86400, 86401] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d), "{secs}");
        }
        assert_eq!(format(Duration::from_secs(3600)), "1h");
    }
}
