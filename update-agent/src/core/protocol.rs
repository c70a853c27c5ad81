//! The words the core and its driver speak: the commands an operator gives, the requests the
//! core makes and the inputs that answer them, the effects of a step.

use super::state::AgentState;
use crate::ports::{Candidate, EspError, HostError, LockError, Offered, SourceError};
use crate::update::UpdateError;
use cairn_release::checkin::{CheckIn, Event, Offer};
use std::time::Duration;

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

/// What the core asks the driver to do; the answer comes back as the named [`Input`].
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Ask the source what it offers (with a rollout server: check in) -> `Offered`.
    Offer(CheckIn),
    /// Fetch and verify the offered release's manifest -> `Fetched`.
    Fetch(Offer),
    /// Stream `/usr` into the inactive slot and verify it -> `UsrWritten`.
    WriteUsr(Candidate),
    /// Bind the slot to the release and install its UKI as a counted entry -> `EntryInstalled`.
    InstallEntry(Candidate),
    /// Every required service running? -> `Health`.
    ReadHealth,
    /// Mark `version`'s entry good -> `Blessed`.
    Bless(String),
    /// -> `Rebooted` (an `Ok` means cairn-init is on it).
    Reboot,
    /// Take a reboot slot -> `Locked`.
    Lock,
    /// Give the reboot slot back -> `Unlocked`.
    Unlock,
    /// Send these events in order, stopping at the first that may work later -> `Delivered`.
    Deliver(Vec<Event>),
    /// Tell the rollout server the host's state (its offer is not acted on) -> `StatusReported`.
    ReportStatus(CheckIn),
}

#[derive(Debug)]
pub enum Input {
    /// The wake-up came (or the agent just started).
    Tick,
    Command(Command),
    Offered(Result<Offered, SourceError>),
    Fetched(Result<Candidate, SourceError>),
    UsrWritten(Result<cairn_release::checkin::Transfer, UpdateError>),
    EntryInstalled(Result<(), UpdateError>),
    Health(Result<bool, HostError>),
    Blessed(Result<(), EspError>),
    Rebooted(Result<(), HostError>),
    Locked(Result<(), LockError>),
    Unlocked(Result<(), LockError>),
    /// The first `acknowledged` events were delivered or refused for good.
    Delivered {
        acknowledged: usize,
    },
    StatusReported(Result<(), SourceError>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Persist this state before anything else of the step happens.
    Save(AgentState),
    Log(String),
}

/// What one step decided.
#[derive(Debug)]
pub struct Step {
    /// In order; a `Save` comes first.
    pub effects: Vec<Effect>,
    /// To carry out now, its answer being the next input.
    pub request: Option<Request>,
    /// Without a request: sleep this long unless a command comes.
    pub wake: Duration,
}

/// Who the host is to the rollout server.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The machine-id.
    pub instance_id: String,
    /// Spreads a fleet's checks (the machine-id's bytes).
    pub seed: Vec<u8>,
}

/// What the last check (or the wait after it) came to, shown as `last_check_result`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    None,
    NoSource,
    /// Nothing to install, and why.
    Nothing(String),
    Available(String),
    WaitingForWindow {
        version: String,
        opens: String,
    },
    WaitingForSlot {
        version: String,
        why: String,
    },
    /// An operator asked while a release is assessed.
    Busy(String),
}

/// The request an input answers.
pub(super) fn answers(input: &Input) -> &'static str {
    match input {
        Input::Tick | Input::Command(_) => "none",
        Input::Offered(_) => "offer",
        Input::Fetched(_) => "fetch",
        Input::UsrWritten(_) => "write-usr",
        Input::EntryInstalled(_) => "install-entry",
        Input::Health(_) => "read-health",
        Input::Blessed(_) => "bless",
        Input::Rebooted(_) => "reboot",
        Input::Locked(_) => "lock",
        Input::Unlocked(_) => "unlock",
        Input::Delivered { .. } => "deliver",
        Input::StatusReported(_) => "report-status",
    }
}

pub fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Offer(_) => "offer",
        Request::Fetch(_) => "fetch",
        Request::WriteUsr(_) => "write-usr",
        Request::InstallEntry(_) => "install-entry",
        Request::ReadHealth => "read-health",
        Request::Bless(_) => "bless",
        Request::Reboot => "reboot",
        Request::Lock => "lock",
        Request::Unlock => "unlock",
        Request::Deliver(_) => "deliver",
        Request::ReportStatus(_) => "report-status",
    }
}
