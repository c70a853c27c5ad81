//! Human output: aligned columns, and times as ages.

use std::time::{SystemTime, UNIX_EPOCH};

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
pub fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms() - unix_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0), "never");
        assert_eq!(age(now_ms() - 5_000), "5s ago");
        assert_eq!(age(now_ms() - 3 * 3_600_000 - 10), "3h ago");
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some("")), "-");
    }
}
