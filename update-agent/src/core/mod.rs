//! The agent's decisions, without I/O: when to check, what to install, when to reboot, when to
//! bless, what the rollout server hears. One entry point, [`Core::step`]: given the time and
//! an input (a tick, an operator's command, or the answer to the last request), it moves the
//! phase through the checked table and says what to do: effects (save, log) and at most one
//! request whose answer is the next input, or how long to sleep. `crate::driver` carries the
//! requests out through `crate::ports`.
//!
//! Where things are decided: the phase and its table in `state`, the schedule in `schedule`,
//! rebooting in `reboot` (windows, then the strategy), the server's events in `outbox`, what
//! users see in `status`. The invariants are checked with random input sequences in
//! `properties`.

pub mod outbox;
mod protocol;
pub mod reboot;
pub mod schedule;
pub mod state;
pub mod status;

#[cfg(test)]
mod properties;

pub use protocol::{Command, Effect, Identity, Input, Note, Request, Step, request_name};

use crate::ports::{Candidate, HostError, LockError, Offered, Running};
use cairn_release::checkin::{CheckIn, Event, EventKind, FORMAT};
use cairn_release::update_config::{Strategy, UpdateConfig};
use outbox::PendingEvent;
use protocol::answers;
use reboot::fleetlock::{self, GiveBack, SlotTimer};
use reboot::{Plan, Waiting};
use state::{AgentState, LastTransfer, Phase, StateError};
use std::time::Duration;

/// What the rollout server last heard from this host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServerView {
    state: &'static str,
    version: String,
    rolled_back: Vec<String>,
}

pub struct Core {
    config: UpdateConfig,
    running: Running,
    identity: Identity,
    state: AgentState,
    /// What was last handed out to be saved; a step whose state differs saves it.
    saved: AgentState,
    /// The last save failed (shown until one succeeds).
    storage_error: Option<String>,
    next_check: u64,
    healthy_since: Option<u64>,
    /// Blessing failed; tried again at the next health poll.
    bless_error: Option<String>,
    available: Option<String>,
    note: Note,
    slot_timer: SlotTimer,
    /// The operator's command being carried out; cleared when a step ends without a request.
    serving: Option<Command>,
    /// `updatectl apply`: reboot into whatever this check stages.
    apply: bool,
    /// The request whose answer the core waits for.
    awaiting: Option<&'static str>,
    candidate: Option<Candidate>,
    /// The outbox was tried since the last event was recorded or the last check began.
    delivery_tried: bool,
    reported: Option<ServerView>,
    status_retry_at: u64,
    /// The state a check-in reports: what the host was doing, not that it is checking.
    checkin_state_before: &'static str,
    logs: Vec<String>,
}

/// How long a status report that failed waits before the next try.
const STATUS_RETRY: u64 = 30;

impl Core {
    /// Settles where an earlier run left off: `loaded` is the saved state, `entry` the
    /// loader's verdict on the entry of the version it names (if it names one).
    pub fn start(
        config: UpdateConfig,
        running: Running,
        identity: Identity,
        loaded: AgentState,
        entry: Option<crate::entries::Assessment>,
        now: u64,
    ) -> Core {
        let mut state = loaded.clone();
        state.resume(&running.version, entry, now);
        let first_check = now + schedule::FIRST_CHECK_DELAY.min(config.interval.as_secs());
        let mut core = Core {
            config,
            running,
            identity,
            state,
            saved: loaded.clone(),
            storage_error: None,
            next_check: first_check,
            healthy_since: None,
            bless_error: None,
            available: None,
            note: Note::None,
            slot_timer: SlotTimer::default(),
            serving: None,
            apply: false,
            awaiting: None,
            candidate: None,
            delivery_tried: false,
            reported: None,
            status_retry_at: 0,
            checkin_state_before: "idle",
            logs: Vec::new(),
        };
        if core.state.phase != loaded.phase {
            core.log(format!("after boot: {} -> {}", loaded.phase.describe(), core.state.phase.describe()));
            if let Phase::RolledBack { version } = &core.state.phase {
                let (version, error) = (version.clone(), core.state.last_error.clone());
                core.record(EventKind::RolledBack, &version, error);
            }
        }
        // Started with nothing in flight: a slot still held (the host crashed or was rebooted by
        // hand after taking it) is not needed any more.
        if core.config.strategy == Strategy::FleetLock && core.state.phase.settled() {
            core.state.lock_to_release = true;
        }
        core
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// Saving failed: the state on disk is older than the one in memory.
    pub fn storage_failed(&mut self, message: String) {
        self.storage_error = Some(message);
    }

    pub fn storage_ok(&mut self) {
        self.storage_error = None;
    }

    pub fn step(&mut self, now: u64, input: Input) -> Step {
        let mut wake = Duration::MAX;
        let request = match input {
            Input::Tick => {
                debug_assert!(self.awaiting.is_none(), "a tick while waiting for {:?}", self.awaiting);
                self.advance(now, &mut wake)
            }
            Input::Command(c) => {
                self.serving = Some(c);
                self.apply = c == Command::Apply;
                self.on_command(now, c, &mut wake)
            }
            answer => {
                let expected = self.awaiting.take();
                assert_eq!(expected, Some(answers(&answer)), "an answer the core did not ask for: {answer:?}");
                self.on_answer(now, answer, &mut wake)
            }
        };
        match &request {
            Some(r) => self.awaiting = Some(request_name(r)),
            None => {
                self.serving = None;
                self.apply = false;
            }
        }
        let mut effects = Vec::new();
        if self.state != self.saved {
            self.saved = self.state.clone();
            effects.push(Effect::Save(self.state.clone()));
        }
        effects.extend(self.logs.drain(..).map(Effect::Log));
        Step { effects, request, wake: wake.max(Duration::from_secs(1)) }
    }

    fn log(&mut self, line: String) {
        self.logs.push(line);
    }

    /// Moves through the checked table. A refused move is a bug in the core: tests fail on it,
    /// a release build logs it and stays where it is.
    fn go(&mut self, to: Phase) {
        if let Err(e) = self.state.transition(to) {
            if cfg!(debug_assertions) {
                panic!("illegal transition: {e}");
            }
            self.log(format!("bug: {e}"));
        }
    }

    fn has_server(&self) -> bool {
        self.config.server.is_some()
    }

    fn has_source(&self) -> bool {
        self.config.server.is_some() || self.config.source.is_some()
    }

    fn checkin(&self, state: &str) -> CheckIn {
        CheckIn {
            format: FORMAT,
            instance_id: self.identity.instance_id.clone(),
            group: self.config.group.clone(),
            os_id: self.running.os_id.clone(),
            version: self.running.version.clone(),
            slot: self.running.slot.letter().to_string(),
            state: state.to_string(),
            rolled_back: self.state.rolled_back.clone(),
        }
    }

    fn server_view(&self) -> ServerView {
        ServerView {
            state: self.state.phase.name(),
            version: self.running.version.clone(),
            rolled_back: self.state.rolled_back.clone(),
        }
    }

    /// Queues an event for the rollout server, if there is one.
    fn record(&mut self, kind: EventKind, version: &str, error: Option<String>) {
        // What the install moved goes with its `staged` event.
        let transfer = match kind {
            EventKind::Staged => self.state.last_transfer.as_ref().filter(|t| t.version == version).map(|t| t.transfer),
            _ => None,
        };
        if !self.has_server() {
            return;
        }
        self.state.unreported.push(PendingEvent { kind, version: version.to_string(), error, transfer });
        self.delivery_tried = false;
    }

    fn fail(&mut self, now: u64, message: String) {
        self.log(format!("error: {message}"));
        self.state.fail(message, now);
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

    fn set_note(&mut self, note: Note) {
        if self.note != note {
            if let Some(line) = status::note_text(&note) {
                self.log(line);
            }
            self.note = note;
        }
    }

    fn on_command(&mut self, now: u64, command: Command, wake: &mut Duration) -> Option<Request> {
        match (&self.state.phase, command) {
            (Phase::Assessing { version, .. }, _) => self.note = Note::Busy(version.clone()),
            (p, Command::Reboot) if p.staged().is_none() => {
                self.state.last_error = Some("nothing is staged to reboot into".into());
                *wake = self.until_next_check(now);
                return None;
            }
            _ => {}
        }
        self.advance(now, wake)
    }

    /// Does what the phase calls for now.
    fn advance(&mut self, now: u64, wake: &mut Duration) -> Option<Request> {
        if self.has_server() && !self.state.unreported.is_empty() && !self.delivery_tried {
            let events = self.state.unreported.events().iter().map(|e| self.event(e)).collect();
            return Some(Request::Deliver(events));
        }
        match self.state.phase.clone() {
            Phase::Checking => Some(Request::Offer(self.checkin(self.checkin_state_before))),
            // Only ever left by the answer to the install's requests (and by `resume` at start).
            Phase::Downloading { .. } | Phase::Verifying { .. } => {
                debug_assert!(false, "advance in {:?}", self.state.phase);
                self.fail(now, format!("bug: the install of {} lost its way", self.installing()));
                self.advance(now, wake)
            }
            Phase::Staged { version } => self.reboot_plan(now, &version, wake),
            Phase::WaitingToReboot { version } => match self.status_report(now) {
                Some(report) => Some(report),
                None => self.reboot_plan(now, &version, wake),
            },
            Phase::Rebooting { .. } => {
                *wake = schedule::REBOOT_WAIT;
                None
            }
            Phase::Assessing { .. } => self.status_report(now).or(Some(Request::ReadHealth)),
            Phase::Idle | Phase::Blessed { .. } | Phase::RolledBack { .. } | Phase::Error { .. } => {
                let lock_wait = match fleetlock::give_back(self.state.lock_to_release, &self.slot_timer, now) {
                    GiveBack::Now => return Some(Request::Unlock),
                    GiveBack::Later(wait) => wait,
                    GiveBack::Nothing => Duration::MAX,
                };
                let asked = matches!(self.serving.take(), Some(Command::Check | Command::Apply));
                if asked || now >= self.next_due() {
                    return self.start_check(now, wake);
                }
                *wake = self.until_next_check(now).min(lock_wait);
                None
            }
        }
    }

    fn event(&self, e: &PendingEvent) -> Event {
        Event {
            format: FORMAT,
            instance_id: self.identity.instance_id.clone(),
            kind: e.kind,
            version: e.version.clone(),
            error: e.error.clone(),
            transfer: e.transfer,
        }
    }

    /// With a rollout server, a host waiting to reboot or assessing a new release tells it so
    /// when that changes, instead of at the next check: the server shows what the host does.
    fn status_report(&mut self, now: u64) -> Option<Request> {
        let view = self.server_view();
        if !self.has_server() || self.reported.as_ref() == Some(&view) || now < self.status_retry_at {
            return None;
        }
        Some(Request::ReportStatus(self.checkin(view.state)))
    }

    fn start_check(&mut self, now: u64, wake: &mut Duration) -> Option<Request> {
        self.checkin_state_before = self.state.phase.name();
        self.go(Phase::Checking);
        self.state.last_check = Some(now);
        self.delivery_tried = false;
        self.next_check = schedule::next_check(now, self.config.interval.as_secs(), &self.identity.seed);
        if !self.has_source() {
            self.note = Note::NoSource;
            self.go(Phase::Idle);
            *wake = self.until_next_check(now);
            return None;
        }
        self.advance(now, wake)
    }

    fn nothing(&mut self, now: u64, reason: String, wake: &mut Duration) -> Option<Request> {
        self.log(format!("checked: {reason}"));
        self.note = Note::Nothing(reason);
        self.available = None;
        self.go(Phase::Idle);
        self.advance(now, wake)
    }

    fn reboot_plan(&mut self, now: u64, version: &str, wake: &mut Duration) -> Option<Request> {
        let cx = reboot::Context {
            strategy: self.config.strategy,
            maintenance: self.config.maintenance.as_ref(),
            asked: self.apply || self.serving == Some(Command::Reboot),
            now,
            interval: self.config.interval,
            lock: &self.slot_timer,
            has_lock_server: self.config.lock_server.is_some(),
        };
        let plan = reboot::plan(&cx);
        let was_staged = matches!(self.state.phase, Phase::Staged { .. });
        if plan != Plan::Reboot && was_staged {
            self.go(Phase::WaitingToReboot { version: version.into() });
        }
        match plan {
            Plan::Reboot => self.reboot(version),
            Plan::AskForSlot => Some(Request::Lock),
            Plan::Wait { wake: w, why } => {
                *wake = w;
                match why {
                    Waiting::Window { opens } => {
                        self.set_note(Note::WaitingForWindow { version: version.into(), opens });
                    }
                    Waiting::Operator if was_staged => {
                        self.log(format!("{version} is staged; reboot with `updatectl reboot` (strategy off)"));
                    }
                    Waiting::Operator => {}
                    Waiting::Slot => {}
                    Waiting::NoLockServer => self.state.last_error = Some(LockError::NotConfigured.to_string()),
                }
                None
            }
        }
    }

    fn reboot(&mut self, version: &str) -> Option<Request> {
        let from = self.running.version.clone();
        self.go(Phase::Rebooting { version: version.into(), from });
        self.log(format!("rebooting into {version}"));
        Some(Request::Reboot)
    }

    fn install_failed(&mut self, now: u64, version: &str, e: &dyn std::fmt::Display) {
        self.fail(now, format!("installing {version}: {e}"));
        self.record(EventKind::Failed, version, Some(e.to_string()));
        self.candidate = None;
    }

    fn installing(&self) -> String {
        self.state.phase.in_flight().unwrap_or_default().to_string()
    }

    fn on_answer(&mut self, now: u64, answer: Input, wake: &mut Duration) -> Option<Request> {
        match answer {
            Input::Tick | Input::Command(_) => unreachable!("not answers"),
            Input::Delivered { acknowledged } => {
                self.state.unreported.acknowledge(acknowledged);
                self.delivery_tried = true;
                self.advance(now, wake)
            }
            Input::Offered(Err(e)) => {
                self.fail(now, e.to_string());
                self.advance(now, wake)
            }
            Input::Offered(Ok(offered)) => {
                if self.has_server() {
                    self.reported = Some(ServerView { state: self.checkin_state_before, ..self.server_view() });
                }
                match offered {
                    Offered::Nothing(reason) => self.nothing(now, reason, wake),
                    Offered::Release(offer) => match self.state.may_install(&offer.version, &self.running.version) {
                        Ok(()) => Some(Request::Fetch(offer)),
                        Err(e @ (StateError::NotNewer { .. } | StateError::RolledBack(_))) => {
                            self.nothing(now, e.to_string(), wake)
                        }
                        Err(e) => {
                            self.fail(now, e.to_string());
                            self.advance(now, wake)
                        }
                    },
                }
            }
            Input::Fetched(Err(e)) => {
                self.fail(now, e.to_string());
                self.advance(now, wake)
            }
            Input::Fetched(Ok(candidate)) => {
                let version = candidate.release.version.clone();
                self.log(format!("installing {version} into slot {}", self.running.slot.other().letter()));
                self.available = Some(version.clone());
                self.note = Note::Available(version.clone());
                self.go(Phase::Downloading { version });
                self.candidate = Some(candidate.clone());
                Some(Request::WriteUsr(candidate))
            }
            Input::UsrWritten(result) => {
                let version = self.installing();
                match result {
                    Err(e) => {
                        self.install_failed(now, &version, &e);
                        self.advance(now, wake)
                    }
                    Ok(transfer) => {
                        self.log(format!("{version}: /usr written and verified ({})", transfer.summary()));
                        self.state.last_transfer = Some(LastTransfer { version: version.clone(), transfer });
                        self.go(Phase::Verifying { version });
                        self.candidate.clone().map(Request::InstallEntry)
                    }
                }
            }
            Input::EntryInstalled(result) => {
                let version = self.installing();
                match result {
                    Err(e) => self.install_failed(now, &version, &e),
                    Ok(()) => {
                        self.log(format!("{version} staged in slot {}", self.running.slot.other().letter()));
                        self.go(Phase::Staged { version: version.clone() });
                        self.record(EventKind::Staged, &version, None);
                        self.candidate = None;
                    }
                }
                self.advance(now, wake)
            }
            Input::Rebooted(Ok(())) => {
                *wake = schedule::REBOOT_WAIT;
                None
            }
            Input::Rebooted(Err(e)) => {
                let version = self.installing();
                self.fail(now, format!("rebooting into {version}: {e}"));
                self.advance(now, wake)
            }
            Input::Locked(Ok(())) => {
                let version = self.installing();
                self.log(format!("reboot slot taken; rebooting into {version}"));
                self.state.lock_to_release = true;
                self.reboot(&version)
            }
            Input::Locked(Err(e)) => {
                let version = self.installing();
                self.slot_timer = SlotTimer::refused_at(now, self.config.lock_retry);
                self.set_note(Note::WaitingForSlot { version, why: e.to_string() });
                *wake = self.config.lock_retry;
                None
            }
            Input::Unlocked(Ok(())) => {
                self.log("steady: reboot slot released".into());
                self.state.lock_to_release = false;
                self.advance(now, wake)
            }
            Input::Unlocked(Err(e)) => {
                self.log(format!("releasing the reboot slot: {e} (will retry)"));
                self.slot_timer = SlotTimer::refused_at(now, self.config.lock_retry);
                self.advance(now, wake)
            }
            Input::StatusReported(result) => {
                match result {
                    Ok(()) => self.reported = Some(self.server_view()),
                    Err(e) => {
                        self.log(format!("telling the server the host's state: {e} (will retry)"));
                        self.status_retry_at = now + STATUS_RETRY;
                    }
                }
                self.advance(now, wake)
            }
            Input::Health(health) => self.on_health(now, health, wake),
            Input::Blessed(result) => {
                let version = self.installing();
                match result {
                    Ok(()) => {
                        let since = self.healthy_since.unwrap_or(now);
                        self.log(format!("{version} healthy for {}s: blessed", now - since));
                        self.bless_error = None;
                        self.go(Phase::Blessed { version: version.clone() });
                        self.record(EventKind::Blessed, &version, None);
                        self.advance(now, wake)
                    }
                    Err(e) => {
                        let message = format!("blessing {version}: {e}");
                        self.log(format!("error: {message} (will retry)"));
                        self.bless_error = Some(message);
                        *wake = schedule::ASSESS_POLL;
                        None
                    }
                }
            }
        }
    }

    /// Blesses the assessed release once the host has been healthy for `bless_after`.
    fn on_health(&mut self, now: u64, health: Result<bool, HostError>, wake: &mut Duration) -> Option<Request> {
        *wake = schedule::ASSESS_POLL;
        match health {
            Ok(true) => {
                let since = *self.healthy_since.get_or_insert(now);
                if now.saturating_sub(since) < self.config.bless_after.as_secs() {
                    return None;
                }
                Some(Request::Bless(self.installing()))
            }
            Ok(false) => {
                self.healthy_since = None;
                None
            }
            Err(e) => {
                self.log(format!("health: {e}"));
                self.healthy_since = None;
                None
            }
        }
    }
}
