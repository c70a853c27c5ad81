//! Version ordering as systemd-boot sorts boot entries (the UAPI Version Format Specification,
//! systemd's `strverscmp_improved`), so "newer" means the same thing to the update agent and to
//! the boot loader: `1.0~rc1` < `1.0` < `1.0.1` < `1.0a`... with `~` before everything, `-`
//! separating version and release, numbers compared as numbers.

use std::cmp::Ordering;

fn valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"~-^.".contains(&c)
}

/// Compares two versions the way systemd-boot does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        // Characters outside the valid set only separate segments.
        while let Some(&c) = a.first().filter(|c| !valid(**c)) {
            let _ = c;
            a = &a[1..];
        }
        while let Some(&c) = b.first().filter(|c| !valid(**c)) {
            let _ = c;
            b = &b[1..];
        }
        let (ca, cb) = (a.first().copied(), b.first().copied());
        // '~' sorts before anything, even the end: 1.0~rc1 < 1.0.
        if ca == Some(b'~') || cb == Some(b'~') {
            if ca != Some(b'~') {
                return Ordering::Greater;
            }
            if cb != Some(b'~') {
                return Ordering::Less;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        match (ca, cb) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            _ => {}
        }
        // Separators: '-' (version-release), '^' (patched), '.' (point release). Where only
        // one string has the separator, that string is the older: 123-3 < 123^1 < 123.1 < 123a.
        if let Some(sep) = [b'-', b'^', b'.'].into_iter().find(|s| ca == Some(*s) || cb == Some(*s)) {
            if ca != Some(sep) {
                return Ordering::Greater;
            }
            if cb != Some(sep) {
                return Ordering::Less;
            }
            a = &a[1..];
            b = &b[1..];
            continue;
        }
        let digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
        if digit(ca) || digit(cb) {
            // Numeric segments are newer than alphabetic ones.
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            if na == 0 {
                return Ordering::Less;
            }
            if nb == 0 {
                return Ordering::Greater;
            }
            let (sa, sb) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
            let ord = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb));
            if ord != Ordering::Equal {
                return ord;
            }
            a = &a[na..];
            b = &b[nb..];
        } else {
            let na = a.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            let ord = a[..na].cmp(&b[..nb]);
            if ord != Ordering::Equal {
                return ord;
            }
            a = &a[na..];
            b = &b[nb..];
        }
    }
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let z = s.iter().take_while(|c| **c == b'0').count();
    &s[z..]
}

/// A Cairn version goes into file names, os-release and the check-in protocol: 1 to 64 of
/// letters, digits, `.`, `-`, `~`, `_`, starting with a digit. No `+`, which separates the boot
/// counter in UKI file names.
pub fn validate(v: &str) -> Result<(), VersionError> {
    if v.is_empty() || v.len() > 64 {
        return Err(VersionError::Length);
    }
    if !v.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(VersionError::Start(v.into()));
    }
    if let Some(bad) = v.chars().find(|c| !(c.is_ascii_alphanumeric() || ".-~_".contains(*c))) {
        return Err(VersionError::Character(v.into(), bad));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("version must be 1 to 64 characters")]
    Length,
    #[error("version {0:?} must start with a digit")]
    Start(String),
    #[error("version {0:?} holds {1:?}; use letters, digits, '.', '-', '~', '_'")]
    Character(String, char),
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn systemds_own_ordered_list() {
        // From systemd's test-string-util.c (test_strverscmp_improved), oldest first.
        let list = [
            "~1",
            "",
            "ab",
            "abb",
            "abc",
            "0001",
            "002",
            "12",
            "122",
            "122.9",
            "123~rc1",
            "123",
            "123-a",
            "123-a.1",
            "123-a1",
            "123-a1.1",
            "123-3",
            "123-3.1",
            "123^patch1",
            "123^1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124",
        ];
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                assert_eq!(compare(a, b), Less, "{a:?} < {b:?}");
                assert_eq!(compare(b, a), Greater, "{b:?} > {a:?}");
            }
        }
    }

    #[test]
    fn ordering_matches_the_uapi_specification() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.9", "1.10", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0", "1.0.1", Less),
            ("1.0", "1.0-1", Less),
            ("1.0-1", "1.0.1", Less),
            ("1.0^1", "1.0", Greater),
            ("1.0^1", "1.0.1", Less),
            ("1.0.1", "1.0a", Less),
            ("1.0a", "1.0b", Less),
            ("1.0a", "1.0", Greater),
            ("1.0", "1.0a", Less),
            ("1.001", "1.1", Equal),
            ("2", "10", Less),
            ("1.0.0", "1.0.0-rc1", Less),
            ("122.1", "123~rc1", Less),
            ("123~rc1", "123", Less),
            ("a", "1", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
