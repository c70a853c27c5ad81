//! `cairn-cloud-config container NAME`: the init service `container-NAME`. It gets the image
//! (imported or pulled, `super`), makes the container as a containerd task in a network
//! namespace of its own (`task`, `network`: no CRI sandbox, no pause process), forwards its
//! output, and stays until the container exits (its exit code becomes the service's, so init
//! restarts it per `restart`) or init stops the service (SIGTERM: the container is stopped with
//! its grace). Either way the run is torn down: its task, network namespace, bridge address and
//! published ports; and what an earlier run left, once this one runs.

use super::health::{Tracker, Verdict};
use super::options::{Network, VolumeSource};
use super::{netns, network, ports, task};
use crate::cairn::Container;
use crate::containerd::{self, Containerd};
use crate::cri::{Cri, Runnable};
use cairn_release::container_status::{self, ContainerStatus};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The runner's exit code when it stopped an unhealthy container (restarted by `always` and
/// `on-failure` alike).
const UNHEALTHY: i32 = 70;
/// How often a running container's state is looked at.
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
    // container half made. Blocked before any thread starts, so every thread has them blocked.
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
    let runnable = cri.runnable(&image).map_err(|e| e.to_string())?;
    steps.done("image");
    if stopped() {
        return Ok(0);
    }
    prepare_host(&spec)?;
    let mut ctd = Containerd::connect(Path::new(crate::cri::SOCKET)).map_err(|e| e.to_string())?;
    // A run's id: the name and nanoseconds since the epoch, new at every start.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let run = task::Run {
        id: format!("{name}-{nanos}"),
        netns: match spec.network {
            Network::Host => None,
            Network::Bridge | Network::None => Some(netns::create(&format!("{name}-{nanos}"))?),
        },
    };
    let result = start_and_supervise(&spec, &image, &runnable, &run, &mut ctd, &stopped, steps);
    // Its ports first: no DNAT to an address the next container may get.
    let withdrawn = network::lock().and_then(|_network| ports::withdraw(Path::new(ports::DIR), name));
    let torn_down = task::teardown(&mut ctd, &run.id, run.netns.as_deref(), spec.network);
    if let Err(e) = withdrawn.and(torn_down) {
        eprintln!("container {name}: tearing it down: {e}");
    }
    result
}

/// Makes run `run` of container `spec` and runs it until it exits (its exit code) or a stop is
/// asked for (0). `steps` holds how long getting the image took, for the log.
fn start_and_supervise(
    spec: &Container,
    image: &str,
    runnable: &Runnable,
    run: &task::Run,
    ctd: &mut Containerd,
    stopped: &dyn Fn() -> bool,
    mut steps: Steps,
) -> Result<i32, String> {
    let name = &spec.name;
    // The network is made while containerd makes the task in its namespace.
    let mut setup = run.netns.clone().map(|netns| network::start(spec, &run.id, netns));
    let made = task::create(ctd, run, spec, image, runnable);
    let address = setup.as_mut().map_or(Ok(None), network::Setup::wait);
    let made = made?;
    let address = address?;
    if stopped() {
        return Ok(0);
    }
    ctd.start(&run.id, "").map_err(|e| e.to_string())?;
    steps.done("container");
    // What an earlier run left (a crash, a reboot) is removed once this one runs: a run's id is
    // new each time, so the two never clash, and the container does not wait for it.
    match task::remove_earlier(ctd, name, &run.id) {
        Ok(0) => {}
        Ok(_) => eprintln!("container {name}: removed what an earlier run left"),
        Err(e) => eprintln!("container {name}: removing what an earlier run left: {e}"),
    }
    let running = format!("{image}{}", address.map(|a| format!(" at {a}")).unwrap_or_default());
    eprintln!("container {name}: running {running} ({})", steps.said.join(", "));
    report(name, container_status::State::Running, running);
    let result = supervise(spec, &run.id, &made, ctd, stopped);
    if result.is_err() {
        let _ = task::stop(ctd, &run.id, task::stop_timeout(spec));
    }
    let _ = ctd.delete_task(&run.id);
    made.output.drain();
    result
}

/// Watches the running task `id`: its health, a stop asked for, its exit.
fn supervise(
    spec: &Container,
    id: &str,
    made: &task::Made,
    ctd: &mut Containerd,
    stopped: &dyn Fn() -> bool,
) -> Result<i32, String> {
    let name = &spec.name;
    let mut health = spec.health.as_ref().map(|h| (h, Tracker::new(h.retries()), Instant::now()));
    // Held while the container is healthy: init's readiness check connects to it.
    let mut ready: Option<UnixListener> = None;
    let mut checks = 0;
    loop {
        if let Some((check, tracker, next)) = &mut health
            && Instant::now() >= *next
        {
            checks += 1;
            let (ok, said) = match task::exec(ctd, id, made, checks, &check.command, check.timeout()) {
                Ok((code, said)) => (code == 0, format!("exit code {code}: {said}")),
                Err(e) => (false, e),
            };
            *next = Instant::now() + check.interval();
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
                    let how = task::stop(ctd, id, task::stop_timeout(spec))?;
                    eprintln!("container {name}: stopped: {how}");
                    report(name, container_status::State::Exited, format!("unhealthy: {said}"));
                    return Ok(UNHEALTHY);
                }
            }
        }
        if stopped() {
            let grace = task::stop_timeout(spec);
            eprintln!("container {name}: stopping (grace {grace:?})");
            let how = task::stop(ctd, id, grace)?;
            eprintln!("container {name}: stopped: {how}");
            return Ok(0);
        }
        if let containerd::State::Stopped { code } = ctd.state(id, "").map_err(|e| e.to_string())? {
            let code = code as i32;
            eprintln!("container {name}: exited with code {code}");
            report(name, container_status::State::Exited, format!("code {code}"));
            return Ok(code);
        }
        std::thread::sleep(POLL);
    }
}

/// Named volumes' directories, a fresh run directory, and no readiness from an earlier run.
fn prepare_host(spec: &Container) -> Result<(), String> {
    for v in &spec.volumes {
        if let VolumeSource::Named(_) = v.source {
            let dir = v.host_path();
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating volume {dir}: {e}"))?;
        }
    }
    let dir = task::run_dir(&spec.name);
    let _ = std::fs::remove_dir_all(&dir);
    // Not ready until its health command succeeds in this run.
    let _ = std::fs::remove_file(super::options::ready_socket(&spec.name));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))
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
