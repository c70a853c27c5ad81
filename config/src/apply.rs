//! Making a host what its `CloudConfig` says, idempotently: every file is compared first and
//! replaced whole only when it differs (temporary file, fsync, rename), so applying the same
//! document at every boot changes nothing and a crash leaves old or new files, never torn ones.
//! Paths are under `root` (`/` on a host, a temporary directory in tests).

use crate::accounts::Accounts;
use crate::document::CloudConfig;
use crate::rooted::{self, Root, Temp};
use crate::users::DEFAULT_USER;
use cairn_release::service_file::{Ready, Restart, ServiceFile};
use std::path::PathBuf;

/// Services and containers from cloud-config live beside the user's own files, marked so a
/// later config can remove the ones it no longer names without touching the user's.
pub const SERVICES_DIR: &str = "etc/cairn/services";
pub const CONTAINERS_DIR: &str = "etc/cairn/containers";
/// The program that runs a container for init (`cairn-cloud-config container NAME`).
pub const RUN_CONTAINER: &str = "/usr/sbin/cairn-cloud-config";
const MARK: &str = "# Written by cairn from cloud-config; changes are replaced at boot.\n";

#[derive(Debug)]
pub struct ApplyError {
    pub what: String,
    pub error: std::io::Error,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

impl std::error::Error for ApplyError {}

type Result<T> = std::result::Result<T, ApplyError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApplyError {
    let what = what.into();
    move |error| ApplyError { what, error }
}

/// A file written beside its target, waiting for `Host::commit`. Dropped uncommitted (a
/// document that fails part-way: a missing owner, a full disk), its temporary file goes.
struct Staged {
    temp: Temp,
    /// The entry it replaces in its directory, and the whole path (for messages).
    name: String,
    path: String,
}

/// Where a host's files are, and who owns what it writes.
pub struct Host {
    pub root: PathBuf,
    /// Whether to chown what is written (only root can; tests as a user check the rest).
    pub chown: bool,
}

/// `Host` with its root held open: every path below goes through `rooted`, so no link a user
/// planted is followed.
struct Session<'h> {
    host: &'h Host,
    root: Root,
}

fn split(p: &str) -> (&str, &str) {
    let p = p.trim_end_matches('/');
    match p.rsplit_once('/') {
        Some((dir, name)) => (if dir.is_empty() { "/" } else { dir }, name),
        None => ("/", p),
    }
}

impl Session<'_> {
    /// Stages `content` for `p` with exactly `mode` and owner, unless it is already so: a new
    /// file beside it, made durable and renamed by `commit`. `None`: no change.
    fn stage(&self, p: &str, content: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Option<Staged>> {
        let what = || format!("writing {p}");
        if let Some(old) = self.root.read(p).map_err(io(what()))? {
            let same_owner = !self.host.chown || (old.uid == uid && old.gid == gid);
            if old.mode == mode && same_owner && old.content == content {
                return Ok(None);
            }
        }
        let (dir, name) = split(p);
        let dir = self.root.create_dirs(dir, 0o755).map_err(io(what()))?;
        let temp = dir.create_temp(content, mode, self.host.chown.then_some((uid, gid))).map_err(io(what()))?;
        Ok(Some(Staged { temp, name: name.to_string(), path: p.to_string() }))
    }

    /// Makes the staged files durable, renames them into place, and makes that durable: one
    /// `syncfs` per file system before and after instead of two fsyncs per file. A crash
    /// leaves each file old or new (never torn); the next boot's apply finishes the rest.
    fn commit(&self, staged: Vec<Staged>) -> Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        // The directories outlive the staged files (renaming consumes them) for the second sync.
        let dirs: Vec<rooted::Dir> = staged.iter().map(|s| s.temp.dir().clone()).collect();
        let sync = || -> Result<()> {
            let mut devices = std::collections::BTreeSet::new();
            for dir in &dirs {
                if devices.insert(dir.device().map_err(io("syncing"))?) {
                    dir.sync_fs().map_err(io("syncing"))?;
                }
            }
            Ok(())
        };
        sync()?;
        for s in staged {
            s.temp.rename(&s.name).map_err(io(format!("writing {}", s.path)))?;
        }
        sync()
    }

    /// A directory owned by `uid:gid` with `mode`, created if missing (its parents: root's,
    /// 0755). One that exists is left as it is.
    fn owned_dir(&self, p: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let (parent, name) = split(p);
        let parent = self.root.create_dirs(parent, 0o755).map_err(io(format!("creating {p}")))?;
        let (dir, created) = parent.create_dir(name, mode).map_err(io(format!("creating {p}")))?;
        if created {
            dir.set_owner_and_mode(uid, gid, mode, self.host.chown).map_err(io(format!("creating {p}")))?;
        }
        Ok(())
    }

    fn read(&self, p: &str) -> String {
        self.root.read_text(p)
    }

    /// Removes `p` if it is there.
    fn remove(&self, p: &str) -> Result<()> {
        let (dir, name) = split(p);
        match self.root.dir(dir).map_err(io(format!("removing {p}")))? {
            Some(d) => d.remove(name).map_err(io(format!("removing {p}"))),
            None => Ok(()),
        }
    }
}

fn hosts_file(hostname: &str) -> String {
    format!(
        "# Written by cairn from cloud-config (manage_etc_hosts: localhost).\n\
         127.0.0.1 localhost {hostname}\n::1 localhost ip6-localhost ip6-loopback {hostname}\n"
    )
}

/// The init service that runs container `k` (see `crate::container`).
fn container_service(k: &crate::cairn::Container) -> ServiceFile {
    ServiceFile {
        description: Some(format!("container {} ({})", k.name, k.image)),
        command: [RUN_CONTAINER, "container", k.name.as_str()].map(str::to_string).to_vec(),
        after: vec!["containerd".into()],
        restart: Restart::parse(&k.restart),
        // The container's own grace, then time to tear its sandbox down (network, ports).
        stop_timeout: Some(format!("{}s", crate::container::task::stop_timeout(k).as_secs() + 20)),
        // The runner forwards the container's output: bounded on disk by init.
        log_max_bytes: Some(CONTAINER_LOG_MAX_BYTES),
        // A container with a health command counts for the host's readiness once it is healthy
        // (its runner listens then); one without never holds the host back (a pull may fail).
        ready: k.health.as_ref().map(|_| Ready::UnixSocket(crate::container::options::ready_socket(&k.name).into())),
        required: k.health.as_ref().map(|_| true),
        ..ServiceFile::default()
    }
}

/// The most of a container's output init keeps on disk.
const CONTAINER_LOG_MAX_BYTES: u64 = 4 << 20;

/// Removes marked files in `dir` that `keep` does not name.
fn prune(host: &Session, dir: &str, keep: &[String], changed: &mut Vec<String>) -> Result<()> {
    let Some(d) = host.root.dir(dir).map_err(io(format!("reading {dir}")))? else { return Ok(()) };
    for name in d.names().map_err(io(format!("reading {dir}")))? {
        let Some(stem) = name.strip_suffix(".toml") else { continue };
        let ours = d.read(&name).ok().flatten().is_some_and(|f| f.content.starts_with(MARK.as_bytes()));
        if ours && !keep.iter().any(|k| k == stem) {
            d.remove(&name).map_err(io(format!("removing {dir}/{name}")))?;
            changed.push(format!("{dir}/{name} removed"));
        }
    }
    Ok(())
}

/// Removes the `hosts.toml` (and CA) of registries an earlier config wrote and this one does
/// not name; a registry directory the user wrote stays.
fn prune_registries(host: &Session, keep: &[crate::registry::Registry], changed: &mut Vec<String>) -> Result<()> {
    let dir = crate::registry::HOSTS_DIR;
    let Some(d) = host.root.dir(dir).map_err(io(format!("reading {dir}")))? else { return Ok(()) };
    for name in d.names().map_err(io(format!("reading {dir}")))? {
        let hosts = format!("{dir}/{name}/hosts.toml");
        if keep.iter().any(|r| r.host == name) || !host.read(&hosts).starts_with(MARK) {
            continue;
        }
        for file in [hosts, format!("{dir}/{name}/ca.crt")] {
            if !host.read(&file).is_empty() {
                host.remove(&file)?;
                changed.push(format!("{file} removed"));
            }
        }
    }
    Ok(())
}

/// Applies `c` to the host; returns what changed (empty when it already was so).
pub fn apply(c: &CloudConfig, host: &Host) -> Result<Vec<String>> {
    let root = Root::open(&host.root).map_err(io("opening the root"))?;
    let host = &Session { host, root };
    let mut changed = Vec::new();
    let mut staged = Vec::new();
    let mut note = |s: Option<Staged>, what: String| {
        if let Some(s) = s {
            staged.push(s);
            changed.push(what);
        }
    };
    if let Some(h) = &c.hostname {
        note(host.stage("/etc/hostname", format!("{h}\n").as_bytes(), 0o644, 0, 0)?, "/etc/hostname".into());
    }
    if c.manage_etc_hosts {
        let h = c.hostname.clone().unwrap_or_else(|| host.read("/etc/hostname").trim().to_string());
        note(host.stage("/etc/hosts", hosts_file(&h).as_bytes(), 0o644, 0, 0)?, "/etc/hosts".into());
    }

    // Accounts: the default user when it has keys, then the listed users.
    let mut accounts = Accounts::parse(&host.read("/etc/passwd"), &host.read("/etc/group"), &host.read("/etc/shadow"));
    let mut users = Vec::new();
    if !c.ssh_authorized_keys.is_empty() {
        let core = crate::users::User {
            name: DEFAULT_USER.into(),
            ssh_authorized_keys: c.ssh_authorized_keys.clone(),
            ..Default::default()
        };
        users.push(core);
    }
    users.extend(c.users.iter().cloned());
    let mut homes = Vec::new();
    for u in &users {
        let entry = accounts.ensure_user(u);
        homes.push((u, entry));
    }
    let (passwd, group, shadow) = accounts.render();
    note(host.stage("/etc/passwd", passwd.as_bytes(), 0o644, 0, 0)?, "/etc/passwd".into());
    note(host.stage("/etc/group", group.as_bytes(), 0o644, 0, 0)?, "/etc/group".into());
    note(host.stage("/etc/shadow", shadow.as_bytes(), 0o600, 0, 0)?, "/etc/shadow".into());
    for (u, e) in homes {
        if !u.no_create_home {
            host.owned_dir(&e.home, 0o755, e.uid, e.gid)?;
        }
        if !u.ssh_authorized_keys.is_empty() {
            host.owned_dir(&format!("{}/.ssh", e.home), 0o700, e.uid, e.gid)?;
            let keys = u.ssh_authorized_keys.join("\n") + "\n";
            let file = format!("{}/.ssh/authorized_keys", e.home);
            note(host.stage(&file, keys.as_bytes(), 0o600, e.uid, e.gid)?, file);
        }
    }

    for f in &c.write_files {
        let uid = accounts.user(&f.owner).map(|p| p.uid);
        let gid = accounts.group_id(&f.group);
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Err(ApplyError {
                what: format!("write_files {}", f.path),
                error: std::io::Error::other(format!("no user {:?} or group {:?} on this host", f.owner, f.group)),
            });
        };
        note(host.stage(&f.path, &f.content, f.permissions, uid, gid)?, f.path.clone());
    }

    let update_file = cairn_release::update_config::HOST_FILE;
    if let Some(settings) = &c.update {
        let text = format!("{MARK}{}", toml::to_string(settings).expect("update settings serialize"));
        // A token in it is root's alone.
        let secret = settings.enrollment_token.is_some() || settings.lock_token.is_some();
        let mode = if secret { 0o600 } else { 0o644 };
        note(host.stage(update_file, text.as_bytes(), mode, 0, 0)?, update_file.into());
    }
    // Settings an earlier config wrote go with it (after the commit); a file the user wrote stays.
    let drop_update_file = c.update.is_none() && host.read(update_file).starts_with(MARK);

    for s in &c.services {
        let text = format!("{MARK}{}", toml::to_string(&s.file).expect("a service file serializes"));
        let file = format!("/{SERVICES_DIR}/{}.toml", s.name);
        note(host.stage(&file, text.as_bytes(), 0o644, 0, 0)?, file);
    }
    let mut services: Vec<String> = c.services.iter().map(|s| s.name.clone()).collect();
    for k in &c.containers {
        let text = format!("{MARK}{}", toml::to_string(k).expect("a container serializes"));
        let file = format!("/{CONTAINERS_DIR}/{}.toml", k.name);
        note(host.stage(&file, text.as_bytes(), 0o644, 0, 0)?, file);
        let name = crate::cairn::container_service(&k.name);
        let text = format!("{MARK}{}", toml::to_string(&container_service(k)).expect("a service file serializes"));
        let file = format!("/{SERVICES_DIR}/{name}.toml");
        note(host.stage(&file, text.as_bytes(), 0o644, 0, 0)?, file);
        services.push(name);
    }
    for r in &c.registries {
        let file = format!("{}/{}/hosts.toml", crate::registry::HOSTS_DIR, r.host);
        note(host.stage(&file, crate::registry::hosts_toml(r, MARK).as_bytes(), 0o644, 0, 0)?, file);
        if let Some(pem) = &r.ca {
            let file = crate::registry::ca_path(r);
            note(host.stage(&file, pem.as_bytes(), 0o644, 0, 0)?, file);
        }
    }
    // Credentials are root's alone; the file goes when no registry has any.
    let auth_file = crate::registry::AUTH_FILE;
    let auth = crate::registry::auth_file(&c.registries, MARK);
    if let Some(text) = &auth {
        note(host.stage(auth_file, text.as_bytes(), 0o600, 0, 0)?, auth_file.into());
    }
    let drop_auth_file = auth.is_none() && host.read(auth_file).starts_with(MARK);
    let ntp_file = crate::ntp::CONFIG_SOURCES;
    if let Some(ntp) = &c.ntp {
        note(host.stage(ntp_file, crate::ntp::config_sources(ntp, MARK).as_bytes(), 0o644, 0, 0)?, ntp_file.into());
    }
    let drop_ntp_file = c.ntp.is_none() && host.read(ntp_file).starts_with(MARK);
    // The network file is cloud-config's alone (cairn.network is how a user sets it).
    let network_file = crate::network::CONFIG_FILE;
    if let Some(net) = &c.network {
        let text = serde_json::to_vec_pretty(net).expect("network settings serialize");
        note(host.stage(network_file, &text, 0o644, 0, 0)?, network_file.into());
    }
    let drop_network_file = c.network.is_none() && !host.read(network_file).is_empty();
    let containers: Vec<String> = c.containers.iter().map(|k| k.name.clone()).collect();
    host.commit(staged)?;
    if drop_auth_file {
        host.remove(auth_file)?;
        changed.push(format!("{auth_file} removed"));
    }
    prune_registries(host, &c.registries, &mut changed)?;
    if drop_network_file {
        host.remove(network_file)?;
        changed.push(format!("{network_file} removed"));
    }
    if drop_ntp_file {
        host.remove(ntp_file)?;
        changed.push(format!("{ntp_file} removed"));
    }
    if drop_update_file {
        host.remove(update_file)?;
        changed.push(format!("{update_file} removed"));
    }
    prune(host, SERVICES_DIR, &services, &mut changed)?;
    prune(host, CONTAINERS_DIR, &containers, &mut changed)?;
    Ok(changed)
}

/// A scratch host for tests: a temporary root with only `root` in its account files; owners
/// are set when the tests run as root.
#[cfg(test)]
pub(crate) mod testing {
    use super::Host;

    pub fn host() -> (tempfile::TempDir, Host) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(t.path().join("etc/group"), "root:x:0:\n").unwrap();
        let chown = nix::unistd::geteuid().is_root();
        let h = Host { root: t.path().to_path_buf(), chown };
        (t, h)
    }
}

#[cfg(test)]
mod attacks;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Parsed, parse};
    use std::os::unix::fs::PermissionsExt;

    fn config(text: &str) -> CloudConfig {
        match parse(text.as_bytes()) {
            Parsed::Config(c, _) => *c,
            other => panic!("{other:?}"),
        }
    }

    use crate::apply::testing::host;

    const DOC: &str = "#cloud-config
hostname: node-1
manage_etc_hosts: localhost
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 core@example
users:
  - name: ops
    groups: [wheel]
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example]
write_files:
  - path: /etc/app/config
    permissions: \"0640\"
    owner: ops:wheel
    content: |
      key=value
cairn:
  update: {strategy: off}
  services:
    - {name: hello, command: [/bin/busybox, sleep, \"1000\"]}
";

    #[test]
    fn applies_everything_then_nothing_the_second_time() {
        let (t, h) = host();
        let changed = apply(&config(DOC), &h).unwrap();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "node-1\n");
        assert!(read("etc/hosts").contains("127.0.0.1 localhost node-1"));
        assert!(read("etc/passwd").contains("core:x:1000:1000::/home/core:/bin/sh"), "{}", read("etc/passwd"));
        assert!(read("etc/passwd").contains("ops:x:1001:1001::/home/ops:/bin/sh"));
        assert!(read("home/ops/.ssh/authorized_keys").contains("ops@example"));
        assert!(read("home/core/.ssh/authorized_keys").contains("core@example"));
        assert_eq!(read("etc/app/config"), "key=value\n");
        let mode = |p: &str| std::fs::metadata(t.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("etc/app/config"), mode("etc/shadow"), mode("home/ops/.ssh")), (0o640, 0o600, 0o700));
        // Owners are part of what apply does: checking them needs root (CI runs as root).
        assert!(h.chown, "this test checks file owners and must run as root");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(t.path().join("etc/app/config")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1001, 1002), "ops:wheel (wheel created as 1002)");
        let keys = std::fs::metadata(t.path().join("home/ops/.ssh/authorized_keys")).unwrap();
        assert_eq!((keys.uid(), keys.gid()), (1001, 1001), "ops's own keys file");
        assert!(read("etc/cairn/update.toml").contains("strategy = \"off\""));
        assert!(read("etc/cairn/services/hello.toml").contains("command = [\"/bin/busybox\", \"sleep\", \"1000\"]"));
        // What init reads: the one service-file format, with nothing unknown in it.
        let hello: ServiceFile = toml::from_str(&read("etc/cairn/services/hello.toml")).unwrap();
        assert_eq!(hello.command, ["/bin/busybox", "sleep", "1000"]);
        assert!(changed.len() >= 9, "{changed:?}");
        assert_eq!(apply(&config(DOC), &h).unwrap(), Vec::<String>::new(), "the second time changes nothing");
    }

    #[test]
    fn a_document_that_fails_part_way_changes_nothing() {
        let (t, h) = host();
        apply(&config(DOC), &h).unwrap();
        let before = |p: &str| std::fs::read(t.path().join(p)).unwrap();
        let (hostname, update) = (before("etc/hostname"), before("etc/cairn/update.toml"));
        // A new hostname and no update settings, then a file for an owner the host lacks.
        let failing =
            "#cloud-config\nhostname: other\nwrite_files:\n  - {path: /etc/x, owner: nobody-here, content: x}\n";
        let err = apply(&config(failing), &h).unwrap_err();
        assert!(err.to_string().contains("nobody-here"), "{err}");
        assert_eq!(before("etc/hostname"), hostname);
        assert_eq!(before("etc/cairn/update.toml"), update, "not removed before the commit");
        let leftovers: Vec<_> = std::fs::read_dir(t.path().join("etc"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".cairn-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// Update settings holding a token are root's alone; without one, readable as before.
    #[test]
    fn update_settings_with_a_token_are_written_root_only() {
        let (t, h) = host();
        let with_token =
            "#cloud-config\ncairn:\n  update: {server: \"https://u.example\", enrollment_token: cairn_secret}\n";
        apply(&config(with_token), &h).unwrap();
        let mode = || std::fs::metadata(t.path().join("etc/cairn/update.toml")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        assert!(std::fs::read_to_string(t.path().join("etc/cairn/update.toml")).unwrap().contains("cairn_secret"));
        apply(&config("#cloud-config\ncairn:\n  update: {server: \"https://u.example\"}\n"), &h).unwrap();
        assert_eq!(mode(), 0o644);
    }

    #[test]
    fn registries_become_hosts_files_and_root_only_credentials_and_go_with_the_config() {
        let (t, h) = host();
        let doc = "#cloud-config\ncairn:\n  registries:\n    \"10.0.2.2:5000\": {insecure: true}\n    \
                   registry.example.com: {username: bot, password: hunter2}\n";
        let changed = apply(&config(doc), &h).unwrap();
        assert!(changed.iter().any(|c| c == "/etc/containerd/certs.d/10.0.2.2:5000/hosts.toml"), "{changed:?}");
        let hosts = std::fs::read_to_string(t.path().join("etc/containerd/certs.d/10.0.2.2:5000/hosts.toml")).unwrap();
        assert!(hosts.contains("server = \"http://10.0.2.2:5000\""), "{hosts}");
        let auth = t.path().join("etc/cairn/registry-auth.toml");
        assert_eq!(std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&auth).unwrap().contains("hunter2"));
        assert!(!hosts.contains("hunter2"), "no secret in a world-readable file");
        // The user's own registry directory stays; the config's go with it.
        std::fs::create_dir_all(t.path().join("etc/containerd/certs.d/mine.example")).unwrap();
        std::fs::write(t.path().join("etc/containerd/certs.d/mine.example/hosts.toml"), "server = \"x\"\n").unwrap();
        let changed = apply(&config("#cloud-config\nhostname: n\n"), &h).unwrap();
        assert!(changed.contains(&"/etc/cairn/registry-auth.toml removed".to_string()), "{changed:?}");
        assert!(!auth.exists());
        assert!(!t.path().join("etc/containerd/certs.d/10.0.2.2:5000/hosts.toml").exists());
        assert!(t.path().join("etc/containerd/certs.d/mine.example/hosts.toml").exists());
    }

    #[test]
    fn services_a_later_config_drops_are_removed_but_the_users_own_stay() {
        let (t, h) = host();
        apply(&config(DOC), &h).unwrap();
        std::fs::write(t.path().join("etc/cairn/services/mine.toml"), "command = [\"/bin/true\"]\n").unwrap();
        let changed = apply(&config("#cloud-config\nhostname: node-1\n"), &h).unwrap();
        assert_eq!(changed, ["/etc/cairn/update.toml removed", "etc/cairn/services/hello.toml removed"]);
        assert!(t.path().join("etc/cairn/services/mine.toml").exists());
    }
}
