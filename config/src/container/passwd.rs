//! Who a container's process runs as (pure): a `user` setting or the image's `User` (`name`,
//! `uid`, `uid:gid`, `name:group`), resolved against the image's `/etc/passwd` and `/etc/group`
//! as Docker and containerd do: a name must be there, a bare uid takes the passwd entry's group
//! (0 when there is none), and the user's supplementary groups come from `/etc/group`.

/// A resolved identity for the OCI spec's `process.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// One `/etc/passwd` entry: name, uid, gid.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// One `/etc/group` entry: name, gid, members.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        Some((f[0], f[2].parse().ok()?, f[3].split(',').filter(|m| !m.is_empty()).collect()))
    })
}

/// `user` (empty: root) in an image whose `/etc/passwd` and `/etc/group` are given (empty when
/// the image has none).
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let (uid, name, passwd_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd_entries(passwd).find(|(_, u, _)| *u == uid);
            (uid, entry.map(|(n, _, _)| n), entry.map(|(_, _, g)| g))
        }
        Err(_) => {
            let (n, uid, gid) = passwd_entries(passwd)
                .find(|(n, _, _)| *n == user_part)
                .ok_or_else(|| format!("no user {user_part:?} in the image's /etc/passwd"))?;
            (uid, Some(n), Some(gid))
        }
    };
    let gid = match group_part {
        None => passwd_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
    };
    // Supplementary groups only when no group was named, as Docker does.
    let additional_gids = match (group_part, name) {
        (None, Some(name)) => group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| g)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity { uid, gid, additional_gids })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nbad line\napp:x:1000:1001::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:app\nstaff:x:50:app,www\napp:x:1001:\n";

    fn id(uid: u32, gid: u32, extra: &[u32]) -> Identity {
        Identity { uid, gid, additional_gids: extra.to_vec() }
    }

    #[test]
    fn names_and_ids_resolve_as_docker_does() {
        assert_eq!(resolve("", PASSWD, GROUP).unwrap(), id(0, 0, &[]));
        assert_eq!(resolve("app", PASSWD, GROUP).unwrap(), id(1000, 1001, &[33, 50]));
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), id(1000, 1001, &[33, 50]));
        assert_eq!(resolve("1000:1000", PASSWD, GROUP).unwrap(), id(1000, 1000, &[]));
        assert_eq!(resolve("www:staff", PASSWD, GROUP).unwrap(), id(33, 50, &[]));
        assert_eq!(resolve("4242", "", "").unwrap(), id(4242, 0, &[]), "an id needs no entry");
    }

    #[test]
    fn unknown_names_are_errors_that_say_which() {
        assert!(resolve("nobody", PASSWD, GROUP).unwrap_err().contains("\"nobody\""));
        assert!(resolve("app:wheel", PASSWD, GROUP).unwrap_err().contains("\"wheel\""));
    }
}
