//! The image's system accounts on a host whose `/etc` was seeded by an older image: the factory
//! `passwd`, `group` and `shadow` entries whose names `/etc` lacks are appended at every boot
//! (as systemd-sysusers does), so a service an update adds finds its user. Nothing is changed
//! or removed, and an entry whose number the host already uses for another name is left out
//! (and said), never given a number the image did not choose.

use crate::say;
use std::path::Path;

/// The files, and which `:`-separated field holds the number that must stay unique.
const TABLES: [(&str, Option<usize>); 3] = [("passwd", Some(2)), ("group", Some(2)), ("shadow", None)];

/// The lines of `factory` whose names `host` lacks and whose number (field `id_field`) is free.
/// Returns them, and the ones left out because another name holds their number.
pub fn missing(host: &str, factory: &str, id_field: Option<usize>) -> (Vec<String>, Vec<String>) {
    let field = |line: &str, i: usize| line.split(':').nth(i).map(str::to_string);
    let names: Vec<String> = host.lines().filter_map(|l| field(l, 0)).collect();
    let ids: Vec<String> = id_field.map_or_else(Vec::new, |i| host.lines().filter_map(|l| field(l, i)).collect());
    let (mut add, mut clash) = (Vec::new(), Vec::new());
    for line in factory.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let Some(name) = field(line, 0) else { continue };
        if names.contains(&name) {
            continue;
        }
        match id_field.and_then(|i| field(line, i)) {
            Some(id) if ids.contains(&id) => clash.push(line.to_string()),
            _ => add.push(line.to_string()),
        }
    }
    (add, clash)
}

/// Appends the factory's missing accounts to `root`'s `/etc` tables, each file replaced whole
/// and durably only when something is added.
pub fn merge(root: &Path) -> Result<(), String> {
    for (table, id_field) in TABLES {
        let (host_path, factory_path) = (root.join("etc").join(table), root.join("usr/share/factory/etc").join(table));
        let Ok(factory) = std::fs::read_to_string(&factory_path) else { continue };
        let host = match std::fs::read_to_string(&host_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("reading {}: {e}", host_path.display())),
        };
        let (add, clash) = missing(&host, &factory, id_field);
        for line in &clash {
            say!(
                "/etc/{table}: not adding the image's {:?}: its number is taken",
                line.split(':').next().unwrap_or("")
            );
        }
        if add.is_empty() {
            continue;
        }
        let mut text = host;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for line in &add {
            text.push_str(line);
            text.push('\n');
        }
        let mode = if table == "shadow" { 0o600 } else { 0o644 };
        cairn_release::durable::write_atomic(&host_path, text.as_bytes(), mode)
            .map_err(|e| format!("writing {}: {e}", host_path.display()))?;
        say!(
            "/etc/{table}: added the image's {}",
            add.iter().map(|l| l.split(':').next().unwrap_or("")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_what_the_host_lacks_and_never_reuses_a_number() {
        let host = "root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n\
                    app:x:999:999::/home/app:/bin/sh\n";
        let factory = "root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n\
                       _chrony:x:998:998::/var/lib/chrony:/usr/sbin/nologin\nother:x:999:999::/:/usr/sbin/nologin\n";
        let (add, clash) = missing(host, factory, Some(2));
        assert_eq!(add, ["_chrony:x:998:998::/var/lib/chrony:/usr/sbin/nologin"]);
        assert_eq!(clash, ["other:x:999:999::/:/usr/sbin/nologin"]);
        // shadow has no number: only names count.
        let (add, clash) = missing("root:*:1::::::\n", "root:*:1::::::\n_chrony:*:1::::::\n", None);
        assert_eq!((add, clash), (vec!["_chrony:*:1::::::".to_string()], vec![]));
    }

    #[test]
    fn merge_appends_durably_and_twice_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (etc, factory) = (t.path().join("etc"), t.path().join("usr/share/factory/etc"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&factory).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh").unwrap();
        std::fs::write(factory.join("passwd"), "root:x:0:0::/:/bin/sh\n_chrony:x:998:998::/:/usr/sbin/nologin\n")
            .unwrap();
        merge(t.path()).unwrap();
        let want = "root:x:0:0:root:/root:/bin/sh\n_chrony:x:998:998::/:/usr/sbin/nologin\n";
        assert_eq!(std::fs::read_to_string(etc.join("passwd")).unwrap(), want);
        merge(t.path()).unwrap();
        assert_eq!(std::fs::read_to_string(etc.join("passwd")).unwrap(), want);
        // No group file on the host: none is made.
        assert!(!etc.join("group").exists());
    }
}
