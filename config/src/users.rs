//! `users` and `ssh_authorized_keys`.

use crate::files::valid_name;
use crate::walk::{Fields, Value, Walker};
use serde::Serialize;

pub const KEYS: &[&str] = &[
    "name",
    "passwd",
    "ssh_authorized_keys",
    "gecos",
    "homedir",
    "no_create_home",
    "primary_group",
    "groups",
    "no_user_group",
    "system",
    "no_log_init",
    "shell",
];

/// The user that top-level `ssh_authorized_keys` belong to, as on CoreOS.
pub const DEFAULT_USER: &str = "core";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash; never a clear-text password.
    pub passwd: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub gecos: Option<String>,
    pub homedir: Option<String>,
    pub no_create_home: bool,
    pub primary_group: Option<String>,
    pub groups: Vec<String>,
    pub no_user_group: bool,
    pub system: bool,
    pub shell: Option<String>,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// An authorized_keys line: optional options, a key type, base64 key data (which starts with
/// the length of the type name: `AAAA`), a comment.
pub(crate) fn looks_like_key(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|pair| KEY_TYPES.contains(&pair[0]) && pair[1].len() >= 12 && pair[1].starts_with("AAAA"))
}

pub fn keys(w: &mut Walker, v: Value, path: &str) -> Option<Vec<String>> {
    let items = w.list(v, path)?;
    let mut out = Vec::new();
    let mut ok = true;
    for (item, p) in items {
        match w.text(item, &p) {
            Some(k) if looks_like_key(&k) => out.push(k.trim().to_string()),
            Some(k) => {
                let start: String = k.chars().take(20).collect();
                w.error(item.at, &p, format!("{start:?}... is not an SSH public key (ssh-ed25519 AAAA... comment)"));
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A crypt(3) hash (`$6$...`, `$y$...`) or a locked marker (`*`, `!`).
fn passwd(w: &mut Walker, v: Value, path: &str) -> Option<String> {
    let p = w.text(v, path)?;
    // crypt(3)'s alphabet, and the parameter signs of yescrypt and scrypt: nothing that could
    // end the field (':') or the line in /etc/shadow.
    let crypt_chars = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "./$=,+-".contains(c));
    let hash = |s: &str| s.starts_with('$') && s.matches('$').count() >= 3 && crypt_chars(s);
    if hash(&p) || p == "*" || p.strip_prefix('!').is_some_and(|rest| rest.is_empty() || hash(rest) || rest == "*") {
        return Some(p);
    }
    w.error(
        v.at,
        path,
        "not a password hash (like $6$... or $y$...); a clear-text password is refused: hash it with `mkpasswd`",
    );
    None
}

/// A home directory or shell: a clean absolute path that cannot end its field of
/// /etc/passwd (`:`) or its line.
fn account_path(w: &mut Walker, v: Value, path: &str) -> Option<String> {
    let p = w.absolute_path(v, path)?;
    if p.contains(':') || p.chars().any(char::is_control) {
        w.error(v.at, path, "must not contain ':' or control characters (it is a field of /etc/passwd)");
        return None;
    }
    if p.split('/').any(|c| c == ".." || c == ".") {
        w.error(v.at, path, format!("{p:?} contains \".\" or \"..\""));
        return None;
    }
    Some(p)
}

fn name(w: &mut Walker, v: Value, path: &str) -> Option<String> {
    let n = w.text(v, path)?;
    if valid_name(&n) {
        return Some(n);
    }
    w.error(v.at, path, format!("{n:?} is not a user or group name (lowercase letters, digits, _ and -; at most 32)"));
    None
}

pub fn user(w: &mut Walker, f: &Fields, item: Value, item_path: &str) -> Option<User> {
    let before = w.diagnostics.len();
    let mut u = User::default();
    match f.get("name") {
        Some((v, p)) => u.name = name(w, v, &p).unwrap_or_default(),
        None => w.error(item.at, item_path, "needs a name"),
    }
    if let Some((v, p)) = f.get("passwd") {
        u.passwd = passwd(w, v, &p);
    }
    if let Some((v, p)) = f.get("ssh_authorized_keys") {
        u.ssh_authorized_keys = keys(w, v, &p).unwrap_or_default();
    }
    if let Some((v, p)) = f.get("gecos")
        && let Some(g) = w.string(v, &p)
    {
        if g.contains(':') || g.chars().any(char::is_control) {
            w.error(v.at, &p, "must not contain ':' or control characters (it is a field of /etc/passwd)");
        } else {
            u.gecos = Some(g);
        }
    }
    if let Some((v, p)) = f.get("homedir") {
        u.homedir = account_path(w, v, &p);
    }
    if let Some((v, p)) = f.get("shell") {
        u.shell = account_path(w, v, &p);
    }
    if let Some((v, p)) = f.get("primary_group") {
        u.primary_group = name(w, v, &p);
    }
    if let Some((v, p)) = f.get("groups") {
        // CoreOS took a list; cloud-init also a comma-separated string.
        let groups = match v.node {
            marked_yaml::Node::Scalar(_) => {
                w.string(v, &p).map(|s| s.split(',').map(|g| g.trim().to_string()).collect::<Vec<_>>())
            }
            _ => w.strings(v, &p),
        };
        for g in groups.unwrap_or_default() {
            if valid_name(&g) {
                u.groups.push(g);
            } else {
                w.error(v.at, &p, format!("{g:?} is not a group name"));
            }
        }
    }
    for (key, field) in
        [("no_create_home", &mut u.no_create_home), ("no_user_group", &mut u.no_user_group), ("system", &mut u.system)]
    {
        if let Some((v, p)) = f.get(key) {
            *field = w.bool(v, &p).unwrap_or_default();
        }
    }
    if let Some((v, p)) = f.get("no_log_init") {
        w.bool(v, &p);
    }
    let clean = !crate::diag::has_errors(&w.diagnostics[before..]);
    clean.then_some(u)
}
