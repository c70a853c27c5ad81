//! Starting a service's process: its own session, the service's user and groups, a clean
//! signal mask, stdout and stderr into a pipe that init drains (or a terminal), a plain
//! environment.

use super::spec::ServiceSpec;
use super::supervisor::{Spawner, Started};
use nix::fcntl::OFlag;
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A user from /etc/passwd (read directly: the static init has no NSS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

pub fn lookup_user(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || (f[0] != name && f[2] != name) {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        })
    })
}

/// Supplementary groups of `user` from /etc/group.
pub fn groups_of(group_file: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut gids = vec![primary];
    for l in group_file.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4
            && f[3].split(',').any(|m| m == user)
            && let Ok(g) = f[2].parse()
            && !gids.contains(&g)
        {
            gids.push(g);
        }
    }
    gids
}

pub struct ProcessSpawner;

impl Spawner for ProcessSpawner {
    fn spawn(&mut self, spec: &ServiceSpec) -> Result<Started, String> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let user =
            lookup_user(&passwd, &spec.user).ok_or_else(|| format!("user {} is not in /etc/passwd", spec.user))?;
        let groups = groups_of(&std::fs::read_to_string("/etc/group").unwrap_or_default(), &user.name, user.gid);

        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .envs(&spec.environment)
            .current_dir(&spec.working_directory);

        let mut output = None;
        let tty_fd = match &spec.tty {
            Some(tty) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(tty)
                    .map_err(|e| format!("opening {}: {e}", tty.display()))?;
                cmd.stdin(f.try_clone().map_err(|e| e.to_string())?);
                cmd.stdout(f.try_clone().map_err(|e| e.to_string())?);
                cmd.stderr(f.try_clone().map_err(|e| e.to_string())?);
                cmd.env("TERM", "vt100");
                Some(f)
            }
            None => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
                nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                    .map_err(|e| format!("pipe: {e}"))?;
                let write2: OwnedFd = write.try_clone().map_err(|e| e.to_string())?;
                cmd.stdin(Stdio::null()).stdout(Stdio::from(write)).stderr(Stdio::from(write2));
                output = Some(read);
                None
            }
        };
        let with_tty = tty_fd.is_some();
        let (uid, gid) = (user.uid, user.gid);
        #[allow(unsafe_code)]
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if with_tty && libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0 || libc::setgid(gid) < 0 || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", spec.command[0]))?;
        // The Child handle is dropped: init reaps through SIGCHLD, not through std.
        let pid = Pid::from_raw(child.id() as i32);
        drop(child);
        drop(tty_fd);
        Ok(Started { pid, output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:Core:/home/core:/bin/sh\n";

    #[test]
    fn users_by_name_or_uid() {
        assert_eq!(lookup_user(PASSWD, "core").unwrap().uid, 500);
        assert_eq!(lookup_user(PASSWD, "0").unwrap().name, "root");
        assert!(lookup_user(PASSWD, "nobody").is_none());
    }

    #[test]
    fn supplementary_groups() {
        let g = "root:x:0:\ndocker:x:998:core,other\nwheel:x:10:core\n";
        assert_eq!(groups_of(g, "core", 500), vec![500, 998, 10]);
        assert_eq!(groups_of(g, "root", 0), vec![0]);
    }
}
