//! Durations in Cairn's files (service files, update settings): a whole number and a unit,
//! `100ms`, `5s`, `2m`, `1h`, `90d`.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 100ms, 5s, 2m")]
    NotADuration(String),
    #[error("{0:?}: unit must be ms, s, m, h or d")]
    Unit(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| DurationError::NotADuration(s.into()))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(DurationError::Unit(s.into())),
    };
    ms.map(Duration::from_millis).ok_or_else(|| DurationError::TooLong(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse(" 5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(matches!(parse("5"), Err(DurationError::Unit(_))));
        assert!(matches!(parse("s"), Err(DurationError::NotADuration(_))));
        assert!(parse("99999999999999999h").unwrap_err().to_string().contains("too long"));
    }
}
