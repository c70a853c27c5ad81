//! The core driven by random input sequences against a model of the world (the loader, the
//! ESP's entries, the lock server, the source), checking the invariants after every step:
//! never a downgrade, never a retry of a rolled-back version, never a reboot without a staged
//! entry, no check while a release is staged or assessed, a held reboot slot always given back
//! once the host is steady, every transition a legal one (an illegal one panics the core in
//! test builds).

use super::*;
use crate::entries::Assessment;
use crate::ports::{FetchError, SourceError};
use crate::update::UpdateError;
use cairn_release::checkin::Offer;
use cairn_release::gpt::Slot;
use cairn_release::manifest::Release;
use cairn_release::version::compare;
use proptest::prelude::{Just, ProptestConfig, any, prop_oneof, proptest};
use proptest::strategy::Strategy as Generate;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// What happens in the world between the core's steps.
#[derive(Clone, Debug)]
enum World {
    /// Time passes, then the wake-up (or an early one) comes.
    Tick(u64),
    Command(Command),
    /// The agent process restarts on the same boot (a crash, an upgrade of the agent).
    Restart,
    /// If a reboot was asked for: the loader boots the staged entry...
    BootStaged,
    /// ...or gives up on it after its tries and boots the old release again.
    FallBack,
}

fn world_event() -> impl Generate<Value = World> {
    prop_oneof![
        6 => (0u64..4000).prop_map(World::Tick),
        2 => prop_oneof![Just(Command::Check), Just(Command::Apply), Just(Command::Reboot)].prop_map(World::Command),
        1 => Just(World::Restart),
        2 => Just(World::BootStaged),
        1 => Just(World::FallBack),
    ]
}

fn strategy() -> impl Generate<Value = Strategy> {
    prop_oneof![Just(Strategy::Immediate), Just(Strategy::Off), Just(Strategy::FleetLock)]
}

fn version(n: u32) -> String {
    format!("1.0.{n}")
}

/// The world as the core cannot see it.
struct Model {
    now: u64,
    running: String,
    slot: Slot,
    /// Boot entries on the ESP besides the running one, with the loader's verdict.
    entries: BTreeMap<String, Assessment>,
    /// Versions the loader gave up on.
    rolled_back: Vec<String>,
    /// A reboot cairn-init accepted, into this version (the core's `Rebooting`).
    reboot_into: Option<String>,
    lock_held: bool,
    /// What the core last asked to save: all a restart finds.
    saved: AgentState,
    /// The answers' randomness, consumed in order (then all "yes").
    dice: Vec<u8>,
    server: bool,
}

impl Model {
    /// A host running `running` in slot A with nothing else on its ESP.
    fn new(now: u64, running: u32, dice: Vec<u8>, server: bool) -> Model {
        Model {
            now,
            running: version(running),
            slot: Slot::A,
            entries: BTreeMap::new(),
            rolled_back: vec![],
            reboot_into: None,
            lock_held: false,
            saved: AgentState::default(),
            dice,
            server,
        }
    }

    fn die(&mut self) -> u8 {
        self.dice.pop().unwrap_or(1)
    }

    fn running(&self) -> Running {
        Running {
            os_id: "cairn".into(),
            version: self.running.clone(),
            slot: self.slot,
            usr_partition: "/dev/x".into(),
            usr_device: None,
        }
    }

    fn start(&self, strategy: Strategy) -> Core {
        let config = UpdateConfig {
            source: (!self.server).then(|| "/feed".into()),
            strategy,
            interval: Duration::from_secs(600),
            bless_after: Duration::from_secs(60),
            server: self.server.then(|| "http://server.invalid".into()),
            group: "default".into(),
            lock_server: Some("http://lock.invalid".into()),
            lock_group: "default".into(),
            lock_retry: Duration::from_secs(30),
            maintenance: None,
            ..cairn_release::update_config::UpdateSettings::default().resolve().expect("the defaults resolve")
        };
        let entry = self.saved.phase.in_flight().and_then(|v| self.entries.get(v).copied());
        let identity = Identity { instance_id: "0123456789abcdef0123456789abcdef".into(), seed: b"m".to_vec() };
        Core::start(config, self.running(), identity, self.saved.clone(), entry, self.now)
    }

    /// Checks a request against the invariants, then answers it as the world would.
    fn answer(&mut self, core: &Core, before: &Phase, request: &Request, friendly: bool) -> Input {
        let mut die = if friendly { 1 } else { self.die() };
        let no = |d: u8, n: u8| !friendly && d.is_multiple_of(n);
        let fault = || SourceError::fetch("x")(FetchError::Network("down".into()));
        // A check (and so an install) starts only from a settled host: never while a release
        // is staged, booting or assessed.
        let phase = &core.state().phase;
        match request {
            Request::Offer(c) => {
                assert!(["idle", "blessed", "rolled-back", "error"].contains(&c.state.as_str()), "checked in {c:?}");
                assert_eq!(phase, &Phase::Checking, "{before:?}");
            }
            Request::Fetch(_) => assert_eq!(phase, &Phase::Checking),
            Request::WriteUsr(c) => {
                let v = &c.release.version;
                assert_eq!(compare(v, &self.running), Ordering::Greater, "a downgrade to {v} from {}", self.running);
                assert!(!self.rolled_back.contains(v), "{v} was rolled back here and is installed again");
                assert_eq!(phase, &Phase::Downloading { version: v.clone() }, "{before:?}")
            }
            _ => {}
        }
        match request {
            Request::Offer(checkin) => {
                assert_eq!(checkin.version, self.running);
                if friendly {
                    return Input::Offered(Ok(Offered::Nothing("up to date".into())));
                }
                let newest = self.running.rsplit('.').next().unwrap().parse::<u32>().unwrap();
                Input::Offered(match die % 4 {
                    0 => Err(fault()),
                    1 => Ok(Offered::Nothing("up to date".into())),
                    // Older, the same, newer, or one that was rolled back here.
                    _ => {
                        die = self.die();
                        let offered = match self.rolled_back.first() {
                            Some(v) if die % 4 == 0 => v.clone(),
                            _ => version((newest + die as u32 % 4).saturating_sub(1)),
                        };
                        Ok(Offered::Release(Offer { version: offered, path: "r".into(), manifest_sha256: "0".into() }))
                    }
                })
            }
            Request::Fetch(offer) => Input::Fetched(if no(die, 5) {
                Err(SourceError::Refused("not what was offered".into()))
            } else {
                let release = Release {
                    format: 1,
                    os_id: "cairn".into(),
                    version: offer.version.clone(),
                    created: 0,
                    artifacts: vec![],
                    source_image: None,
                };
                Ok(Candidate::beside(release, &offer.path))
            }),
            Request::WriteUsr(_) => {
                Input::UsrWritten(if no(die, 4) { Err(io_error()) } else { Ok(Default::default()) })
            }
            Request::InstallEntry(c) => Input::EntryInstalled(if no(die, 4) {
                Err(io_error())
            } else {
                // entries::install keeps only the running release's entry beside the new one.
                self.entries.clear();
                self.entries.insert(c.release.version.clone(), Assessment::Pending(3));
                Ok(())
            }),
            Request::Reboot => {
                let Phase::Rebooting { version, .. } = &core.state().phase else {
                    panic!("a reboot requested in {:?}", core.state().phase)
                };
                assert!(
                    matches!(self.entries.get(version), Some(Assessment::Pending(_))),
                    "a reboot into {version} without its staged entry: {:?}",
                    self.entries
                );
                Input::Rebooted(if no(die, 5) {
                    Err(HostError::Init("shutting down".into()))
                } else {
                    self.reboot_into = Some(version.clone());
                    Ok(())
                })
            }
            Request::ReadHealth => Input::Health(match die % 4 {
                _ if friendly => Ok(true),
                0 => Err(HostError::Init("no answer".into())),
                1 => Ok(false),
                _ => Ok(true),
            }),
            Request::Bless(v) => {
                assert_eq!(v, &self.running, "blessing a release that does not run");
                Input::Blessed(if no(die, 5) {
                    Err(crate::ports::EspError::Io { dir: "esp".into(), source: io_error_raw() })
                } else {
                    self.entries.insert(v.clone(), Assessment::Good);
                    Ok(())
                })
            }
            Request::Lock => Input::Locked(if no(die, 2) {
                Err(LockError::Refused { op: "pre-reboot", kind: "failed_lock".into(), value: "held".into() })
            } else {
                self.lock_held = true;
                Ok(())
            }),
            Request::Unlock => Input::Unlocked(if no(die, 3) {
                Err(LockError::Unreachable { op: "steady-state", message: "down".into() })
            } else {
                self.lock_held = false;
                Ok(())
            }),
            Request::Deliver(events) => {
                assert!(self.server, "events without a server");
                let acknowledged = if friendly { events.len() } else { die as usize % (events.len() + 1) };
                Input::Delivered { acknowledged }
            }
            Request::ReportStatus(checkin) => {
                assert!(self.server, "a status report without a server");
                assert_eq!(checkin.version, self.running);
                Input::StatusReported(if no(die, 3) { Err(fault()) } else { Ok(()) })
            }
        }
    }

    /// One step of the world, and the core's chain of requests that follows it.
    fn run(&mut self, core: &mut Core, input: Input, friendly: bool) {
        let mut input = input;
        for _ in 0..64 {
            let before = core.state().phase.clone();
            let step = core.step(self.now, input);
            for e in &step.effects {
                if let Effect::Save(s) = e {
                    self.saved = s.clone();
                }
            }
            match &step.request {
                None => {
                    assert!(step.wake >= Duration::from_secs(1));
                    return;
                }
                Some(r) => input = self.answer(core, &before, r, friendly),
            }
        }
        panic!("a chain of more than 64 requests");
    }

    /// The host reboots: into the staged entry, or back to the old release.
    fn boot(&mut self, staged: bool) {
        let Some(v) = self.reboot_into.take() else { return };
        if staged {
            self.running = v;
            self.slot = self.slot.other();
        } else {
            self.entries.insert(v.clone(), Assessment::Bad);
            self.rolled_back.push(v);
        }
    }
}

fn io_error_raw() -> std::io::Error {
    std::io::Error::other("disk full")
}

fn io_error() -> UpdateError {
    UpdateError::Io { what: "writing".into(), source: io_error_raw() }
}

fn life(strategy: Strategy, server: bool, events: Vec<World>, dice: Vec<u8>) {
    let mut m = Model::new(1000, 1, dice, server);
    let mut core = m.start(strategy);
    for event in events {
        match event {
            World::Tick(secs) => {
                m.now += secs;
                m.run(&mut core, Input::Tick, false);
            }
            World::Command(c) => m.run(&mut core, Input::Command(c), false),
            // A reboot cairn-init accepted happens before the agent could run again.
            World::Restart => {
                m.boot(true);
                core = m.start(strategy);
            }
            World::BootStaged | World::FallBack => {
                if m.reboot_into.is_some() {
                    m.boot(matches!(event, World::BootStaged));
                    core = m.start(strategy);
                }
            }
        }
        assert!(core.state().unreported.len() <= outbox::CAPACITY);
        if !server {
            assert!(core.state().unreported.is_empty(), "events queued without a server");
        }
    }
    // Then the world turns friendly: every reboot boots, every answer is yes. A host that holds
    // a reboot slot gives it back once it is steady.
    for _ in 0..20 {
        if m.reboot_into.is_some() {
            m.boot(true);
            core = m.start(strategy);
        }
        m.now += 60;
        // Strategy off waits for an operator's reboot.
        let input = match core.state().phase.staged() {
            Some(_) => Input::Command(Command::Reboot),
            None => Input::Tick,
        };
        m.run(&mut core, input, true);
    }
    assert!(core.state().phase.settled(), "not steady after a friendly hour: {:?}", core.state().phase);
    assert!(!m.lock_held, "a reboot slot still held in {:?}", core.state().phase);
    assert!(!core.state().lock_to_release);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_random_lives(
        strategy in strategy(),
        server in any::<bool>(),
        events in proptest::collection::vec(world_event(), 1..40),
        dice in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        life(strategy, server, events, dice);
    }
}

/// The properties can fail: a core that would install what the source offers without asking
/// `may_install` is caught (here simulated by offering a downgrade directly to the checks).
#[test]
#[should_panic(expected = "a downgrade")]
fn the_downgrade_check_fires() {
    let mut m = Model::new(0, 5, vec![], false);
    let core = m.start(Strategy::Immediate);
    let release = Release {
        format: 1,
        os_id: "cairn".into(),
        version: version(4),
        created: 0,
        artifacts: vec![],
        source_image: None,
    };
    m.answer(&core, &Phase::Checking, &Request::WriteUsr(Candidate::beside(release, "r")), false);
}
