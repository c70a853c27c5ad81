//! `/etc/passwd`, `/etc/group` and `/etc/shadow` as tables: read, changed in memory, written
//! back whole (the host has no useradd; these files are the whole truth).

use crate::users::User;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The three files; lines that do not parse are kept as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: Vec<PasswdEntry>,
    pub group: Vec<GroupEntry>,
    /// name -> the rest of the shadow line (hash and ageing fields).
    pub shadow: Vec<(String, Vec<String>)>,
}

/// First id for users and groups made from cloud-config (as Debian's adduser), and for
/// `system: true` ones.
const FIRST_ID: u32 = 1000;
const FIRST_SYSTEM_ID: u32 = 100;
pub const DEFAULT_SHELL: &str = "/bin/sh";

impl Accounts {
    pub fn parse(passwd: &str, group: &str, shadow: &str) -> Accounts {
        let fields = |line: &str| line.split(':').map(str::to_string).collect::<Vec<_>>();
        let passwd = passwd
            .lines()
            .filter_map(|l| {
                let f = fields(l);
                if f.len() != 7 {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].clone(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    gecos: f[4].clone(),
                    home: f[5].clone(),
                    shell: f[6].clone(),
                })
            })
            .collect();
        let group = group
            .lines()
            .filter_map(|l| {
                let f = fields(l);
                if f.len() != 4 {
                    return None;
                }
                Some(GroupEntry {
                    name: f[0].clone(),
                    gid: f[2].parse().ok()?,
                    members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
                })
            })
            .collect();
        let shadow = shadow
            .lines()
            .filter_map(|l| {
                let mut f = fields(l);
                (f.len() >= 2).then(|| {
                    let name = f.remove(0);
                    (name, f)
                })
            })
            .collect();
        Accounts { passwd, group, shadow }
    }

    pub fn render(&self) -> (String, String, String) {
        let passwd = self
            .passwd
            .iter()
            .map(|p| format!("{}:x:{}:{}:{}:{}:{}\n", p.name, p.uid, p.gid, p.gecos, p.home, p.shell))
            .collect();
        let group = self.group.iter().map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(","))).collect();
        let shadow = self.shadow.iter().map(|(name, rest)| format!("{name}:{}\n", rest.join(":"))).collect();
        (passwd, group, shadow)
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|p| p.name == name)
    }

    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.group.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    /// The lowest free id at or above `from` among both users and groups (so a user's own
    /// group can share its number).
    fn free_id(&self, from: u32) -> u32 {
        let mut id = from;
        while self.passwd.iter().any(|p| p.uid == id) || self.group.iter().any(|g| g.gid == id) {
            id += 1;
        }
        id
    }

    fn ensure_group(&mut self, name: &str, system: bool) -> u32 {
        if let Some(gid) = self.group_id(name) {
            return gid;
        }
        let gid = self.free_id(if system { FIRST_SYSTEM_ID } else { FIRST_ID });
        self.group.push(GroupEntry { name: name.to_string(), gid, members: Vec::new() });
        gid
    }

    /// Creates `u` or brings an existing account in line with it; returns its entry. Groups
    /// named in `groups` are created if missing. Nothing is ever removed: a user or group
    /// that a later config no longer names stays (its files would otherwise be orphaned).
    pub fn ensure_user(&mut self, u: &User) -> PasswdEntry {
        if self.user(&u.name).is_none() {
            let uid = self.free_id(if u.system { FIRST_SYSTEM_ID } else { FIRST_ID });
            let gid = match (&u.primary_group, u.no_user_group) {
                (Some(g), _) => self.ensure_group(g, u.system),
                (None, true) => self.ensure_group("users", false),
                (None, false) => {
                    // The user's own group, with the user's number when it is free.
                    if self.group_id(&u.name).is_none() && !self.group.iter().any(|g| g.gid == uid) {
                        self.group.push(GroupEntry { name: u.name.clone(), gid: uid, members: Vec::new() });
                    }
                    self.ensure_group(&u.name, u.system)
                }
            };
            self.passwd.push(PasswdEntry {
                name: u.name.clone(),
                uid,
                gid,
                gecos: String::new(),
                home: format!("/home/{}", u.name),
                shell: DEFAULT_SHELL.to_string(),
            });
            // `*`: no password login. Not `!`: dropbear takes that for a locked account and
            // refuses its keys too.
            self.shadow.push((u.name.clone(), ["*", "", "0", "99999", "7", "", "", ""].map(String::from).to_vec()));
        }
        let home = u.homedir.clone();
        let entry = self.passwd.iter_mut().find(|p| p.name == u.name).expect("ensured above");
        if let Some(g) = &u.gecos {
            entry.gecos = g.clone();
        }
        if let Some(h) = home {
            entry.home = h;
        }
        if let Some(s) = &u.shell {
            entry.shell = s.clone();
        }
        let entry = entry.clone();
        if let Some(hash) = &u.passwd {
            match self.shadow.iter_mut().find(|(n, _)| *n == u.name) {
                Some((_, rest)) if !rest.is_empty() => rest[0] = hash.clone(),
                _ => self.shadow.push((
                    u.name.clone(),
                    vec![
                        hash.clone(),
                        String::new(),
                        "0".into(),
                        "99999".into(),
                        "7".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                )),
            }
        }
        for g in &u.groups {
            self.ensure_group(g, false);
            let group = self.group.iter_mut().find(|e| e.name == *g).expect("ensured above");
            if !group.members.contains(&u.name) {
                group.members.push(u.name.clone());
            }
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root\nnogroup:x:65534:\n";
    const SHADOW: &str = "root:*:19000:0:99999:7:::\n";

    #[test]
    fn creates_users_with_their_group_and_is_idempotent() {
        let mut a = Accounts::parse(PASSWD, GROUP, SHADOW);
        let ops = User {
            name: "ops".into(),
            passwd: Some("$6$salt$hash".into()),
            groups: vec!["wheel".into(), "docker".into()],
            ..User::default()
        };
        let e = a.ensure_user(&ops);
        assert_eq!((e.uid, e.gid, e.home.as_str(), e.shell.as_str()), (1000, 1000, "/home/ops", "/bin/sh"));
        assert_eq!(a.group_id("ops"), Some(1000));
        assert_eq!(a.group_id("docker"), Some(1001));
        let once = a.render();
        a.ensure_user(&ops);
        assert_eq!(a.render(), once, "applying again changes nothing");
        let (passwd, group, shadow) = once;
        assert!(passwd.ends_with("ops:x:1000:1000::/home/ops:/bin/sh\n"), "{passwd}");
        assert!(group.contains("wheel:x:10:root,ops\n") && group.contains("docker:x:1001:ops\n"), "{group}");
        assert!(shadow.contains("ops:$6$salt$hash::0:99999:7:::\n"), "{shadow}");
        assert!(shadow.starts_with("root:*:19000:0:99999:7:::\n"), "other lines kept: {shadow}");
    }

    #[test]
    fn system_users_and_explicit_primary_groups() {
        let mut a = Accounts::parse(PASSWD, GROUP, SHADOW);
        let svc = User { name: "svc".into(), system: true, no_user_group: true, ..User::default() };
        let e = a.ensure_user(&svc);
        assert_eq!(e.uid, 100);
        assert_eq!(Some(e.gid), a.group_id("users"));
        let dev = User { name: "dev".into(), primary_group: Some("wheel".into()), ..User::default() };
        assert_eq!(a.ensure_user(&dev).gid, 10);
    }
}
