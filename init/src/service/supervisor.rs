//! The supervisor: starts services in dependency order, checks readiness, restarts them by
//! policy with exponential backoff, and stops them in reverse order. Time is passed in, so the
//! logic is testable; processes are started through the `Spawner` seam.

use super::log::{LogFile, drain};
use super::spec::{Ready, Restart, ServiceSpec, SpecError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A service runs this long without exiting before its backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for the services it comes after.
    Waiting,
    /// Started, not ready yet.
    Starting,
    Running,
    /// Exited; starts again at `next_start`.
    Backoff,
    /// Exited and not restarted (policy, or stopped by request).
    Stopped,
    /// Not startable: a bad service file or a disabled one.
    Failed,
}

pub struct Started {
    pub pid: Pid,
    /// Read end of the service's stdout/stderr pipe (absent for tty services).
    pub output: Option<OwnedFd>,
}

/// How processes are started: the real one forks and execs; tests record calls.
pub trait Spawner {
    fn spawn(&mut self, spec: &ServiceSpec) -> Result<Started, String>;
}

pub struct Service {
    pub spec: ServiceSpec,
    pub state: State,
    pub pid: Option<Pid>,
    pub output: Option<OwnedFd>,
    pub started_at: Option<Instant>,
    pub ready_at: Option<Instant>,
    pub restarts: u32,
    backoff_step: u32,
    pub next_start: Option<Instant>,
    pub last_exit: Option<String>,
    pub error: Option<String>,
    /// Stopped by request: not restarted until started by request.
    held: bool,
    /// Restart requested: start again as soon as it exits, whatever the policy.
    restart_now: bool,
    log: Option<LogFile>,
}

#[derive(Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub uptime_s: Option<u64>,
    pub required: bool,
    pub last_exit: Option<String>,
    pub error: Option<String>,
}

pub struct Supervisor {
    pub services: Vec<Service>,
    log_dir: PathBuf,
    /// Names in the order they became running (stop goes in reverse).
    start_order: Vec<String>,
}

impl Supervisor {
    pub fn new(specs: Vec<ServiceSpec>, errors: Vec<SpecError>, log_dir: &Path) -> Supervisor {
        let mut services: Vec<Service> = specs.into_iter().map(Service::new).collect();
        for e in errors {
            let mut s = Service::new(ServiceSpec::placeholder(&e.name, &e.file));
            s.state = State::Failed;
            s.error = Some(e.to_string());
            services.push(s);
        }
        for s in services.iter_mut() {
            if !s.spec.enabled && s.state != State::Failed {
                s.state = State::Stopped;
                s.held = true;
            }
        }
        services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Supervisor { services, log_dir: log_dir.to_path_buf(), start_order: Vec::new() }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.spec.name == name)
    }

    /// Starts what may start and notices readiness. Returns services that became ready.
    pub fn tick(&mut self, now: Instant, spawner: &mut dyn Spawner, probe: &dyn Fn(&Ready) -> bool) -> Vec<String> {
        let mut became_ready = Vec::new();
        for i in 0..self.services.len() {
            let startable = match self.services[i].state {
                State::Waiting => self.dependencies_settled(i),
                State::Backoff => self.services[i].next_start.is_some_and(|t| now >= t),
                _ => false,
            };
            if startable {
                self.start(i, now, spawner);
            }
            let s = &mut self.services[i];
            if s.state == State::Starting && probe(&s.spec.ready) {
                s.state = State::Running;
                s.ready_at = Some(now);
                if !self.start_order.contains(&s.spec.name) {
                    self.start_order.push(s.spec.name.clone());
                }
                became_ready.push(s.spec.name.clone());
            }
        }
        became_ready
    }

    /// Every `after` entry is running, or can no longer start (unknown, failed, stopped).
    fn dependencies_settled(&self, i: usize) -> bool {
        self.services[i].spec.after.iter().all(|dep| match self.index(dep) {
            None => true,
            Some(j) => matches!(self.services[j].state, State::Running | State::Failed | State::Stopped),
        })
    }

    fn start(&mut self, i: usize, now: Instant, spawner: &mut dyn Spawner) {
        let log_dir = self.log_dir.clone();
        let s = &mut self.services[i];
        let log = s.log.get_or_insert_with(|| LogFile::new(&log_dir, &s.spec.name, s.spec.log_max_bytes));
        match spawner.spawn(&s.spec) {
            Ok(started) => {
                log.note(&format!("started {} (pid {})", s.spec.command.join(" "), started.pid));
                s.pid = Some(started.pid);
                s.output = started.output;
                s.started_at = Some(now);
                s.ready_at = None;
                s.state = State::Starting;
                s.error = None;
            }
            Err(e) => {
                log.note(&format!("could not start: {e}"));
                s.error = Some(e);
                s.last_exit = Some("not started".into());
                s.schedule_restart(now, false);
            }
        }
    }

    /// A child exited. Returns the name of the service it was, if any.
    pub fn on_exit(&mut self, pid: Pid, how: ExitHow, now: Instant) -> Option<String> {
        let s = self.services.iter_mut().find(|s| s.pid == Some(pid))?;
        if let Some(out) = s.output.take()
            && let Some(log) = s.log.as_mut()
        {
            drain(&out, log);
        }
        s.pid = None;
        let desc = how.to_string();
        if let Some(log) = s.log.as_mut() {
            log.note(&format!("exited: {desc}"));
        }
        s.last_exit = Some(desc);
        let stable = s.started_at.is_some_and(|t| now.duration_since(t) >= STABLE_AFTER);
        if stable {
            s.backoff_step = 0;
        }
        if s.held {
            s.state = State::Stopped;
        } else {
            let failed = !matches!(how, ExitHow::Code(0));
            s.schedule_restart(now, failed);
        }
        Some(s.spec.name.clone())
    }

    /// Services whose output pipes init should read.
    pub fn output_fds(&self) -> Vec<(usize, &OwnedFd)> {
        self.services.iter().enumerate().filter_map(|(i, s)| s.output.as_ref().map(|fd| (i, fd))).collect()
    }

    pub fn drain_output(&mut self, i: usize) {
        let s = &mut self.services[i];
        if let (Some(fd), Some(log)) = (s.output.as_ref(), s.log.as_mut())
            && !drain(fd, log)
        {
            s.output = None;
        }
    }

    /// When the loop should next wake up for this supervisor's sake.
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        for s in &self.services {
            let d = match s.state {
                State::Backoff => s.next_start.map(|t| t.saturating_duration_since(now)),
                // Readiness is polled until it holds; often enough to notice quickly, not so
                // often that PID 1 competes with the services it waits for.
                State::Starting => Some(READY_POLL),
                _ => None,
            };
            if let Some(d) = d {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    /// Whether every required service is running.
    pub fn required_ready(&self) -> bool {
        self.services.iter().filter(|s| s.spec.required).all(|s| s.state == State::Running)
    }

    /// Required services that are not running, with their state, for the boot deadline message.
    pub fn not_ready(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.spec.required && s.state != State::Running)
            .map(|s| {
                let mut d = format!("{} ({:?}", s.spec.name, s.state);
                if let Some(e) = s.error.as_ref().or(s.last_exit.as_ref()) {
                    d.push_str(&format!(": {e}"));
                }
                d.push(')');
                d
            })
            .collect()
    }

    pub fn status(&self, now: Instant) -> Vec<ServiceStatus> {
        self.services
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.name.clone(),
                state: s.state.clone(),
                pid: s.pid.map(|p| p.as_raw()),
                restarts: s.restarts,
                uptime_s: s.pid.and(s.started_at).map(|t| now.duration_since(t).as_secs()),
                required: s.spec.required,
                last_exit: s.last_exit.clone(),
                error: s.error.clone(),
            })
            .collect()
    }

    pub fn log_path(&self, name: &str) -> Option<PathBuf> {
        self.index(name).map(|i| self.log_dir.join(format!("{}.log", self.services[i].spec.name)))
    }

    /// The service `name`, released for starting by request: no longer held, backoff reset.
    /// A service whose file failed cannot be started.
    fn release_for_start(&mut self, name: &str) -> Result<usize, String> {
        let i = self.index(name).ok_or_else(|| format!("no service {name}"))?;
        let s = &mut self.services[i];
        if s.state == State::Failed {
            return Err(s.error.clone().unwrap_or_else(|| "service cannot start".into()));
        }
        s.held = false;
        s.backoff_step = 0;
        Ok(i)
    }

    /// Starts a stopped service now (by request).
    pub fn request_start(&mut self, name: &str, now: Instant, spawner: &mut dyn Spawner) -> Result<(), String> {
        let i = self.release_for_start(name)?;
        if self.services[i].pid.is_none() {
            self.start(i, now, spawner);
        }
        Ok(())
    }

    /// Stops a service (SIGTERM to its process group) and keeps it stopped.
    pub fn request_stop(&mut self, name: &str) -> Result<(), String> {
        let i = self.index(name).ok_or_else(|| format!("no service {name}"))?;
        let s = &mut self.services[i];
        s.held = true;
        s.next_start = None;
        match s.pid {
            Some(pid) => signal_group(pid, Signal::SIGTERM),
            None if s.state != State::Failed => s.state = State::Stopped,
            None => {}
        }
        Ok(())
    }

    /// Restart: stop if running; it starts again right after it exits.
    pub fn request_restart(&mut self, name: &str, now: Instant, spawner: &mut dyn Spawner) -> Result<(), String> {
        let i = self.release_for_start(name)?;
        let s = &mut self.services[i];
        match s.pid {
            Some(pid) => {
                s.restart_now = true;
                signal_group(pid, Signal::SIGTERM);
            }
            None => self.start(i, now, spawner),
        }
        Ok(())
    }

    /// Running services in reverse start order, then any others still running.
    pub fn stop_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = self.start_order.iter().rev().filter_map(|n| self.index(n)).collect();
        for (i, s) in self.services.iter().enumerate() {
            if s.pid.is_some() && !order.contains(&i) {
                order.push(i);
            }
        }
        order
    }

    /// Marks everything held, so exits during shutdown are not restarted.
    pub fn hold_all(&mut self) {
        for s in &mut self.services {
            s.held = true;
            s.next_start = None;
        }
    }
}

pub fn signal_group(pid: Pid, sig: Signal) {
    // Services run in their own session: signal the whole group, then the leader itself.
    let _ = kill(Pid::from_raw(-pid.as_raw()), sig);
    let _ = kill(pid, sig);
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitHow {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitHow::Code(c) => write!(f, "exit code {c}"),
            ExitHow::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

impl Service {
    fn new(spec: ServiceSpec) -> Service {
        Service {
            spec,
            state: State::Waiting,
            pid: None,
            output: None,
            started_at: None,
            ready_at: None,
            restarts: 0,
            backoff_step: 0,
            next_start: None,
            last_exit: None,
            error: None,
            held: false,
            restart_now: false,
            log: None,
        }
    }

    fn schedule_restart(&mut self, now: Instant, failed: bool) {
        let restart = self.restart_now
            || match self.spec.restart {
                Restart::Always => true,
                Restart::OnFailure => failed,
                Restart::Never => false,
            };
        if !restart {
            self.state = State::Stopped;
            return;
        }
        let delay = if self.restart_now {
            Duration::ZERO
        } else {
            let factor = 1u32.checked_shl(self.backoff_step).unwrap_or(u32::MAX);
            self.spec.restart_delay.saturating_mul(factor).min(self.spec.restart_delay_max)
        };
        self.restart_now = false;
        self.backoff_step = (self.backoff_step + 1).min(20);
        self.restarts += 1;
        self.next_start = Some(now + delay);
        self.state = State::Backoff;
    }
}

impl ServiceSpec {
    /// Stands in for a service whose file could not be used, so status can show it.
    pub fn placeholder(name: &str, file: &Path) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            source: file.to_path_buf(),
            description: String::new(),
            command: vec![],
            environment: Default::default(),
            working_directory: "/".into(),
            user: "root".into(),
            tty: None,
            restart: Restart::Never,
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(30),
            after: vec![],
            ready: Ready::Process,
            required: false,
            stop_timeout: Duration::from_secs(10),
            log_max_bytes: 1 << 20,
            enabled: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::spec::parse;

    struct FakeSpawner {
        next_pid: i32,
        started: Vec<String>,
        fail: Vec<String>,
    }

    impl Spawner for FakeSpawner {
        fn spawn(&mut self, spec: &ServiceSpec) -> Result<Started, String> {
            if self.fail.contains(&spec.name) {
                return Err("no such file".into());
            }
            self.next_pid += 1;
            self.started.push(spec.name.clone());
            Ok(Started { pid: Pid::from_raw(self.next_pid), output: None })
        }
    }

    fn svc(name: &str, extra: &str) -> ServiceSpec {
        parse(name, Path::new("/x.toml"), &format!("command = [\"/bin/{name}\"]\n{extra}")).unwrap()
    }

    fn sup(specs: Vec<ServiceSpec>) -> Supervisor {
        let dir = std::env::temp_dir().join(format!("cairn-sup-test-{}-{}", std::process::id(), specs.len()));
        Supervisor::new(specs, vec![], &dir)
    }

    fn spawner() -> FakeSpawner {
        FakeSpawner { next_pid: 100, started: vec![], fail: vec![] }
    }

    #[test]
    fn starts_in_dependency_order_after_readiness() {
        let mut s = sup(vec![
            svc("app", "after = [\"db\"]\nrequired = true\n"),
            svc("db", "ready = { unix_socket = \"/run/db.sock\" }\nrequired = true\n"),
        ]);
        let mut sp = spawner();
        let t0 = Instant::now();
        let socket_up = std::cell::Cell::new(false);
        let probe = |r: &Ready| match r {
            Ready::UnixSocket(_) => socket_up.get(),
            _ => true,
        };
        s.tick(t0, &mut sp, &probe);
        assert_eq!(sp.started, vec!["db"], "app waits for db");
        assert!(!s.required_ready());
        socket_up.set(true);
        assert_eq!(s.tick(t0, &mut sp, &probe), vec!["db"]);
        s.tick(t0, &mut sp, &probe);
        assert_eq!(sp.started, vec!["db", "app"]);
        assert!(s.required_ready());
        assert_eq!(
            s.stop_order().iter().map(|&i| s.services[i].spec.name.clone()).collect::<Vec<_>>(),
            vec!["app", "db"]
        );
    }

    #[test]
    fn restart_backoff_doubles_and_caps() {
        let mut s = sup(vec![svc(
            "crashy",
            "restart = \"always\"\nrestart_delay = \"100ms\"\nrestart_delay_max = \"300ms\"\n",
        )]);
        let mut sp = spawner();
        let t0 = Instant::now();
        let yes = |_: &Ready| true;
        s.tick(t0, &mut sp, &yes);
        let mut delays = vec![];
        let mut now = t0;
        for _ in 0..4 {
            let pid = s.services[0].pid.unwrap();
            s.on_exit(pid, ExitHow::Code(1), now);
            let next = s.services[0].next_start.unwrap();
            delays.push(next.duration_since(now).as_millis());
            s.tick(next - Duration::from_millis(1), &mut sp, &yes);
            assert_eq!(s.services[0].state, State::Backoff, "not before its time");
            now = next;
            s.tick(now, &mut sp, &yes);
            assert_eq!(s.services[0].state, State::Running);
        }
        assert_eq!(delays, vec![100, 200, 300, 300]);
        assert_eq!(s.services[0].restarts, 4);
    }

    #[test]
    fn policies() {
        let mut s = sup(vec![svc("once", "restart = \"never\"\n"), svc("onfail", "restart = \"on-failure\"\n")]);
        let mut sp = spawner();
        let t = Instant::now();
        s.tick(t, &mut sp, &|_| true);
        let (p0, p1) = (s.services[0].pid.unwrap(), s.services[1].pid.unwrap());
        s.on_exit(p0, ExitHow::Signal(9), t);
        s.on_exit(p1, ExitHow::Code(0), t);
        assert_eq!(s.services[0].state, State::Stopped);
        assert_eq!(s.services[1].state, State::Stopped, "a clean exit is not a failure");
        assert_eq!(s.services[0].last_exit.as_deref(), Some("killed by SIGKILL"));
    }

    #[test]
    fn stop_holds_and_start_resumes() {
        let mut s = sup(vec![svc("d", "restart = \"always\"\n")]);
        let mut sp = spawner();
        let t = Instant::now();
        s.tick(t, &mut sp, &|_| true);
        let pid = s.services[0].pid.unwrap();
        s.request_stop("d").unwrap();
        s.on_exit(pid, ExitHow::Signal(15), t);
        assert_eq!(s.services[0].state, State::Stopped);
        s.tick(t + Duration::from_secs(60), &mut sp, &|_| true);
        assert_eq!(sp.started.len(), 1, "a stopped service stays stopped");
        s.request_start("d", t, &mut sp).unwrap();
        assert_eq!(sp.started.len(), 2);
        assert!(s.request_start("nope", t, &mut sp).is_err());
    }

    #[test]
    fn bad_file_fails_only_that_service() {
        let err = SpecError {
            name: "bad".into(),
            file: "/etc/cairn/services/bad.toml".into(),
            message: "unknown field `x`".into(),
        };
        let dir = std::env::temp_dir().join(format!("cairn-sup-bad-{}", std::process::id()));
        let mut s = Supervisor::new(vec![svc("good", "required = true\n")], vec![err], &dir);
        let mut sp = spawner();
        s.tick(Instant::now(), &mut sp, &|_| true);
        assert!(s.required_ready());
        let st = s.status(Instant::now());
        let bad = st.iter().find(|x| x.name == "bad").unwrap();
        assert_eq!(bad.state, State::Failed);
        assert!(bad.error.as_ref().unwrap().contains("unknown field"));
    }

    #[test]
    fn spawn_failure_backs_off() {
        let mut s = sup(vec![svc("missing", "restart = \"always\"\n")]);
        let mut sp = spawner();
        sp.fail.push("missing".into());
        let t = Instant::now();
        s.tick(t, &mut sp, &|_| true);
        assert_eq!(s.services[0].state, State::Backoff);
        assert!(s.services[0].error.as_ref().unwrap().contains("no such file"));
    }
}
