//! The agent's decisions, one step at a time: when to check, install, reboot, bless. Time
//! comes from a `Clock` and the machine from a `Host`, so the whole cycle runs in unit tests
//! against a disk image file and a directory for the ESP.

use crate::entries::{self, Assessment};
use crate::fleetlock::RebootLock;
use crate::host::{Running, TargetDevice};
use crate::source::{self, RolloutServer, Transport};
use crate::state::{self, AgentState, Phase};
use crate::state::{MAX_UNREPORTED, PendingEvent};
use crate::update::{self, Esp, Target};
use cairn_release::checkin::{CheckIn, Event, EventKind};
use cairn_release::keys::PublicKey;
use cairn_release::maintenance::Now;
use cairn_release::update_config::{Strategy, UpdateConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub trait Clock {
    /// Unix seconds.
    fn now(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

pub trait Host {
    fn running(&self) -> &Running;
    /// Every required service running.
    fn healthy(&self) -> Result<bool, String>;
    fn reboot(&self) -> Result<(), String>;
    fn target(&self) -> Result<TargetDevice, String>;
    fn esp(&self) -> &dyn Esp;
}

/// Requests from the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Check the source now (and stage what it offers, as a timed check would).
    Check,
    /// Check, stage and reboot into the result now, whatever the strategy.
    Apply,
    /// Reboot into the staged release now.
    Reboot,
}

/// What the API shows; replaced as a whole on every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub state: String,
    pub current_version: String,
    pub slot: String,
    pub staged_version: String,
    pub available_version: String,
    /// 0.0 to 1.0 while downloading.
    pub progress: f64,
    pub last_check: u64,
    pub last_check_result: String,
    pub last_error: String,
    pub rolled_back: Vec<String>,
    pub strategy: String,
    pub source: String,
}

/// Where status changes go (the D-Bus side); called after each change.
pub type Publish = Arc<dyn Fn(&Status) + Send + Sync>;

/// How often a host being assessed is looked at.
const ASSESS_POLL: Duration = Duration::from_secs(1);

/// The first timed check comes this long after the agent starts (or `interval`, if shorter),
/// like Flatcar's update_engine: a host that just booted settles first, and a fleet rebooting
/// together does not hit the server at once. `updatectl check` does not wait.
pub const FIRST_CHECK_DELAY: u64 = 7 * 60;

pub struct Agent<H: Host, C: Clock> {
    pub host: H,
    clock: C,
    config: UpdateConfig,
    trusted: Vec<PublicKey>,
    transport: Option<Box<dyn Transport>>,
    /// Check in here instead of reading a feed (`transport` then fetches from the server).
    server: Option<Box<dyn RolloutServer>>,
    /// The host's identity for the rollout server (the machine-id).
    instance_id: String,
    /// The reboot semaphore of strategy `fleetlock`.
    lock: Option<Box<dyn RebootLock>>,
    /// When to ask the lock server again (after it said no or could not be reached).
    next_lock_attempt: u64,
    pub state: AgentState,
    state_path: PathBuf,
    /// Spreads a fleet's checks (the machine-id).
    seed: Vec<u8>,
    next_check: u64,
    healthy_since: Option<u64>,
    available: Option<String>,
    last_check_result: String,
    status: Arc<Mutex<Status>>,
    publish: Publish,
    wait: Box<dyn Fn(Duration) + Send + Sync>,
}

pub struct AgentParts<H, C> {
    pub host: H,
    pub clock: C,
    pub config: UpdateConfig,
    pub trusted: Vec<PublicKey>,
    pub transport: Option<Box<dyn Transport>>,
    pub server: Option<Box<dyn RolloutServer>>,
    pub instance_id: String,
    pub lock: Option<Box<dyn RebootLock>>,
    pub state_path: PathBuf,
    pub seed: Vec<u8>,
    pub publish: Publish,
    /// Sleeps between download retries.
    pub wait: Box<dyn Fn(Duration) + Send + Sync>,
}

fn log(line: &str) {
    eprintln!("{line}");
}

impl<H: Host, C: Clock> Agent<H, C> {
    /// Loads the saved state and settles where an earlier run left off.
    pub fn start(p: AgentParts<H, C>) -> Result<Agent<H, C>, String> {
        let mut state = AgentState::load(&p.state_path)?;
        let now = p.clock.now();
        let first_check = now + FIRST_CHECK_DELAY.min(p.config.interval.as_secs());
        let mut agent = Agent {
            host: p.host,
            clock: p.clock,
            config: p.config,
            trusted: p.trusted,
            transport: p.transport,
            server: p.server,
            instance_id: p.instance_id,
            lock: p.lock,
            next_lock_attempt: 0,
            state: AgentState::default(),
            state_path: p.state_path,
            seed: p.seed,
            next_check: first_check,
            healthy_since: None,
            available: None,
            last_check_result: String::new(),
            status: Arc::new(Mutex::new(Status::default())),
            publish: p.publish,
            wait: p.wait,
        };
        // The ESP is only looked at when the state names a release in flight.
        let entry = match pending_version(&state.phase) {
            Some(version) => agent.entry_assessment(&version)?,
            None => None,
        };
        let before = state.phase.clone();
        state.resume(&agent.host.running().version, entry, now);
        if state.phase != before {
            log(&format!("after boot: {} -> {}", describe(&before), describe(&state.phase)));
        }
        agent.state = state;
        // Started with nothing in flight: a slot still held (the host crashed or was rebooted by
        // hand after taking it) is not needed any more.
        if agent.config.strategy == Strategy::FleetLock
            && matches!(
                agent.state.phase,
                Phase::Idle | Phase::Blessed { .. } | Phase::RolledBack { .. } | Phase::Error { .. }
            )
        {
            agent.state.lock_to_release = true;
        }
        agent.save();
        if let (Phase::RolledBack { version }, false) = (&agent.state.phase, agent.state.phase == before) {
            let (version, error) = (version.clone(), agent.state.last_error.clone());
            agent.record(EventKind::RolledBack, &version, error);
        }
        agent.publish();
        Ok(agent)
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn entry_assessment(&self, version: &str) -> Result<Option<Assessment>, String> {
        let os_id = self.host.running().os_id.clone();
        let mut found = None;
        self.host.esp().with_entries(&mut |dir| {
            found = entries::assessment(dir, &os_id, version)?;
            Ok(())
        })?;
        Ok(found)
    }

    fn save(&mut self) {
        if let Err(e) = self.state.save(&self.state_path) {
            log(&format!("error: {e}"));
            self.state.last_error = Some(e);
        }
    }

    /// Queues an event for the rollout server (if there is one) and sends what is queued.
    fn record(&mut self, kind: EventKind, version: &str, error: Option<String>) {
        if self.server.is_none() {
            return;
        }
        let queue = &mut self.state.unreported;
        queue.push(PendingEvent { kind, version: version.to_string(), error });
        if queue.len() > MAX_UNREPORTED {
            queue.drain(..queue.len() - MAX_UNREPORTED);
        }
        self.save();
        self.report_pending();
    }

    /// Sends queued events in order; stops at the first that cannot be delivered now.
    fn report_pending(&mut self) {
        // Held apart while sending, so the state can be saved after each event.
        let Some(server) = self.server.take() else { return };
        while let Some(first) = self.state.unreported.first() {
            let event = Event {
                format: cairn_release::checkin::FORMAT,
                instance_id: self.instance_id.clone(),
                kind: first.kind,
                version: first.version.clone(),
                error: first.error.clone(),
            };
            match server.report(&event) {
                Ok(()) => {}
                // Refused (4xx): sending it again will not help.
                Err(e) if !crate::http::retryable(&e) => log(&format!("the server refused an event: {e}")),
                Err(e) => {
                    log(&format!("reporting to the server: {e} (will retry)"));
                    break;
                }
            }
            self.state.unreported.remove(0);
            self.save();
        }
        self.server = Some(server);
    }

    fn checkin(&self, state: &str) -> CheckIn {
        let running = self.host.running();
        CheckIn {
            format: cairn_release::checkin::FORMAT,
            instance_id: self.instance_id.clone(),
            group: self.config.group.clone(),
            os_id: running.os_id.clone(),
            version: running.version.clone(),
            slot: running.slot.letter().to_string(),
            state: state.to_string(),
            rolled_back: self.state.rolled_back.clone(),
        }
    }

    fn publish(&self) {
        let s = &self.state;
        let running = self.host.running();
        let status = Status {
            state: s.phase.name().to_string(),
            current_version: running.version.clone(),
            slot: running.slot.letter().to_string(),
            staged_version: match &s.phase {
                Phase::Staged { version } | Phase::WaitingToReboot { version } | Phase::Rebooting { version, .. } => {
                    version.clone()
                }
                _ => String::new(),
            },
            available_version: self.available.clone().unwrap_or_default(),
            progress: match &s.phase {
                Phase::Staged { .. } | Phase::WaitingToReboot { .. } | Phase::Rebooting { .. } => 1.0,
                _ => 0.0,
            },
            last_check: s.last_check.unwrap_or(0),
            last_check_result: self.last_check_result.clone(),
            last_error: s.last_error.clone().unwrap_or_default(),
            rolled_back: s.rolled_back.clone(),
            strategy: self.config.strategy.as_str().to_string(),
            source: match &self.config.server {
                Some(url) => format!("{url} (group {})", self.config.group),
                None => self.config.source.clone().unwrap_or_default(),
            },
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status.clone();
        (self.publish)(&status);
    }

    fn fail(&mut self, message: String) {
        log(&format!("error: {message}"));
        self.state.fail(message, self.clock.now());
        self.save();
        self.publish();
    }

    /// Does what is due now (`command`, if any, first) and says how long to wait before the
    /// next step if nothing comes in.
    pub fn step(&mut self, command: Option<Command>) -> Duration {
        let now = self.clock.now();
        match (self.state.phase.clone(), command) {
            (Phase::Assessing { version, .. }, c) => {
                if c.is_some() {
                    self.last_check_result = format!("assessing {version}; updates wait until it is blessed");
                    self.publish();
                }
                self.assess(&version, now)
            }
            (Phase::Staged { version } | Phase::WaitingToReboot { version }, c) => {
                let asked = matches!(c, Some(Command::Apply | Command::Reboot));
                if !asked
                    && self.config.strategy != Strategy::Off
                    && let Some(wait) = self.wait_for_window(&version, now)
                {
                    return wait;
                }
                if self.config.strategy == Strategy::Immediate || asked {
                    self.reboot(&version);
                } else if self.config.strategy == Strategy::FleetLock {
                    return self.reboot_under_lock(&version, now);
                } else if matches!(self.state.phase, Phase::Staged { .. }) {
                    let _ = self.state.transition(Phase::WaitingToReboot { version: version.clone() });
                    log(&format!("{version} is staged; reboot with `updatectl reboot` (strategy off)"));
                    self.save();
                    self.publish();
                }
                self.config.interval
            }
            // A reboot was asked for and init is on it.
            (Phase::Rebooting { .. }, _) => Duration::from_secs(30),
            (_, Some(Command::Reboot)) => {
                self.state.last_error = Some("nothing is staged to reboot into".into());
                self.publish();
                self.until_next_check(now)
            }
            (_, c) => {
                let lock_wait = self.release_lock(now);
                if c.is_none() && now < self.next_due() {
                    return self.until_next_check(now).min(lock_wait.unwrap_or(Duration::MAX));
                }
                self.check_and_install(now, c == Some(Command::Apply));
                self.next_check = state::next_check(now, self.config.interval.as_secs(), &self.seed);
                if matches!(self.state.phase, Phase::Staged { .. }) {
                    return self.step(c);
                }
                self.until_next_check(now)
            }
        }
    }

    /// When the next check is due. After an error the backoff decides, not the interval: a
    /// failure at check time is retried soon, and less often the longer it lasts.
    fn next_due(&self) -> u64 {
        match self.state.phase {
            Phase::Error { retry_at, .. } => retry_at,
            _ => self.next_check,
        }
    }

    fn until_next_check(&self, now: u64) -> Duration {
        Duration::from_secs(self.next_due().saturating_sub(now).max(1))
    }

    fn check_and_install(&mut self, now: u64, apply: bool) {
        // The server hears what the host was doing, not that it is checking.
        let state_before = self.state.phase.name();
        if self.state.transition(Phase::Checking).is_err() {
            return;
        }
        self.state.last_check = Some(now);
        self.publish();
        self.report_pending();
        let Some(transport) = self.transport.as_deref() else {
            self.last_check_result = "no update source configured".into();
            let _ = self.state.transition(Phase::Idle);
            self.save();
            self.publish();
            return;
        };
        let running = self.host.running().clone();
        let checked = match self.server.as_deref() {
            Some(server) => {
                source::check_server(server, transport, &self.trusted, now, &self.checkin(state_before), &self.state)
            }
            None => source::check(transport, &self.trusted, now, &running.os_id, &running.version, &self.state),
        };
        let candidate = match checked {
            Err(e) => return self.fail(e.to_string()),
            Ok(Err(nothing)) => {
                log(&format!("checked: {nothing}"));
                self.last_check_result = nothing;
                self.available = None;
                let _ = self.state.transition(Phase::Idle);
                self.save();
                self.publish();
                return;
            }
            Ok(Ok(c)) => c,
        };
        let version = candidate.release.version.clone();
        log(&format!("installing {version} into slot {}", running.slot.other().letter()));
        self.available = Some(version.clone());
        self.last_check_result = format!("{version} available");
        let device = match self.host.target() {
            Ok(d) => d,
            Err(e) => return self.fail(e),
        };
        let status = self.status.clone();
        let publish = self.publish.clone();
        let progress = move |done: u64, total: u64| {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            let p = if total == 0 { 1.0 } else { done as f64 / total as f64 };
            // Published in whole percents: a signal per read would flood the bus.
            if s.state != "downloading" || (p * 100.0) as u32 != (s.progress * 100.0) as u32 {
                s.state = "downloading".into();
                s.progress = p;
                publish(&s);
            }
        };
        let target = Target {
            disk: &device.disk,
            partition: &device.partition,
            partition_offset: device.offset,
            partition_size: device.size,
            slot: device.slot,
            running_slot: running.slot,
            running_version: &running.version,
            esp: self.host.esp(),
            progress: &progress,
            staging_dir: self.state_path.parent().unwrap_or(std::path::Path::new("/var/lib/cairn")),
            wait: &*self.wait,
        };
        let result = update::install(&candidate, transport, &target, &mut self.state, &self.state_path);
        match result {
            Err(e) => {
                self.fail(format!("installing {version}: {e}"));
                self.record(EventKind::Failed, &version, Some(e.to_string()));
            }
            Ok(()) => {
                log(&format!("{version} staged in slot {}", device.slot.letter()));
                self.record(EventKind::Staged, &version, None);
                self.publish();
                if apply {
                    self.reboot(&version);
                }
            }
        }
    }

    /// With maintenance windows, `Some(wait)` while all are closed: the staged `version` waits
    /// (and under `fleetlock` does not ask for a slot) until one opens.
    fn wait_for_window(&mut self, version: &str, now: u64) -> Option<Duration> {
        let maintenance = self.config.maintenance.as_ref()?;
        let Now::Closed { opens } = maintenance.at(now as i64) else { return None };
        let message =
            format!("{version} is staged; waiting for the maintenance window at {}", maintenance.local(opens));
        if let Phase::Staged { .. } = self.state.phase {
            let _ = self.state.transition(Phase::WaitingToReboot { version: version.into() });
            self.save();
        }
        if self.last_check_result != message {
            log(&message);
            self.last_check_result = message;
            self.publish();
        }
        // Woken at the opening, or sooner after a clock change: the interval bounds the sleep.
        Some(Duration::from_secs((opens - now as i64).max(1) as u64).min(self.config.interval))
    }

    /// Strategy `fleetlock`: reboots into `version` once the lock server grants a slot; until
    /// then asks again every `lock_retry`.
    fn reboot_under_lock(&mut self, version: &str, now: u64) -> Duration {
        if let Phase::Staged { .. } = self.state.phase {
            let _ = self.state.transition(Phase::WaitingToReboot { version: version.into() });
            self.save();
        }
        let retry = self.config.lock_retry;
        if now < self.next_lock_attempt {
            return Duration::from_secs(self.next_lock_attempt - now);
        }
        let Some(lock) = self.lock.as_deref() else {
            self.state.last_error = Some("strategy fleetlock without a lock server".into());
            self.publish();
            return self.config.interval;
        };
        match lock.lock() {
            Ok(()) => {
                log(&format!("reboot slot taken; rebooting into {version}"));
                self.state.lock_to_release = true;
                self.reboot(version);
                Duration::from_secs(30)
            }
            Err(e) => {
                self.last_check_result = format!("{version} is staged; waiting for a reboot slot ({e})");
                log(&self.last_check_result.clone());
                self.next_lock_attempt = now + retry.as_secs();
                self.publish();
                retry
            }
        }
    }

    /// Gives back the reboot slot once the host is steady; `Some(wait)` while it still must.
    fn release_lock(&mut self, now: u64) -> Option<Duration> {
        if !self.state.lock_to_release {
            return None;
        }
        if now < self.next_lock_attempt {
            return Some(Duration::from_secs(self.next_lock_attempt - now));
        }
        let result = match self.lock.as_deref() {
            Some(lock) => lock.unlock(),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                log("steady: reboot slot released");
                self.state.lock_to_release = false;
                self.save();
                None
            }
            Err(e) => {
                log(&format!("releasing the reboot slot: {e} (will retry)"));
                self.next_lock_attempt = now + self.config.lock_retry.as_secs();
                Some(self.config.lock_retry)
            }
        }
    }

    fn reboot(&mut self, version: &str) {
        let from = self.host.running().version.clone();
        if let Err(e) = self.state.transition(Phase::Rebooting { version: version.into(), from }) {
            return self.fail(e.to_string());
        }
        self.save();
        self.publish();
        log(&format!("rebooting into {version}"));
        if let Err(e) = self.host.reboot() {
            self.fail(format!("rebooting into {version}: {e}"));
        }
    }

    /// Blesses `version`'s entry once the host has been healthy for `bless_after`.
    fn assess(&mut self, version: &str, now: u64) -> Duration {
        match self.host.healthy() {
            Ok(true) => {
                let since = *self.healthy_since.get_or_insert(now);
                if now.saturating_sub(since) < self.config.bless_after.as_secs() {
                    return ASSESS_POLL;
                }
                let os_id = self.host.running().os_id.clone();
                match self.host.esp().with_entries(&mut |dir| entries::bless(dir, &os_id, version).map(drop)) {
                    Ok(()) => {
                        log(&format!("{version} healthy for {}s: blessed", now - since));
                        let _ = self.state.transition(Phase::Blessed { version: version.into() });
                        self.save();
                        self.record(EventKind::Blessed, version, None);
                        if let Some(wait) = self.release_lock(now) {
                            return wait.min(self.until_next_check(now));
                        }
                        self.publish();
                        self.until_next_check(now)
                    }
                    Err(e) => {
                        self.fail(format!("blessing {version}: {e}"));
                        self.state.phase = Phase::Assessing { version: version.into(), since };
                        ASSESS_POLL
                    }
                }
            }
            Ok(false) => {
                self.healthy_since = None;
                ASSESS_POLL
            }
            Err(e) => {
                log(&format!("health: {e}"));
                self.healthy_since = None;
                ASSESS_POLL
            }
        }
    }
}

/// The version a saved state is in the middle of installing or booting, if any.
fn pending_version(phase: &Phase) -> Option<String> {
    match phase {
        Phase::Downloading { version }
        | Phase::Verifying { version }
        | Phase::Staged { version }
        | Phase::WaitingToReboot { version }
        | Phase::Rebooting { version, .. }
        | Phase::Assessing { version, .. } => Some(version.clone()),
        _ => None,
    }
}

fn describe(p: &Phase) -> String {
    match pending_version(p) {
        Some(v) => format!("{} {v}", p.name()),
        None => match p {
            Phase::Blessed { version } | Phase::RolledBack { version } => format!("{} {version}", p.name()),
            _ => p.name().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DirTransport;
    use crate::testkit::{World, esp_names, world};
    use crate::update::EntriesDir;
    use cairn_release::gpt::Slot;
    use cairn_release::maintenance::{Maintenance, MaintenanceSettings, WindowSettings};
    use std::cell::Cell;
    use std::rc::Rc;

    struct FakeHost {
        running: Running,
        disk: PathBuf,
        esp: EntriesDir,
        healthy: Rc<Cell<bool>>,
        reboots: Rc<Cell<u32>>,
    }

    impl Host for FakeHost {
        fn running(&self) -> &Running {
            &self.running
        }
        fn healthy(&self) -> Result<bool, String> {
            Ok(self.healthy.get())
        }
        fn reboot(&self) -> Result<(), String> {
            self.reboots.set(self.reboots.get() + 1);
            Ok(())
        }
        fn target(&self) -> Result<TargetDevice, String> {
            let slot = self.running.slot.other();
            let p = crate::slots::find(&mut std::fs::File::open(&self.disk).unwrap(), slot).unwrap();
            Ok(TargetDevice {
                disk: self.disk.clone(),
                partition: self.disk.clone(),
                offset: p.offset,
                size: p.size,
                slot,
            })
        }
        fn esp(&self) -> &dyn Esp {
            &self.esp
        }
    }

    struct FakeClock(Rc<Cell<u64>>);

    impl Clock for FakeClock {
        fn now(&self) -> u64 {
            self.0.get()
        }
    }

    struct Rig {
        clock: Rc<Cell<u64>>,
        healthy: Rc<Cell<bool>>,
        reboots: Rc<Cell<u32>>,
        server: Option<FakeServer>,
        lock: Option<FakeLock>,
        maintenance: Option<Maintenance>,
    }

    /// A reboot semaphore with one slot that is free or not; records the calls.
    #[derive(Clone, Default)]
    struct FakeLock {
        free: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<Mutex<Vec<&'static str>>>,
    }

    impl RebootLock for FakeLock {
        fn lock(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("lock");
            if self.free.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("failed_lock: all 1 slot(s) held".into())
            }
        }

        fn unlock(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("unlock");
            Ok(())
        }
    }

    /// A rollout server that offers `offer` and records what it is told; reports fail while
    /// `down` is set.
    #[derive(Clone, Default)]
    struct FakeServer {
        offer: Arc<Mutex<Option<cairn_release::checkin::Offer>>>,
        checkins: Arc<Mutex<Vec<CheckIn>>>,
        events: Arc<Mutex<Vec<(EventKind, String)>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl RolloutServer for FakeServer {
        fn check_in(&self, c: &CheckIn) -> Result<cairn_release::checkin::CheckInReply, crate::source::SourceError> {
            c.validate().expect("a valid check-in");
            self.checkins.lock().unwrap().push(c.clone());
            let update = self.offer.lock().unwrap().clone();
            Ok(cairn_release::checkin::CheckInReply {
                format: 1,
                reason: update.is_none().then(|| "up to date".into()),
                update,
            })
        }

        fn report(&self, e: &Event) -> Result<(), crate::source::SourceError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::source::SourceError::Fetch {
                    path: "/v1/events".into(),
                    message: "connection refused".into(),
                });
            }
            e.validate().expect("a valid event");
            self.events.lock().unwrap().push((e.kind, e.version.clone()));
            Ok(())
        }
    }

    fn agent(w: &World, version: &str, slot: Slot, strategy: Strategy, rig: &Rig) -> Agent<FakeHost, FakeClock> {
        let host = FakeHost {
            running: Running { os_id: "cairn".into(), version: version.into(), slot, usr_partition: "/dev/x".into() },
            disk: w.disk.clone(),
            esp: EntriesDir(w.esp.clone()),
            healthy: rig.healthy.clone(),
            reboots: rig.reboots.clone(),
        };
        let config = UpdateConfig {
            source: Some(w.feed.display().to_string()),
            strategy,
            interval: Duration::from_secs(600),
            bless_after: Duration::from_secs(60),
            server: rig.server.as_ref().map(|_| "http://server.invalid".to_string()),
            group: "default".into(),
            lock_server: rig.lock.as_ref().map(|_| "http://lock.invalid".to_string()),
            lock_group: "default".into(),
            lock_retry: Duration::from_secs(30),
            maintenance: rig.maintenance.clone(),
        };
        Agent::start(AgentParts {
            host,
            clock: FakeClock(rig.clock.clone()),
            config,
            trusted: vec![w.key.public()],
            transport: Some(Box::new(DirTransport(w.feed.clone()))),
            server: rig.server.clone().map(|s| Box::new(s) as Box<dyn RolloutServer>),
            instance_id: "0123456789abcdef0123456789abcdef".into(),
            lock: rig.lock.clone().map(|l| Box::new(l) as Box<dyn RebootLock>),
            state_path: w.state.clone(),
            seed: b"machine".to_vec(),
            publish: Arc::new(|_| {}),
            wait: Box::new(|_| {}),
        })
        .unwrap()
    }

    fn rig() -> Rig {
        Rig {
            clock: Rc::new(Cell::new(500)),
            healthy: Rc::new(Cell::new(false)),
            reboots: Rc::new(Cell::new(0)),
            server: None,
            lock: None,
            maintenance: None,
        }
    }

    #[test]
    fn fleetlock_reboots_only_with_a_slot_and_gives_it_back_once_blessed() {
        let w = world("2.0.0");
        let r = Rig { lock: Some(FakeLock::default()), ..rig() };
        let lock = r.lock.clone().unwrap();
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::FleetLock, &r);
        assert_eq!(*lock.calls.lock().unwrap(), [] as [&str; 0], "nothing to give back before the first step");
        lock.calls.lock().unwrap().clear();
        // Staged; the slot is taken by another host: it waits and asks again after lock_retry.
        assert_eq!(a.step(Some(Command::Check)), Duration::from_secs(30));
        assert_eq!(a.state.phase, Phase::WaitingToReboot { version: "2.0.0".into() });
        assert_eq!(r.reboots.get(), 0);
        assert!(a.status().last_check_result.contains("waiting for a reboot slot"), "{:?}", a.status());
        r.clock.set(r.clock.get() + 10);
        assert_eq!(a.step(None), Duration::from_secs(20), "not asked again before lock_retry");
        assert_eq!(lock.calls.lock().unwrap().iter().filter(|c| **c == "lock").count(), 1);
        // Free: it takes the slot and reboots, remembering to give it back.
        lock.free.store(true, std::sync::atomic::Ordering::SeqCst);
        r.clock.set(r.clock.get() + 20);
        a.step(None);
        assert_eq!(r.reboots.get(), 1);
        assert!(AgentState::load(&w.state).unwrap().lock_to_release);
        // The new release boots and is blessed: the slot goes back then, not before.
        loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
        lock.calls.lock().unwrap().clear();
        let mut a = agent(&w, "2.0.0", Slot::B, Strategy::FleetLock, &r);
        r.healthy.set(true);
        a.step(None);
        assert_eq!(*lock.calls.lock().unwrap(), [] as [&str; 0], "assessing: the slot is still needed");
        r.clock.set(r.clock.get() + 60);
        a.step(None);
        assert_eq!(a.state.phase, Phase::Blessed { version: "2.0.0".into() });
        assert_eq!(*lock.calls.lock().unwrap(), ["unlock"]);
        assert!(!AgentState::load(&w.state).unwrap().lock_to_release);
    }

    #[test]
    fn fleetlock_host_starting_idle_gives_back_a_slot_it_may_hold() {
        let w = world("2.0.0");
        let r = Rig { lock: Some(FakeLock::default()), ..rig() };
        let mut a = agent(&w, "2.0.0", Slot::A, Strategy::FleetLock, &r);
        a.step(None);
        assert_eq!(*r.lock.as_ref().unwrap().calls.lock().unwrap(), ["unlock"]);
        a.step(None);
        assert_eq!(r.lock.as_ref().unwrap().calls.lock().unwrap().len(), 1, "once");
    }

    /// A rig whose agent checks in with a rollout server offering the world's release.
    fn server_rig(w: &World, version: &str) -> Rig {
        let manifest = std::fs::read(w.feed.join(format!("releases/{version}/release.json"))).unwrap();
        let server = FakeServer::default();
        *server.offer.lock().unwrap() = Some(cairn_release::checkin::Offer {
            version: version.into(),
            path: format!("releases/{version}"),
            manifest_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest)),
        });
        Rig { server: Some(server), ..rig() }
    }

    #[test]
    fn with_a_rollout_server_installs_what_it_grants_and_reports_every_step() {
        let w = world("2.0.0");
        let r = server_rig(&w, "2.0.0");
        let server = r.server.clone().unwrap();
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        a.step(Some(Command::Check));
        assert_eq!(r.reboots.get(), 1);
        let c = server.checkins.lock().unwrap()[0].clone();
        assert_eq!((c.version.as_str(), c.slot.as_str(), c.group.as_str()), ("1.0.0", "a", "default"));
        assert_eq!(*server.events.lock().unwrap(), [(EventKind::Staged, "2.0.0".to_string())]);

        // Booted; the server is unreachable when the release is blessed: the event waits.
        loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
        server.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut a = agent(&w, "2.0.0", Slot::B, Strategy::Immediate, &r);
        r.healthy.set(true);
        a.step(None);
        r.clock.set(r.clock.get() + 60);
        a.step(None);
        assert_eq!(a.state.phase, Phase::Blessed { version: "2.0.0".into() });
        assert_eq!(server.events.lock().unwrap().len(), 1);
        assert_eq!(AgentState::load(&w.state).unwrap().unreported.len(), 1, "kept across restarts");
        // The next check-in delivers it first; the server now says up to date.
        server.down.store(false, std::sync::atomic::Ordering::SeqCst);
        *server.offer.lock().unwrap() = None;
        a.step(Some(Command::Check));
        assert_eq!(server.events.lock().unwrap()[1], (EventKind::Blessed, "2.0.0".to_string()));
        assert!(a.state.unreported.is_empty());
        assert_eq!(a.status().last_check_result, "up to date");
        assert_eq!(server.checkins.lock().unwrap().last().unwrap().state, "blessed");
    }

    #[test]
    fn with_a_rollout_server_a_rollback_is_reported_and_the_offer_refused() {
        let w = world("2.0.0");
        let r = server_rig(&w, "2.0.0");
        let server = r.server.clone().unwrap();
        agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r).step(Some(Command::Check));
        loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+0-3.efi");
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        assert_eq!(server.events.lock().unwrap()[1].0, EventKind::RolledBack);
        // A server that offers it again anyway is not obeyed.
        r.clock.set(2000);
        a.step(Some(Command::Check));
        assert_eq!(server.checkins.lock().unwrap().last().unwrap().rolled_back, ["2.0.0"]);
        assert!(a.status().last_check_result.contains("rolled back"), "{:?}", a.status());
        assert_eq!(r.reboots.get(), 1);
    }

    /// What systemd-boot does when it boots a counted entry: one try used.
    fn loader_boots(w: &World, from: &str, to: &str) {
        std::fs::rename(w.esp.join(from), w.esp.join(to)).unwrap();
    }

    #[test]
    fn finds_installs_reboots_assesses_and_blesses() {
        let (w, r) = (world("2.0.0"), rig());
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        assert_eq!(a.step(None), Duration::from_secs(FIRST_CHECK_DELAY), "no check right after start");
        assert_eq!(r.reboots.get(), 0);
        r.clock.set(500 + FIRST_CHECK_DELAY);
        a.step(None);
        assert_eq!(r.reboots.get(), 1, "immediate strategy reboots once staged");
        assert!(matches!(a.state.phase, Phase::Rebooting { .. }), "{:?}", a.state.phase);
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);

        // The new release boots; the agent starts on it.
        loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
        r.clock.set(1000);
        let mut a = agent(&w, "2.0.0", Slot::B, Strategy::Immediate, &r);
        assert_eq!(a.state.phase, Phase::Assessing { version: "2.0.0".into(), since: 1000 });
        assert_eq!(a.status().state, "assessing");
        // Not healthy: never blessed, however long it runs.
        r.clock.set(5000);
        assert_eq!(a.step(None), ASSESS_POLL);
        // Healthy, but not for long enough yet.
        r.healthy.set(true);
        a.step(None);
        r.clock.set(5059);
        a.step(None);
        assert!(matches!(a.state.phase, Phase::Assessing { .. }));
        // A blip resets the window.
        r.healthy.set(false);
        a.step(None);
        r.healthy.set(true);
        r.clock.set(5070);
        a.step(None);
        r.clock.set(5129);
        a.step(None);
        assert!(matches!(a.state.phase, Phase::Assessing { .. }));
        r.clock.set(5130);
        a.step(None);
        assert_eq!(a.state.phase, Phase::Blessed { version: "2.0.0".into() });
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0.efi"]);
        assert_eq!(AgentState::load(&w.state).unwrap().phase, a.state.phase, "persisted");
        // Nothing newer: the next check installs nothing and reboots nothing.
        r.clock.set(9000);
        a.step(Some(Command::Check));
        assert_eq!(a.state.phase, Phase::Idle);
        assert!(a.status().last_check_result.contains("not newer"), "{:?}", a.status());
        assert_eq!(r.reboots.get(), 1);
    }

    #[test]
    fn a_release_that_never_comes_up_is_rolled_back_and_not_retried() {
        let (w, r) = (world("2.0.0"), rig());
        agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r).step(Some(Command::Check));
        // Three failed tries later the loader boots 1.0.0 again.
        loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+0-3.efi");
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        assert_eq!(a.state.phase, Phase::RolledBack { version: "2.0.0".into() });
        assert_eq!(a.status().rolled_back, ["2.0.0"]);
        assert!(a.status().last_error.contains("did not boot"));
        r.clock.set(2000);
        a.step(Some(Command::Check));
        assert!(a.status().last_check_result.contains("rolled back"), "{:?}", a.status());
        assert_eq!(r.reboots.get(), 1, "no second attempt");
        assert_eq!(a.state.rolled_back, ["2.0.0"], "kept after the check");
    }

    /// Saturdays 22:00-23:00 in New York (UTC-5 in November).
    fn saturday_evenings() -> Maintenance {
        let window = WindowSettings { days: vec!["Sat".into()], start_time: "22:00".into(), length_minutes: 60 };
        MaintenanceSettings { time_zone: Some("America/New_York".into()), windows: vec![window] }.resolve().unwrap()
    }

    fn unix(text: &str) -> u64 {
        text.parse::<jiff::Timestamp>().unwrap().as_second() as u64
    }

    #[test]
    fn a_staged_update_waits_for_the_maintenance_window_then_reboots() {
        let w = world("2.0.0");
        let r = Rig { maintenance: Some(saturday_evenings()), ..rig() };
        // The rig's clock (and its feed) live in 1970: now is Wednesday evening in New York.
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        let wait = a.step(Some(Command::Check));
        assert_eq!(a.state.phase, Phase::WaitingToReboot { version: "2.0.0".into() });
        assert_eq!(r.reboots.get(), 0, "outside the window: no reboot");
        assert!(
            a.status().last_check_result.contains("maintenance window at Sat 1970-01-03 22:00 America/New_York"),
            "{:?}",
            a.status()
        );
        assert_eq!(wait, Duration::from_secs(600), "sleeps at most the interval");
        // Saturday 21:59 local: still closed, and it wakes right at the opening.
        r.clock.set(unix("1970-01-04T02:59:00Z"));
        assert_eq!(a.step(None), Duration::from_secs(60));
        assert_eq!(r.reboots.get(), 0);
        // 22:00 local: open.
        r.clock.set(unix("1970-01-04T03:00:00Z"));
        a.step(None);
        assert_eq!(r.reboots.get(), 1, "inside the window: rebooted");
    }

    #[test]
    fn under_fleetlock_no_slot_is_asked_for_outside_the_window_and_reboot_overrides_it() {
        let w = world("2.0.0");
        let r = Rig { maintenance: Some(saturday_evenings()), lock: Some(FakeLock::default()), ..rig() };
        let lock = r.lock.clone().unwrap();
        lock.free.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::FleetLock, &r);
        a.step(Some(Command::Check));
        r.clock.set(unix("1970-01-04T04:00:00Z")); // Saturday 23:00 local: just closed.
        a.step(None);
        let asked = lock.calls.lock().unwrap().iter().filter(|c| **c == "lock").count();
        assert_eq!((r.reboots.get(), asked), (0, 0), "closed: no slot asked for");
        // Inside the window it asks, gets the slot and reboots.
        r.clock.set(unix("1970-01-11T03:30:00Z"));
        a.step(None);
        assert_eq!(*lock.calls.lock().unwrap().last().unwrap(), "lock");
        assert_eq!(r.reboots.get(), 1);
    }

    #[test]
    fn an_operators_reboot_is_not_held_back_by_maintenance_windows() {
        let w = world("2.0.0");
        let r = Rig { maintenance: Some(saturday_evenings()), ..rig() };
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        a.step(Some(Command::Check));
        assert_eq!(r.reboots.get(), 0);
        a.step(Some(Command::Reboot));
        assert_eq!(r.reboots.get(), 1);
    }

    #[test]
    fn strategy_off_stages_and_waits_for_a_reboot_request() {
        let (w, r) = (world("2.0.0"), rig());
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Off, &r);
        a.step(Some(Command::Check));
        assert_eq!(a.state.phase, Phase::WaitingToReboot { version: "2.0.0".into() });
        assert_eq!(a.status().staged_version, "2.0.0");
        a.step(None);
        assert_eq!(r.reboots.get(), 0);
        a.step(Some(Command::Reboot));
        assert_eq!(r.reboots.get(), 1);
    }

    #[test]
    fn apply_installs_and_reboots_whatever_the_strategy() {
        let (w, r) = (world("2.0.0"), rig());
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Off, &r);
        a.step(Some(Command::Apply));
        assert_eq!(a.state.phase, Phase::Rebooting { version: "2.0.0".into(), from: "1.0.0".into() });
        assert_eq!(r.reboots.get(), 1);
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
    }

    #[test]
    fn a_tampered_image_is_an_error_with_backoff_and_no_entry() {
        let (w, r) = (world("2.0.0"), rig());
        let usr = w.feed.join("releases/2.0.0/usr.img.zst");
        let mut bytes = std::fs::read(&usr).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&usr, bytes).unwrap();
        let mut a = agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r);
        assert_eq!(a.step(Some(Command::Check)), Duration::from_secs(30), "the backoff, not the interval");
        let s = a.status();
        assert_eq!(s.state, "error");
        assert!(s.last_error.contains("installing 2.0.0"), "{}", s.last_error);
        assert_eq!(esp_names(&w), ["cairn-1.0.0.efi"]);
        assert_eq!(r.reboots.get(), 0);
        // The next attempt comes after the backoff (30 s), not the interval; a request does not wait.
        r.clock.set(510);
        assert_eq!(a.step(None), Duration::from_secs(20));
        r.clock.set(530);
        a.step(None);
        assert_eq!(a.state.failures, 2);
        assert_eq!(a.step(None), Duration::from_secs(60), "doubled");
        a.step(Some(Command::Check));
        assert_eq!(a.state.failures, 3);
    }
}
