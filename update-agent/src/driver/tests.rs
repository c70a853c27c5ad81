//! Whole update cycles through the driver, against a disk image file, a directory for the ESP,
//! a TUF feed on disk and fakes of the host, the clock, the rollout server and the lock.

use super::*;
use crate::core::schedule::{ASSESS_POLL, FIRST_CHECK_DELAY};
use crate::core::state::{AgentState, Phase};
use crate::ports::{EntriesDir, Esp, FetchError, HostError, Running, SourceError, TargetDevice};
use crate::testkit::{World, esp_names, world};
use crate::tuf_feed::TufServerSource;
use cairn_release::checkin::{CheckIn, Event, EventKind};
use cairn_release::gpt::Slot;
use cairn_release::maintenance::{Maintenance, MaintenanceSettings, WindowSettings};
use cairn_release::update_config::Strategy;
use std::cell::Cell;
use std::path::PathBuf;
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
    fn healthy(&self) -> Result<bool, HostError> {
        Ok(self.healthy.get())
    }
    fn reboot(&self) -> Result<(), HostError> {
        self.reboots.set(self.reboots.get() + 1);
        Ok(())
    }
    fn target(&self) -> Result<TargetDevice, HostError> {
        let slot = self.running.slot.other();
        let p = crate::slots::find(&mut std::fs::File::open(&self.disk).unwrap(), slot).unwrap();
        Ok(TargetDevice { disk: self.disk.clone(), partition: self.disk.clone(), offset: p.offset, size: p.size, slot })
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
    fn lock(&self) -> Result<(), LockError> {
        self.calls.lock().unwrap().push("lock");
        if self.free.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(LockError::Refused { op: "pre-reboot", kind: "failed_lock".into(), value: "all 1 slot(s) held".into() })
        }
    }

    fn unlock(&self) -> Result<(), LockError> {
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
    /// What each event said the install moved.
    transfers: Arc<Mutex<Vec<Option<cairn_release::checkin::Transfer>>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl RolloutServer for FakeServer {
    fn check_in(&self, c: &CheckIn) -> Result<cairn_release::checkin::CheckInReply, SourceError> {
        c.validate().expect("a valid check-in");
        self.checkins.lock().unwrap().push(c.clone());
        let update = self.offer.lock().unwrap().clone();
        Ok(cairn_release::checkin::CheckInReply {
            format: 1,
            reason: update.is_none().then(|| "up to date".into()),
            update,
        })
    }

    fn report(&self, e: &Event) -> Result<(), SourceError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SourceError::fetch("/v1/events")(FetchError::Network("connection refused".into())));
        }
        e.validate().expect("a valid event");
        self.events.lock().unwrap().push((e.kind, e.version.clone()));
        self.transfers.lock().unwrap().push(e.transfer);
        Ok(())
    }
}

type TestDriver = Driver<FakeHost, FakeClock>;

fn agent(w: &World, version: &str, slot: Slot, strategy: Strategy, rig: &Rig) -> TestDriver {
    let host = FakeHost {
        running: Running {
            os_id: "cairn".into(),
            version: version.into(),
            slot,
            usr_partition: "/dev/x".into(),
            usr_device: None,
        },
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
        ..cairn_release::update_config::UpdateSettings::default().resolve().expect("the defaults resolve")
    };
    let server = rig.server.clone().map(|s| Arc::new(s) as Arc<dyn RolloutServer>);
    let source: Box<dyn ReleaseSource> = match &server {
        Some(server) => Box::new(TufServerSource { server: server.clone(), feed: w.source("stable") }),
        None => Box::new(w.source("stable")),
    };
    let ports = Ports {
        host,
        clock: FakeClock(rig.clock.clone()),
        source: Some(source),
        server,
        lock: rig.lock.clone().map(|l| Box::new(l) as Box<dyn RebootLock>),
        state_file: StateFile(w.state.clone()),
        publish: Arc::new(|_| {}),
        wait: Box::new(|_| {}),
    };
    let identity = Identity { instance_id: "0123456789abcdef0123456789abcdef".into(), seed: b"machine".to_vec() };
    Driver::start(ports, config, identity).unwrap()
}

fn saved(w: &World) -> AgentState {
    StateFile(w.state.clone()).load().unwrap()
}

fn phase(a: &TestDriver) -> Phase {
    a.core().state().phase.clone()
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
    assert_eq!(phase(&a), Phase::WaitingToReboot { version: "2.0.0".into() });
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
    assert!(saved(&w).lock_to_release);
    // The new release boots and is blessed: the slot goes back then, not before.
    loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
    lock.calls.lock().unwrap().clear();
    let mut a = agent(&w, "2.0.0", Slot::B, Strategy::FleetLock, &r);
    r.healthy.set(true);
    a.step(None);
    assert_eq!(*lock.calls.lock().unwrap(), [] as [&str; 0], "assessing: the slot is still needed");
    r.clock.set(r.clock.get() + 60);
    a.step(None);
    assert_eq!(phase(&a), Phase::Blessed { version: "2.0.0".into() });
    assert_eq!(*lock.calls.lock().unwrap(), ["unlock"]);
    assert!(!saved(&w).lock_to_release);
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
    let manifest = std::fs::read(w.release.join("release.json")).unwrap();
    let server = FakeServer::default();
    *server.offer.lock().unwrap() = Some(cairn_release::checkin::Offer {
        version: version.into(),
        path: format!("{version}-release.json"),
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
    let moved = server.transfers.lock().unwrap()[0].expect("the staged event says what the install moved");
    assert!(moved.downloaded > 0 && moved.image > 0, "{moved:?}");

    // Booted; the server is unreachable when the release is blessed: the event waits.
    loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
    server.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut a = agent(&w, "2.0.0", Slot::B, Strategy::Immediate, &r);
    r.healthy.set(true);
    a.step(None);
    r.clock.set(r.clock.get() + 60);
    a.step(None);
    assert_eq!(phase(&a), Phase::Blessed { version: "2.0.0".into() });
    assert_eq!(server.events.lock().unwrap().len(), 1);
    assert_eq!(saved(&w).unreported.len(), 1, "kept across restarts");
    // The next check-in delivers it first; the server now says up to date.
    server.down.store(false, std::sync::atomic::Ordering::SeqCst);
    *server.offer.lock().unwrap() = None;
    a.step(Some(Command::Check));
    assert_eq!(server.events.lock().unwrap()[1], (EventKind::Blessed, "2.0.0".to_string()));
    assert_eq!(server.transfers.lock().unwrap()[1], None, "only the staged event carries it");
    assert!(a.core().state().unreported.is_empty());
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
    a.step(None);
    assert_eq!(server.events.lock().unwrap()[1].0, EventKind::RolledBack, "reported at the first step");
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
    assert!(matches!(phase(&a), Phase::Rebooting { .. }), "{:?}", phase(&a));
    assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);

    // The new release boots; the agent starts on it.
    loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
    r.clock.set(1000);
    let mut a = agent(&w, "2.0.0", Slot::B, Strategy::Immediate, &r);
    assert_eq!(phase(&a), Phase::Assessing { version: "2.0.0".into(), since: 1000 });
    assert_eq!(a.status().state, "assessing");
    // Not healthy: never blessed, however long it runs (the first check is due at 1420).
    r.clock.set(1100);
    assert_eq!(a.step(None), ASSESS_POLL);
    // Healthy, but not for long enough yet.
    r.healthy.set(true);
    a.step(None);
    r.clock.set(1159);
    a.step(None);
    assert!(matches!(phase(&a), Phase::Assessing { .. }));
    // A blip resets the window.
    r.healthy.set(false);
    a.step(None);
    r.healthy.set(true);
    r.clock.set(1170);
    a.step(None);
    r.clock.set(1229);
    a.step(None);
    assert!(matches!(phase(&a), Phase::Assessing { .. }));
    r.clock.set(1230);
    a.step(None);
    assert_eq!(phase(&a), Phase::Blessed { version: "2.0.0".into() });
    assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0.efi"]);
    assert_eq!(saved(&w).phase, phase(&a), "persisted");
    // Nothing newer: the next check installs nothing and reboots nothing.
    r.clock.set(9000);
    a.step(Some(Command::Check));
    assert_eq!(phase(&a), Phase::Idle);
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
    assert_eq!(phase(&a), Phase::RolledBack { version: "2.0.0".into() });
    assert_eq!(a.status().rolled_back, ["2.0.0"]);
    assert!(a.status().last_error.contains("did not boot"));
    r.clock.set(2000);
    a.step(Some(Command::Check));
    assert!(a.status().last_check_result.contains("rolled back"), "{:?}", a.status());
    assert_eq!(r.reboots.get(), 1, "no second attempt");
    assert_eq!(a.core().state().rolled_back, ["2.0.0"], "kept after the check");
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
    assert_eq!(phase(&a), Phase::WaitingToReboot { version: "2.0.0".into() });
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
    assert_eq!(phase(&a), Phase::WaitingToReboot { version: "2.0.0".into() });
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
    assert_eq!(phase(&a), Phase::Rebooting { version: "2.0.0".into(), from: "1.0.0".into() });
    assert_eq!(r.reboots.get(), 1);
    assert_eq!(esp_names(&w), ["cairn-1.0.0.efi", "cairn-2.0.0+3.efi"]);
    // What the install moved: the feed has chunks, the host nothing to seed from but an empty
    // slot, so the chunks and the index were downloaded.
    let moved = a.status().last_download;
    assert!(moved.starts_with("2.0.0: ") && moved.contains("MB downloaded"), "{moved}");
}

#[test]
fn a_tampered_image_is_an_error_with_backoff_and_no_entry() {
    let (w, r) = (world("2.0.0"), rig());
    w.tamper_usr(-1);
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
    assert_eq!(a.core().state().failures, 2);
    assert_eq!(a.step(None), Duration::from_secs(60), "doubled");
    a.step(Some(Command::Check));
    assert_eq!(a.core().state().failures, 3);
}

#[test]
fn a_host_that_booted_a_new_release_tells_the_server_at_once() {
    let w = world("2.0.0");
    let r = server_rig(&w, "2.0.0");
    let server = r.server.clone().unwrap();
    agent(&w, "1.0.0", Slot::A, Strategy::Immediate, &r).step(Some(Command::Check));
    let checkins = server.checkins.lock().unwrap().len();
    loader_boots(&w, "cairn-2.0.0+3.efi", "cairn-2.0.0+2-1.efi");
    let mut a = agent(&w, "2.0.0", Slot::B, Strategy::Immediate, &r);
    // The first step, long before the first timed check: the server hears the new version.
    assert_eq!(a.step(None), ASSESS_POLL);
    let seen = server.checkins.lock().unwrap().clone();
    assert_eq!(seen.len(), checkins + 1, "one status report");
    let last = seen.last().unwrap();
    assert_eq!((last.version.as_str(), last.slot.as_str(), last.state.as_str()), ("2.0.0", "b", "assessing"));
    // Once, not at every health poll.
    r.clock.set(r.clock.get() + 1);
    a.step(None);
    assert_eq!(server.checkins.lock().unwrap().len(), checkins + 1);
    assert_eq!(phase(&a), Phase::Assessing { version: "2.0.0".into(), since: 500 });
}
