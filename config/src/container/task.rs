//! One run of a container as a containerd container and task: a snapshot on the image's
//! layers, the OCI spec (`super::spec`), the task made by containerd's runc shim (crun) with
//! its output on FIFOs the runner forwards, health commands run in it, and its teardown, also
//! of what an earlier run left.

use super::options::Network;
use super::passwd::{self, Identity};
use super::seccomp;
use super::spec::{self, EtcFiles, Parts};
use crate::cairn::Container;
use crate::containerd::{Containerd, State};
use crate::cri::Runnable;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The label on each container's containerd container that names its Cairn container: how a
/// runner finds what an earlier run of the same container left.
pub const LABEL: &str = "io.cairn.container";
/// Its network namespace, and its network setting: what a teardown releases.
const NETNS_LABEL: &str = "io.cairn.netns";
const NETWORK_LABEL: &str = "io.cairn.network";
/// Each container's files of a run (tmpfs): its resolv.conf, hosts and hostname, its output's
/// FIFOs, a health command's output.
pub const RUN_ROOT: &str = "/run/cairn/containers";
/// The seccomp profile containers run under: Docker's default (docs/security.md).
pub const SECCOMP_PROFILE: &str = "/usr/share/cairn/seccomp/default.json";
/// How long a container has after SIGTERM, unless its spec says.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed task may take to be seen stopped.
const KILLED: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// How long a lease outlives a runner that died holding it.
const LEASE_EXPIRY: Duration = Duration::from_secs(600);

pub fn stop_timeout(c: &Container) -> Duration {
    c.stop_timeout.as_deref().and_then(|t| cairn_release::duration::parse(t).ok()).unwrap_or(DEFAULT_STOP_TIMEOUT)
}

pub fn run_dir(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(name)
}

/// A run of container `name`: its id (containerd's container, snapshot and CNI id) and
/// network namespace.
pub struct Run {
    pub id: String,
    pub netns: Option<PathBuf>,
}

/// Waits until `id`'s task (or process `exec_id`) has stopped: its exit code, or `None` when
/// `within` passed first.
fn wait_stopped(ctd: &mut Containerd, id: &str, exec_id: &str, within: Duration) -> Result<Option<u32>, String> {
    let until = Instant::now() + within;
    loop {
        match ctd.state(id, exec_id) {
            Ok(State::Stopped { code }) => return Ok(Some(code)),
            Err(e) if e.code == tonic::Code::NotFound => return Ok(Some(0)),
            Err(e) => return Err(e.to_string()),
            Ok(_) if Instant::now() >= until => return Ok(None),
            Ok(_) => std::thread::sleep(POLL),
        }
    }
}

/// `result`, with containerd's "not found" taken as done.
fn gone_is_fine(result: Result<(), crate::containerd::Error>) -> Result<(), String> {
    match result {
        Err(e) if e.code != tonic::Code::NotFound => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// Who the process runs as: its user setting (or the image's) resolved against the image's
/// `/etc/passwd` and `/etc/group`, read from the layers with no link followed.
fn identity(
    c: &Container,
    runnable: &Runnable,
    rootfs: &[containerd_client::types::Mount],
) -> Result<Identity, String> {
    let user = spec::user(c, &runnable.config);
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|ch| ch.is_ascii_digit());
    // `UID:GID` needs no file; a name, or a uid's group and groups, does.
    let needs_files = !user.split_once(':').is_some_and(|(u, g)| numeric(u) && numeric(g));
    let (passwd_text, group_text) = if needs_files {
        (image_file(rootfs, "etc/passwd"), image_file(rootfs, "etc/group"))
    } else {
        Default::default()
    };
    passwd::resolve(&user, &passwd_text, &group_text).map_err(|e| format!("container {}: {e}", c.name))
}

/// A file of the image (topmost layer first), empty when no layer has it as a regular file.
fn image_file(rootfs: &[containerd_client::types::Mount], path: &str) -> String {
    let mut dirs: Vec<String> = Vec::new();
    for m in rootfs {
        if m.r#type == "bind" {
            dirs.push(m.source.clone());
        }
        for option in &m.options {
            if let Some(upper) = option.strip_prefix("upperdir=") {
                dirs.insert(0, upper.to_string());
            } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                dirs.extend(lower.split(':').map(str::to_string));
            }
        }
    }
    dirs.iter()
        .filter_map(|d| crate::rooted::Root::open(Path::new(d)).ok())
        .map(|root| root.read_text(path))
        .find(|text| !text.is_empty())
        .unwrap_or_default()
}

/// The container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, written in `dir`.
fn etc_files(c: &Container, dir: &Path) -> Result<EtcFiles, String> {
    let write = |name: &str, content: &[u8]| -> Result<String, String> {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path.display().to_string())
    };
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    let hosts = match c.network {
        Network::Host => std::fs::read("/etc/hosts").unwrap_or_default(),
        _ => format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n", c.name)
            .into_bytes(),
    };
    Ok(EtcFiles {
        resolv_conf: write("resolv.conf", &resolv)?,
        hosts: write("hosts", &hosts)?,
        hostname: write("hostname", format!("{}\n", c.name).as_bytes())?,
    })
}

/// The seccomp filter for containers with the default capabilities on this machine.
fn seccomp_filter() -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(SECCOMP_PROFILE).map_err(|e| format!("reading {SECCOMP_PROFILE}: {e}"))?;
    let profile: seccomp::Profile = serde_json::from_str(&text).map_err(|e| format!("{SECCOMP_PROFILE}: {e}"))?;
    let uname = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?;
    let release = uname.release().to_string_lossy().to_string();
    let kernel = seccomp::kernel_version(&release).ok_or_else(|| format!("kernel release {release:?}"))?;
    let caps = spec::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    seccomp::for_container(&profile, &seccomp::Target { arch, kernel, caps: &caps })
}

/// Copies what the container writes on the FIFO at `fifo` to the runner's stdout or stderr (init's
/// log), a line at a time. Says on `opened` when both ends are open (the shim opens the other
/// when it creates the task) and on `done` at its end (the shim closes it when the task goes).
fn forward(fifo: PathBuf, to_stderr: bool, opened: mpsc::Sender<()>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        if let Ok(file) = std::fs::File::open(&fifo) {
            let _ = opened.send(());
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = if to_stderr { std::io::stderr().write_all(&line) } else { std::io::stdout().write_all(&line) };
                line.clear();
            }
        }
        let _ = done.send(());
    });
}

/// The output being forwarded: waited for (briefly) once the task is gone.
pub struct Output(mpsc::Receiver<()>);

impl Output {
    pub fn drain(&self) {
        for _ in 0..2 {
            if self.0.recv_timeout(Duration::from_secs(2)).is_err() {
                return;
            }
        }
    }
}

/// The made container: its spec, for health commands.
pub struct Made {
    pub spec: serde_json::Value,
    pub output: Output,
    dir: PathBuf,
}

/// Makes run `run` of container `c` from `image`: its snapshot, container and task (created, not
/// started: `start`).
pub fn create(
    ctd: &mut Containerd,
    run: &Run,
    c: &Container,
    image: &str,
    runnable: &Runnable,
) -> Result<Made, String> {
    let dir = run_dir(&c.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // The snapshot is held by a lease until the container refers to it: containerd's garbage
    // collector, which a pull's end sets off, would otherwise take it in between.
    ctd.create_lease(&run.id, LEASE_EXPIRY).map_err(|e| e.to_string())?;
    let made = make_container(ctd, run, c, image, runnable, &dir);
    if let Err(e) = ctd.delete_lease(&run.id) {
        eprintln!("container {}: deleting lease {}: {e}", c.name, run.id);
    }
    let (oci, rootfs) = made?;
    let (stdout, stderr) = (dir.join(format!("{}.out", run.id)), dir.join(format!("{}.err", run.id)));
    let (done, output) = mpsc::channel();
    let (opened, open) = mpsc::channel();
    for (fifo, to_stderr) in [(&stdout, false), (&stderr, true)] {
        let _ = std::fs::remove_file(fifo);
        nix::unistd::mkfifo(fifo.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("making {}: {e}", fifo.display()))?;
        forward(fifo.clone(), to_stderr, opened.clone(), done.clone());
    }
    ctd.create_task(&run.id, rootfs, &stdout, &stderr).map_err(|e| e.to_string())?;
    // Open at both ends, the FIFOs need no name: none is left where a `grep -r` would wait on it.
    for _ in 0..2 {
        let _ = open.recv_timeout(Duration::from_secs(10));
    }
    for fifo in [&stdout, &stderr] {
        let _ = std::fs::remove_file(fifo);
    }
    Ok(Made { spec: oci, output: Output(output), dir })
}

/// The snapshot and the container of run `run`: its spec and root file system's mounts.
fn make_container(
    ctd: &mut Containerd,
    run: &Run,
    c: &Container,
    image: &str,
    runnable: &Runnable,
    dir: &Path,
) -> Result<(serde_json::Value, Vec<containerd_client::types::Mount>), String> {
    let rootfs = ctd.prepare_snapshot(&run.id, &runnable.chain_id, &run.id).map_err(|e| e.to_string())?;
    let identity = identity(c, runnable, &rootfs)?;
    let etc = etc_files(c, dir)?;
    let parts = Parts {
        image: &runnable.config,
        identity: &identity,
        netns: run.netns.as_deref().and_then(Path::to_str),
        etc: &etc,
        seccomp: seccomp_filter()?,
        cgroups_path: format!("/cairn/{}", run.id),
    };
    let oci = spec::spec(c, &parts)?;
    let mut labels = HashMap::from([
        (LABEL.to_string(), c.name.clone()),
        (NETWORK_LABEL.to_string(), format!("{:?}", c.network).to_lowercase()),
    ]);
    if let Some(netns) = &run.netns {
        labels.insert(NETNS_LABEL.to_string(), netns.display().to_string());
    }
    ctd.create_container(&run.id, image, &oci, labels).map_err(|e| e.to_string())?;
    Ok((oci, rootfs))
}

/// How a stopped task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within its grace, with this code (143 when SIGTERM ended it).
    Exited(u32),
    /// It outlived its grace and was killed.
    Killed,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Exited(code) => write!(f, "exited with code {code}"),
            Stopped::Killed => write!(f, "still running after its grace: killed"),
        }
    }
}

/// Stops `id`'s task: SIGTERM to its process, SIGKILL to all of them after `grace`.
pub fn stop(ctd: &mut Containerd, id: &str, grace: Duration) -> Result<Stopped, String> {
    gone_is_fine(ctd.kill(id, "", Signal::SIGTERM, false))?;
    if let Some(code) = wait_stopped(ctd, id, "", grace)? {
        return Ok(Stopped::Exited(code));
    }
    gone_is_fine(ctd.kill(id, "", Signal::SIGKILL, true))?;
    wait_stopped(ctd, id, "", KILLED)?.ok_or_else(|| format!("{id}: still running {KILLED:?} after SIGKILL"))?;
    Ok(Stopped::Killed)
}

/// Removes run `id` whole: its task (killed if it runs), container, snapshot and network.
pub fn teardown(ctd: &mut Containerd, id: &str, netns: Option<&Path>, network: Network) -> Result<(), String> {
    let mut failed = Vec::new();
    let mut step = |r: Result<(), String>| {
        if let Err(e) = r {
            failed.push(e);
        }
    };
    if !matches!(ctd.state(id, ""), Ok(State::Stopped { .. }) | Err(_)) {
        step(gone_is_fine(ctd.kill(id, "", Signal::SIGKILL, true)));
        step(wait_stopped(ctd, id, "", KILLED).map(drop));
    }
    step(gone_is_fine(ctd.delete_task(id)));
    step(gone_is_fine(ctd.delete_container(id)));
    step(gone_is_fine(ctd.remove_snapshot(id)));
    if let Some(netns) = netns {
        step(super::network::remove(id, netns, network));
    }
    if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
}

/// Removes what earlier runs of container `name` left (all but run `keep`): how many.
pub fn remove_earlier(ctd: &mut Containerd, name: &str, keep: &str) -> Result<usize, String> {
    let earlier: Vec<_> = ctd
        .containers_labelled(LABEL, name)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(id, _)| id != keep)
        .collect();
    for (id, labels) in &earlier {
        let netns = labels.get(NETNS_LABEL).map(PathBuf::from);
        let network = labels.get(NETWORK_LABEL).and_then(|n| Network::parse(n)).unwrap_or_default();
        teardown(ctd, id, netns.as_deref(), network)?;
    }
    Ok(earlier.len())
}

/// Runs `command` in `id`'s task as its process (`made.spec`), waiting up to `timeout`: its exit
/// code and the end of its output.
pub fn exec(
    ctd: &mut Containerd,
    id: &str,
    made: &Made,
    n: u64,
    command: &[String],
    timeout: Duration,
) -> Result<(i32, String), String> {
    let exec_id = format!("health-{n}");
    let output = made.dir.join("health.out");
    let _ = std::fs::remove_file(&output);
    let process = spec::exec_process(&made.spec, command);
    ctd.exec(id, &exec_id, &process, &output).map_err(|e| e.to_string())?;
    let waited =
        ctd.start(id, &exec_id).map_err(|e| e.to_string()).and_then(|_| wait_stopped(ctd, id, &exec_id, timeout));
    if !matches!(waited, Ok(Some(_))) {
        let _ = ctd.kill(id, &exec_id, Signal::SIGKILL, false);
        let _ = wait_stopped(ctd, id, &exec_id, KILLED);
    }
    let _ = ctd.delete_process(id, &exec_id);
    let said = std::fs::read(&output).unwrap_or_default();
    let _ = std::fs::remove_file(&output);
    let tail = String::from_utf8_lossy(&said[said.len().saturating_sub(512)..]).trim().to_string();
    match waited? {
        Some(code) => Ok((code as i32, tail)),
        None => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_client::types::Mount;

    fn overlay(upper: &Path, lower: &[&Path]) -> Mount {
        let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lower.join(":")),
            ],
            ..Mount::default()
        }
    }

    #[test]
    fn an_image_file_is_read_from_the_topmost_layer_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let (upper, top, base) = (t.path().join("upper"), t.path().join("top"), t.path().join("base"));
        for d in [&upper, &top, &base] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(base.join("etc/passwd"), "base\n").unwrap();
        std::fs::write(top.join("etc/passwd"), "top\n").unwrap();
        let rootfs = [overlay(&upper, &[&top, &base])];
        assert_eq!(image_file(&rootfs, "etc/passwd"), "top\n");
        assert_eq!(image_file(&rootfs, "etc/group"), "", "no layer has it");
        // A link in a layer (to the host's files, as seen from the runner) is never followed.
        let secret = t.path().join("secret");
        std::fs::write(&secret, "host\n").unwrap();
        std::fs::remove_file(top.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(&secret, top.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(&secret, upper.join("etc/group")).unwrap();
        assert_eq!(image_file(&rootfs, "etc/passwd"), "base\n");
        assert_eq!(image_file(&rootfs, "etc/group"), "");
        let bind = Mount { r#type: "bind".into(), source: base.display().to_string(), ..Mount::default() };
        assert_eq!(image_file(&[bind], "etc/passwd"), "base\n");
    }
}
