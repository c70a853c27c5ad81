//! `write_files`: where, what (decoded from its encoding), whose, which mode.

use crate::walk::{Fields, Value, Walker};
use base64::Engine;
use serde::Serialize;
use std::io::Read;

pub const KEYS: &[&str] = &["path", "content", "encoding", "owner", "permissions"];

/// All of a document's `write_files` together may decode to at most this: a gzip bomb, or
/// hundreds of them, would otherwise fill memory and ROOT.
pub const MAX_DECODED: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    pub path: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    pub owner: String,
    pub group: String,
    pub permissions: u32,
}

/// Modes people write in decimal by mistake: decimal value -> the octal mode meant.
const DECIMAL_MODES: &[(&str, &str)] = &[
    ("420", "0644"),
    ("493", "0755"),
    ("384", "0600"),
    ("448", "0700"),
    ("511", "0777"),
    ("438", "0666"),
    ("292", "0444"),
    ("365", "0555"),
    ("416", "0640"),
    ("488", "0750"),
];

/// `^0?[0-7]{3,4}$`, read as octal (CoreOS's rule), whether written quoted or not.
fn permissions(w: &mut Walker, v: Value, path: &str) -> Option<u32> {
    let text = w.string(v, path)?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    let octal = (3..=5).contains(&digits.len())
        && digits.chars().all(|c| c.is_digit(8))
        && (digits.len() < 5 || digits.starts_with('0'));
    let meant = DECIMAL_MODES.iter().find(|(decimal, _)| *decimal == digits.trim_start_matches('0')).map(|(_, m)| *m);
    if !octal {
        let hint = meant.map(|m| format!("; decimal {digits} is {m}: write \"{m}\"")).unwrap_or_default();
        w.error(v.at, path, format!("{text:?} is not an octal mode like \"0644\"{hint}"));
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    if let Some(m) = meant {
        w.warn(v.at, path, format!("{text:?} is read as octal 0{mode:o}; if it is decimal for {m}, write \"{m}\""));
    }
    Some(mode)
}

/// Base64 text (line breaks allowed) to bytes.
fn base64_decode(w: &mut Walker, content: &str, at: Value, path: &str) -> Option<Vec<u8>> {
    let cleaned: String = content.chars().filter(|c| !c.is_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(cleaned) {
        Ok(b) => Some(b),
        Err(e) => {
            w.error(at.at, path, format!("not base64 ({e})"));
            None
        }
    }
}

/// Applies `encoding` to content (already base64-decoded if it was `!!binary`).
fn decode_bytes(
    w: &mut Walker,
    bytes: Vec<u8>,
    encoding: &str,
    binary: bool,
    at: Value,
    path: &str,
) -> Option<Vec<u8>> {
    let (gz, b64) = match encoding.to_ascii_lowercase().as_str() {
        "" => (false, false),
        "b64" | "base64" => (false, true),
        "gz" | "gzip" => (true, false),
        _ => (true, true),
    };
    let mut bytes = bytes;
    if b64 && !binary {
        bytes = base64_decode(w, &String::from_utf8_lossy(&bytes), at, path)?;
    }
    let left = MAX_DECODED.saturating_sub(w.decoded);
    let over_budget = |w: &mut Walker| {
        let message = format!("the document's write_files decode to more than {} MiB in all", MAX_DECODED >> 20);
        w.error(at.at, path, message);
    };
    if gz {
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(bytes.as_slice()).take(left + 1).read_to_end(&mut out);
        match read {
            Ok(_) if out.len() as u64 > left => {
                over_budget(w);
                return None;
            }
            Ok(_) => bytes = out,
            Err(e) => {
                w.error(at.at, path, format!("not gzip data ({e})"));
                return None;
            }
        }
    }
    if bytes.len() as u64 > left {
        over_budget(w);
        return None;
    }
    w.decoded += bytes.len() as u64;
    Some(bytes)
}

/// A user or group name as `useradd` accepts it.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Where a file may be written: absolute, no `..`, and not on the read-only `/usr` or a
/// kernel filesystem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{0:?} is not an absolute path")]
    NotAbsolute(String),
    #[error("{0:?} contains \"..\"")]
    DotDot(String),
    #[error("{0:?} names a directory, not a file")]
    Directory(String),
    #[error("{path:?} is under {under}, which is {why}; write under /etc, /var, /opt, /home or /root")]
    Forbidden { path: String, under: &'static str, why: &'static str },
}

pub fn check_path(p: &str) -> Result<(), PathError> {
    if !p.starts_with('/') {
        return Err(PathError::NotAbsolute(p.into()));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(PathError::DotDot(p.into()));
    }
    if p.ends_with('/') {
        return Err(PathError::Directory(p.into()));
    }
    for under in ["/usr", "/proc", "/sys", "/dev"] {
        if p == under || p.starts_with(&format!("{under}/")) {
            let why = if under == "/usr" { "read-only (dm-verity)" } else { "a kernel filesystem" };
            return Err(PathError::Forbidden { path: p.into(), under, why });
        }
    }
    Ok(())
}

pub fn write_file(w: &mut Walker, f: &Fields, item_at: Value, item_path: &str) -> Option<WriteFile> {
    let mut ok = true;
    let path = match f.get("path") {
        Some((v, p)) => w.text(v, &p).and_then(|s| match check_path(&s) {
            Ok(()) => Some(s),
            Err(e) => {
                w.error(v.at, &p, e.to_string());
                None
            }
        }),
        None => {
            w.error(item_at.at, item_path, "needs a path");
            None
        }
    };
    ok &= path.is_some();
    let encoding = match f.get("encoding") {
        Some((v, p)) => match w.string(v, &p) {
            Some(e)
                if ["b64", "base64", "gz", "gzip", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"]
                    .contains(&e.to_ascii_lowercase().as_str()) =>
            {
                Some(e)
            }
            Some(e) => {
                w.error(v.at, &p, format!("{e:?} is not an encoding (b64, gzip, gz+b64 or none)"));
                ok = false;
                None
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let content = match f.get("content") {
        Some((v, p)) => {
            // `content: !!binary |`: the block's text starts on the line after the tag's.
            let binary = w.binary_lines.contains(&v.at.line) || w.binary_lines.contains(&(v.at.line - 1));
            w.string(v, &p)
                .and_then(|c| if binary { base64_decode(w, &c, v, &p) } else { Some(c.into_bytes()) })
                .and_then(|bytes| decode_bytes(w, bytes, encoding.as_deref().unwrap_or(""), binary, v, &p))
        }
        None => Some(Vec::new()),
    };
    ok &= content.is_some();
    let (owner, group) = match f.get("owner") {
        Some((v, p)) => match w.text(v, &p) {
            Some(o) => {
                let (user, group) = o.split_once(':').unwrap_or((&o, &o));
                if valid_name(user) && valid_name(group) {
                    (user.to_string(), group.to_string())
                } else {
                    w.error(v.at, &p, format!("{o:?} is not \"user\" or \"user:group\""));
                    ok = false;
                    (String::new(), String::new())
                }
            }
            None => {
                ok = false;
                (String::new(), String::new())
            }
        },
        None => ("root".to_string(), "root".to_string()),
    };
    let permissions = match f.get("permissions") {
        Some((v, p)) => permissions(w, v, &p),
        None => Some(0o644),
    };
    ok &= permissions.is_some();
    if !ok {
        return None;
    }
    Some(WriteFile { path: path?, content: content?, owner, group, permissions: permissions? })
}
