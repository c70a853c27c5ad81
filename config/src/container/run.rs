//! `cairn-cloud-config container NAME`: the init service `container-NAME`. It gets the image
//! (imported or pulled, `super`), clears what an earlier run left, starts the container in a
//! sandbox of its own through containerd's CRI, forwards its output, and stays until the
//! container exits (its exit code becomes the service's, so init restarts it per `restart`) or
//! init stops the service (SIGTERM: the container is stopped with its grace). Either way the
//! sandbox is torn down: its network namespace, bridge address and published ports.

use super::health::{Tracker, Verdict};
use super::logs::Follower;
use super::options::{Network, VolumeSource};
use super::{bridge, ports, sandbox};
use crate::cairn::Container;
use crate::cri::{Cri, State};
use cairn_release::container_status::{self, ContainerStatus};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The runner's exit code when it stopped an unhealthy container (restarted by `always` and
/// `on-failure` alike).
const UNHEALTHY: i32 = 70;
/// The sandbox image's id and the `/usr` it was made from (`crate::container::pause`).
const PAUSE_NOTE: &str = "/var/lib/cairn/containers/.pause-image";
/// How often a running container's state and output are looked at.
const POLL: Duration = Duration::from_millis(250);
/// How long an imported image may take to show in CRI (containerd learns of it by an event).
const IMPORT_VISIBLE: Duration = Duration::from_secs(20);

pub fn run(name: &str) -> i32 {
    match run_container(name) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("container {name}: {e}");
            report(name, container_status::State::Failed, e);
            1
        }
    }
}

/// Tells `updatectl status` what the runner is doing (best effort: a status that cannot be
/// written does not stop a container).
fn report(name: &str, state: container_status::State, detail: String) {
    let status = ContainerStatus { name: name.to_string(), state, detail };
    if let Err(e) = status.write(Path::new(container_status::DIR)) {
        eprintln!("container {name}: writing its status: {e}");
    }
}

fn run_container(name: &str) -> Result<i32, String> {
    // SIGTERM and SIGINT are read from a signalfd, between steps: a stop never leaves a
    // sandbox half made. Blocked before any thread starts, so every thread has them blocked.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    let stop = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("a signalfd: {e}"))?;
    let stopped = || matches!(stop.read_signal(), Ok(Some(_)));

    let mut steps = Steps::new();
    let spec = super::load(Path::new(super::SPECS_DIR), name).map_err(|e| e.to_string())?;
    report(name, container_status::State::Pulling, spec.image.clone());
    let mut cri = Cri::connect(Path::new(crate::cri::SOCKET)).map_err(|e| e.to_string())?;
    let image = if super::is_archive(&spec.image) { import_archive(&spec, &mut cri)? } else { pull(&spec, &mut cri)? };
    steps.done("image");
    if stopped() {
        return Ok(0);
    }
    let result = match make_sandbox(&spec, &mut cri, &mut steps) {
        Ok(mut sandbox) if !stopped() => supervise(&spec, &image, &mut sandbox, &mut cri, &stopped, steps),
        // A stop came while it was made.
        Ok(_) => Ok(0),
        Err(e) => Err(e),
    };
    let torn_down = network_lock().and_then(|_network| {
        // Both, whichever fails: no DNAT to an address the next sandbox may get, no sandbox left.
        let withdrawn = ports::withdraw(Path::new(ports::DIR), name);
        let removed = cri.remove_sandboxes(sandbox::LABEL, name, None).map_err(|e| e.to_string());
        withdrawn.and(removed)
    });
    if let Err(e) = torn_down {
        eprintln!("container {name}: tearing its sandbox down: {e}");
    }
    result
}

/// A sandbox this run made: its id, its config and its ports being published.
struct Sandbox {
    id: String,
    config: k8s_cri::v1::PodSandboxConfig,
    publishing: Publishing,
}

/// The pause image, a clean slate on the host and the container's sandbox (its network
/// namespace, address and published ports).
fn make_sandbox(spec: &Container, cri: &mut Cri, steps: &mut Steps) -> Result<Sandbox, String> {
    ensure_pause(cri)?;
    prepare_host(spec)?;
    steps.done("sandbox image and clean-up");
    // A run's id: nanoseconds since the epoch, new at every start.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let config = sandbox::sandbox_config(spec, &run.to_string());
    let rules = match spec.network {
        Network::Bridge => Some(bridge::start(bridge::Base::of_this_host(), network_lock()?)?),
        Network::Host | Network::None => None,
    };
    let made = cri.run_sandbox(&config, sandbox::runtime_handler(spec)).map_err(|e| e.to_string());
    // Whatever became of the sandbox: a load left running could be made again by the next one.
    rules.map_or(Ok(()), bridge::Loading::finish)?;
    let id = made?;
    let publishing = if spec.network == Network::Bridge && !spec.ports.is_empty() {
        Publishing::start(spec, cri.sandbox_ip(&id).map_err(|e| e.to_string())?)?
    } else {
        Publishing(None)
    };
    steps.done("sandbox");
    Ok(Sandbox { id, config, publishing })
}

/// The container's published ports being put in place while the container is made: their
/// rules need only its sandbox's address, and the two take some tenths of a second each under
/// emulation. Waited for before the container is said to run, and in any case before the
/// sandbox is torn down (on drop), so a teardown never comes before the rules it withdraws.
struct Publishing(Option<std::thread::JoinHandle<Result<(), String>>>);

impl Publishing {
    /// DNAT rules from `spec`'s published ports to `address`, its sandbox's.
    fn start(spec: &Container, address: Option<String>) -> Result<Publishing, String> {
        let address: Ipv4Addr = address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("its sandbox has no IPv4 address to publish ports to ({address:?})"))?;
        let (name, list) = (spec.name.clone(), spec.ports.clone());
        let thread = std::thread::spawn(move || {
            let _network = network_lock()?;
            for port in ports::publish(Path::new(ports::DIR), &name, address, &list)? {
                eprintln!("container {name}: {port} not published: the bridge has no IPv6 addresses");
            }
            // The bridge exists once a sandbox is on it; the guard on 127/8 came with the rules.
            bridge::route_localnet()
        });
        Ok(Publishing(Some(thread)))
    }

    /// Waits for the ports (at once if there are none, or they were waited for).
    fn wait(&mut self) -> Result<(), String> {
        match self.0.take() {
            None => Ok(()),
            Some(thread) => thread.join().unwrap_or_else(|_| Err("publishing its ports panicked".into())),
        }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("publishing ports: {e}");
        }
    }
}

/// Named volumes' directories and a fresh log directory.
fn prepare_host(spec: &Container) -> Result<(), String> {
    for v in &spec.volumes {
        if let VolumeSource::Named(_) = v.source {
            let dir = v.host_path();
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating volume {dir}: {e}"))?;
        }
    }
    let logs = sandbox::log_directory(&spec.name);
    let _ = std::fs::remove_dir_all(&logs);
    // Not ready until its health command succeeds in this run.
    let _ = std::fs::remove_file(super::options::ready_socket(&spec.name));
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {logs}: {e}"))
}

/// How long each step of a start took, for the log.
struct Steps {
    last: Instant,
    said: Vec<String>,
}

impl Steps {
    fn new() -> Self {
        Steps { last: Instant::now(), said: Vec::new() }
    }

    /// Notes `what` as the step that ended now.
    fn done(&mut self, what: &str) {
        let now = Instant::now();
        self.said.push(format!("{what} {} ms", (now - self.last).as_millis()));
        self.last = now;
    }
}

/// Runs the container in `sandbox` until it exits (its exit code) or a stop is asked for (0).
/// `steps` holds how long getting the image and the sandbox took, for the log.
fn supervise(
    spec: &Container,
    image: &str,
    made: &mut Sandbox,
    cri: &mut Cri,
    stopped: &dyn Fn() -> bool,
    mut steps: Steps,
) -> Result<i32, String> {
    let name = &spec.name;
    let (sandbox, sandbox_config) = (made.id.as_str(), &made.config);
    let config = sandbox::container_config(spec, image);
    let started = cri.start_container(sandbox, &config, sandbox_config).map_err(|e| e.to_string());
    let published = made.publishing.wait();
    let id = started?;
    published?;
    steps.done("container");
    // What an earlier run left (a crash, a reboot) is removed once this one runs: a sandbox's
    // uid is new for each run, so the two never clash, and the container does not wait for it.
    let left = {
        let _network = network_lock()?;
        cri.remove_sandboxes(sandbox::LABEL, name, Some(sandbox)).map_err(|e| e.to_string())?
    };
    if left > 0 {
        eprintln!("container {name}: removed what an earlier run left");
    }
    let address = cri.sandbox_ip(sandbox).ok().flatten();
    let running = format!("{image}{}", address.map(|a| format!(" at {a}")).unwrap_or_default());
    eprintln!("container {name}: running {running} ({})", steps.said.join(", "));
    report(name, container_status::State::Running, running);
    let mut log = Follower::new(Path::new(&sandbox_config.log_directory).join(sandbox::LOG_FILE));
    let forward = |log: &mut Follower| {
        if let Err(e) = log.forward(&mut std::io::stdout(), &mut std::io::stderr()) {
            eprintln!("container {name}: reading its output: {e}");
        }
    };
    let mut health = spec.health.as_ref().map(|h| (h, Tracker::new(h.retries()), Instant::now()));
    // Held while the container is healthy: init's readiness check connects to it.
    let mut ready: Option<UnixListener> = None;
    loop {
        forward(&mut log);
        if let Some((check, tracker, next)) = &mut health
            && Instant::now() >= *next
        {
            *next = Instant::now() + check.interval();
            let (ok, said) = match cri.exec(&id, &check.command, check.timeout()) {
                Ok((code, said)) => (code == 0, format!("exit code {code}: {said}")),
                Err(e) => (false, e.to_string()),
            };
            match tracker.record(ok) {
                Verdict::Healthy { first: true } => {
                    eprintln!("container {name}: healthy");
                    let path = super::options::ready_socket(name);
                    ready = Some(UnixListener::bind(&path).map_err(|e| format!("listening on {path}: {e}"))?);
                }
                Verdict::Healthy { first: false } => {}
                Verdict::Failing { failures } => {
                    eprintln!("container {name}: health check failed ({failures}): {said}")
                }
                Verdict::Unhealthy => {
                    eprintln!("container {name}: unhealthy ({said}); stopping it");
                    drop(ready.take());
                    cri.stop_container(&id, sandbox::stop_timeout(spec)).map_err(|e| e.to_string())?;
                    forward(&mut log);
                    report(name, container_status::State::Exited, format!("unhealthy: {said}"));
                    return Ok(UNHEALTHY);
                }
            }
        }
        if stopped() {
            let grace = sandbox::stop_timeout(spec);
            eprintln!("container {name}: stopping (grace {grace:?})");
            cri.stop_container(&id, grace).map_err(|e| e.to_string())?;
            forward(&mut log);
            return Ok(0);
        }
        if let State::Exited { code, reason } = cri.container_state(&id).map_err(|e| e.to_string())? {
            forward(&mut log);
            eprintln!("container {name}: exited with code {code} ({reason})");
            report(name, container_status::State::Exited, format!("code {code}, {reason}"));
            return Ok(code);
        }
        std::thread::sleep(POLL);
    }
}

/// Held while a runner changes the packet filter (the bridge's rules, published ports) and while
/// it removes sandboxes (taking their ports down first): iptables over nf_tables refuses a
/// change made beside another ("exit status 4"), so runners that start together take turns.
/// The CNI plugins change no packet filter: sandboxes are made without it.
fn network_lock() -> Result<Flock<std::fs::File>, String> {
    let dir = Path::new(sandbox::LOG_ROOT);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = std::fs::File::create(dir.join(".network.lock")).map_err(|e| format!("the network lock: {e}"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("taking the network lock: {e}"))
}

/// The container's archive, imported into CRI's namespace as `cairn.local/NAME:latest`.
fn import_archive(spec: &Container, cri: &mut Cri) -> Result<String, String> {
    let archive = super::archive(spec, Path::new(super::IMAGES_DIR)).map_err(|e| e.to_string())?;
    let image = super::image_ref(&spec.name);
    ctr_import(&image, &super::import_args(&spec.name, &archive))?;
    visible(cri, &image, |_| true)?;
    Ok(image)
}

/// The container's registry image, pulled by containerd unless the one pinned for this spec is
/// still there.
fn pull(spec: &Container, cri: &mut Cri) -> Result<String, String> {
    let auth = crate::registry::read_auth(Path::new(crate::registry::AUTH_FILE))?;
    let credentials = |registry: &str| auth.get(registry).cloned();
    super::registry_image(spec, credentials, cri, Path::new(super::PULLED_DIR)).map_err(|e| e.to_string())
}

fn ctr_import(image: &str, args: &[String]) -> Result<(), String> {
    match Command::new(super::CTR).args(args).stdout(std::process::Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("importing {image}: ctr {s}")),
        Err(e) => Err(format!("running {}: {e}", super::CTR)),
    }
}

/// Waits until CRI has `image` with an id `ok` accepts.
fn visible(cri: &mut Cri, image: &str, ok: impl Fn(&str) -> bool) -> Result<(), String> {
    let until = Instant::now() + IMPORT_VISIBLE;
    loop {
        if cri.status(image).map_err(|e| e.to_string())?.is_some_and(|i| ok(&i.id)) {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!("containerd's CRI does not show {image} {IMPORT_VISIBLE:?} after its import"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sandbox image made from this OS's `cairn-init` (the pause process as `/pause`), imported
/// unless containerd has it. One runner at a time (they start together): the others find it
/// there. The image's id is noted on ROOT beside the verity root hash of the `/usr` it was made
/// from, so while that `/usr` runs, a start asks containerd once instead of hashing the binary.
fn ensure_pause(cri: &mut Cri) -> Result<(), String> {
    let noted = Path::new(PAUSE_NOTE);
    let usr = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| cairn_release::cmdline::value(&c, cairn_release::cmdline::USR_HASH).map(str::to_string));
    let has = |cri: &mut Cri, id: &str| -> Result<bool, String> {
        Ok(cri.status(super::pause::IMAGE).map_err(|e| e.to_string())?.is_some_and(|i| i.id == id))
    };
    if let (Some(usr), Ok(note)) = (&usr, std::fs::read_to_string(noted))
        && let Some((for_usr, id)) = note.trim().split_once(' ')
        && for_usr == usr
        && has(cri, id)?
    {
        return Ok(());
    }
    let binary = std::fs::read(super::pause::BINARY).map_err(|e| format!("reading {}: {e}", super::pause::BINARY))?;
    let archive = super::pause::archive(&binary).map_err(|e| format!("making the sandbox image: {e}"))?;
    let dir = Path::new(sandbox::LOG_ROOT);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".pause.lock")).map_err(|e| format!("the pause image's lock: {e}"))?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| format!("locking: {e}"))?;
    if !has(cri, &archive.config_digest)? {
        let path = dir.join(".pause.tar");
        std::fs::write(&path, &archive.tar).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let args: Vec<String> = ["--namespace", crate::cri::NAMESPACE, "images", "import"]
            .iter()
            .map(|s| s.to_string())
            .chain([path.display().to_string()])
            .collect();
        let imported = ctr_import(super::pause::IMAGE, &args);
        let _ = std::fs::remove_file(&path);
        imported?;
        visible(cri, super::pause::IMAGE, |id| id == archive.config_digest)?;
    }
    if let Some(usr) = usr {
        let note = format!("{usr} {}\n", archive.config_digest);
        if let Err(e) = noted
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| cairn_release::durable::write_atomic(noted, note.as_bytes(), 0o644))
        {
            eprintln!("noting the sandbox image in {}: {e}", noted.display());
        }
    }
    Ok(())
}
