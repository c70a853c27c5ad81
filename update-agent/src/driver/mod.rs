//! Runs the core: feeds it the time and an input, saves the state when a step changed it,
//! carries out the request it made through the ports and feeds the answer back, until the core
//! says how long to sleep. Status is published whenever what users would see changed.

use crate::core::status::Status;
use crate::core::{Command, Core, Effect, Identity, Input, Request};
use crate::entries;
use crate::ports::{Clock, Host, LockError, RebootLock, ReleaseSource, RolloutServer, SourceError};
use crate::store::{StateFile, StoreError};
use crate::update::{self, Target};
use cairn_release::update_config::UpdateConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where status changes go (the D-Bus side); called after each change.
pub type Publish = Arc<dyn Fn(&Status) + Send + Sync>;

pub struct Ports<H: Host, C: Clock> {
    pub host: H,
    pub clock: C,
    pub source: Option<Box<dyn ReleaseSource>>,
    /// The rollout server, for events and status reports (its check-ins go through `source`).
    pub server: Option<Arc<dyn RolloutServer>>,
    pub lock: Option<Box<dyn RebootLock>>,
    pub state_file: StateFile,
    pub publish: Publish,
    /// Sleeps between download retries.
    pub wait: Box<dyn Fn(Duration) + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the boot entries: {0}")]
    Esp(#[from] crate::ports::EspError),
}

/// A chain of answers longer than this is a loop in the core.
const MAX_CHAIN: usize = 64;

pub struct Driver<H: Host, C: Clock> {
    core: Core,
    pub ports: Ports<H, C>,
    /// What was published last (progress updates it from the download thread's callback).
    published: Mutex<Option<Status>>,
}

impl<H: Host, C: Clock> Driver<H, C> {
    /// Loads the saved state and settles where an earlier run left off.
    pub fn start(ports: Ports<H, C>, config: UpdateConfig, identity: Identity) -> Result<Driver<H, C>, StartError> {
        let loaded = ports.state_file.load()?;
        let running = ports.host.running().clone();
        // The ESP is only looked at when the state names a release in flight.
        let entry = match loaded.phase.in_flight() {
            Some(version) => {
                let mut found = None;
                ports.host.esp().with_entries(&mut |dir| {
                    found = entries::assessment(dir, &running.os_id, version)?;
                    Ok(())
                })?;
                found
            }
            None => None,
        };
        let core = Core::start(config, running, identity, loaded, entry, ports.clock.now());
        let driver = Driver { core, ports, published: Mutex::new(None) };
        driver.publish(None);
        Ok(driver)
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn status(&self) -> Status {
        self.core.status(None)
    }

    /// Does what is due now (`command`, if any, first) and says how long to wait before the
    /// next step if nothing comes in.
    pub fn step(&mut self, command: Option<Command>) -> Duration {
        let mut input = command.map_or(Input::Tick, Input::Command);
        for _ in 0..MAX_CHAIN {
            let now = self.ports.clock.now();
            let step = self.core.step(now, input);
            for effect in step.effects {
                match effect {
                    Effect::Save(state) => match self.ports.state_file.save(&state) {
                        Ok(()) => self.core.storage_ok(),
                        Err(e) => {
                            eprintln!("error: {e}");
                            self.core.storage_failed(e.to_string());
                        }
                    },
                    Effect::Log(line) => eprintln!("{line}"),
                }
            }
            self.publish(None);
            match step.request {
                None => return step.wake,
                Some(request) => input = self.carry_out(request, now),
            }
        }
        panic!("the core asked for more than {MAX_CHAIN} requests in a row");
    }

    fn publish(&self, download: Option<f64>) {
        publish_changed(&self.core, &self.published, &self.ports.publish, download);
    }

    fn carry_out(&self, request: Request, now: u64) -> Input {
        let p = &self.ports;
        let running = self.core.running();
        match request {
            Request::Offer(checkin) => Input::Offered(match &p.source {
                Some(s) => s.offer(&checkin, now),
                None => Err(SourceError::NotConfigured),
            }),
            Request::Fetch(offer) => Input::Fetched(match &p.source {
                Some(s) => s.fetch(&offer, &running.os_id, now),
                None => Err(SourceError::NotConfigured),
            }),
            Request::WriteUsr(c) => {
                Input::UsrWritten(self.with_target(|source, target| update::write_usr(&c, source.transport(), target)))
            }
            Request::InstallEntry(c) => Input::EntryInstalled(
                self.with_target(|source, target| update::install_entry(&c, source.transport(), target)),
            ),
            Request::ReadHealth => Input::Health(p.host.healthy()),
            Request::Bless(version) => Input::Blessed(
                p.host.esp().with_entries(&mut |dir| entries::bless(dir, &running.os_id, &version).map(drop)),
            ),
            Request::Reboot => Input::Rebooted(p.host.reboot()),
            Request::Lock => Input::Locked(p.lock.as_ref().map_or(Err(LockError::NotConfigured), |l| l.lock())),
            Request::Unlock => Input::Unlocked(p.lock.as_ref().map_or(Ok(()), |l| l.unlock())),
            Request::Deliver(events) => {
                let mut acknowledged = 0;
                for event in &events {
                    let Some(server) = &p.server else { break };
                    match server.report(event) {
                        Ok(()) => {}
                        // Refused: sending it again will not help.
                        Err(e) if !e.is_transient() => eprintln!("the server refused an event: {e}"),
                        Err(e) => {
                            eprintln!("reporting to the server: {e} (will retry)");
                            break;
                        }
                    }
                    acknowledged += 1;
                }
                Input::Delivered { acknowledged }
            }
            Request::ReportStatus(checkin) => Input::StatusReported(match &p.server {
                Some(server) => server.check_in(&checkin).map(drop),
                None => Err(SourceError::NotConfigured),
            }),
        }
    }

    /// Runs an install step against the inactive slot, publishing the download's progress in
    /// whole percents (a signal per read would flood the bus).
    fn with_target<T>(
        &self,
        f: impl FnOnce(&dyn ReleaseSource, &Target) -> Result<T, update::UpdateError>,
    ) -> Result<T, update::UpdateError> {
        let p = &self.ports;
        let source = p.source.as_deref().ok_or(SourceError::NotConfigured)?;
        let device = p.host.target()?;
        let running = self.core.running();
        let (core, published, publish) = (&self.core, &self.published, &p.publish);
        let percent = Mutex::new(None);
        let progress = |done: u64, total: u64| {
            let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
            let whole = (fraction * 100.0) as u32;
            let mut last = percent.lock().unwrap_or_else(|e| e.into_inner());
            if *last != Some(whole) {
                *last = Some(whole);
                publish_changed(core, published, publish, Some(fraction));
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
            esp: p.host.esp(),
            progress: &progress,
            staging_dir: p.state_file.staging_dir(),
            wait: &*p.wait,
            running_usr: running.usr_device.as_deref(),
            running_partition: Some(&running.usr_partition),
        };
        f(source, &target)
    }
}

/// Publishes the core's status if it differs from what was published last.
fn publish_changed(core: &Core, published: &Mutex<Option<Status>>, publish: &Publish, download: Option<f64>) {
    let status = core.status(download);
    let mut last = published.lock().unwrap_or_else(|e| e.into_inner());
    if last.as_ref() != Some(&status) {
        publish(&status);
        *last = Some(status);
    }
}

#[cfg(test)]
mod tests;
