//! Parsing of the human units used in automation configuration: durations
//! (`90s`, `5m`, `1h`, `24h`, `7d`, or combinations such as `1h30m`) and byte
//! sizes (`512`, `64KiB`, `256MiB`, `1GB`). Values are parsed straight into
//! `Duration` and `u64`, never kept as strings, and bad values are rejected
//! with a message that says what is accepted.

use std::time::Duration;

/// Parse a duration such as `30s`, `5m`, `1h`, `24h`, `7d` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let invalid = || {
        format!(
            "`{text}` is not a duration: write a number with a unit, e.g. `30s`, `5m`, `1h`, `24h`, `7d` or `1h30m`"
        )
    };
    if trimmed.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match rest[..unit_len].trim() {
            "ms" => {
                total += Duration::from_millis(value);
                rest = &rest[unit_len..];
                continue;
            }
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => return Err(invalid()),
        };
        total += Duration::from_secs(value.checked_mul(seconds).ok_or_else(invalid)?);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parse a byte size: a plain number of bytes, or with a unit `KB`, `MB`,
/// `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let invalid = || {
        format!(
            "`{text}` is not a size: write bytes, or a number with a unit, e.g. `64MiB` or `1GB`"
        )
    };
    let digits = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let value: f64 = trimmed[..digits].parse().map_err(|_| invalid())?;
    let multiplier: f64 = match trimmed[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "h", "5", "5 weeks", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("256MiB"), Ok(268_435_456));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5 MB"), Ok(1_500_000));
        for bad in ["", "MB", "5 parsecs", "-1"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
