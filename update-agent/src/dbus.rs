//! `org.cairn.Update1` on the system bus (dbus-daemon, started by cairn-init): the agent's
//! state as properties, `Check`/`Apply`/`Reboot` as methods, and a `StateChanged` signal on
//! every change. The bus policy (/usr/share/dbus-1/system.d/org.cairn.Update1.conf) lets only
//! root call methods; anyone may read.

use crate::core::Command;
use crate::core::status::Status;
use std::sync::mpsc::Sender;
use tokio::sync::watch;
use zbus::fdo;
use zbus::object_server::SignalEmitter;

pub const BUS_NAME: &str = "org.cairn.Update1";
pub const OBJECT_PATH: &str = "/org/cairn/Update1";

pub struct UpdateApi {
    status: watch::Receiver<Status>,
    commands: Sender<Command>,
    /// What this boot made of its cloud-config (fixed for the boot).
    cloud_config: String,
}

impl UpdateApi {
    fn now(&self) -> Status {
        self.status.borrow().clone()
    }

    fn send(&self, c: Command) -> fdo::Result<()> {
        self.commands.send(c).map_err(|_| fdo::Error::Failed("the agent's worker has stopped".into()))
    }
}

#[zbus::interface(name = "org.cairn.Update1")]
impl UpdateApi {
    /// Checks the source now; a release found is staged (and booted, per the strategy).
    async fn check(&self) -> fdo::Result<()> {
        self.send(Command::Check)
    }

    /// Checks, stages and reboots into the newest release now, whatever the strategy.
    async fn apply(&self) -> fdo::Result<()> {
        self.send(Command::Apply)
    }

    /// Reboots into the staged release.
    async fn reboot(&self) -> fdo::Result<()> {
        if self.now().staged_version.is_empty() {
            return Err(fdo::Error::Failed("nothing is staged to reboot into".into()));
        }
        self.send(Command::Reboot)
    }

    #[zbus(signal, name = "StateChanged")]
    async fn emit_state_changed(e: &SignalEmitter<'_>, state: &str, version: &str, progress: f64) -> zbus::Result<()>;

    #[zbus(property)]
    async fn state(&self) -> String {
        self.now().state
    }
    #[zbus(property)]
    async fn current_version(&self) -> String {
        self.now().current_version
    }
    #[zbus(property)]
    async fn slot(&self) -> String {
        self.now().slot
    }
    #[zbus(property)]
    async fn staged_version(&self) -> String {
        self.now().staged_version
    }
    #[zbus(property)]
    async fn available_version(&self) -> String {
        self.now().available_version
    }
    #[zbus(property)]
    async fn progress(&self) -> f64 {
        self.now().progress
    }
    /// Unix seconds; 0: never.
    #[zbus(property)]
    async fn last_check(&self) -> u64 {
        self.now().last_check
    }
    #[zbus(property)]
    async fn last_check_result(&self) -> String {
        self.now().last_check_result
    }
    #[zbus(property)]
    async fn last_error(&self) -> String {
        self.now().last_error
    }
    #[zbus(property)]
    async fn rolled_back(&self) -> Vec<String> {
        self.now().rolled_back
    }
    /// What the last install moved (downloaded, reused from the host's disks, the image).
    #[zbus(property)]
    async fn last_download(&self) -> String {
        self.now().last_download
    }
    #[zbus(property)]
    async fn strategy(&self) -> String {
        self.now().strategy
    }
    /// The feed's URL or directory; empty: none configured.
    #[zbus(property)]
    async fn source(&self) -> String {
        self.now().source
    }
    /// This boot's cloud-config: applied (from where), refused (the errors, and what is in
    /// effect instead), none found; empty when the host has no cloud-config step.
    #[zbus(property)]
    async fn cloud_config(&self) -> String {
        self.cloud_config.clone()
    }
    /// What each of cloud-config's containers is doing (pulling, running, failed with why,
    /// exited), read when asked; empty when there are none.
    #[zbus(property)]
    async fn containers(&self) -> String {
        use cairn_release::container_status::{DIR, SPECS_DIR, read_all, summary};
        summary(&read_all(std::path::Path::new(DIR), std::path::Path::new(SPECS_DIR)))
    }
}

/// Serves the API until the bus goes away; every status change is signalled.
pub async fn serve(
    mut status: watch::Receiver<Status>,
    commands: Sender<Command>,
    cloud_config: String,
) -> zbus::Result<()> {
    let api = UpdateApi { status: status.clone(), commands, cloud_config };
    let conn = zbus::connection::Builder::system()?.name(BUS_NAME)?.serve_at(OBJECT_PATH, api)?.build().await?;
    let iface = conn.object_server().interface::<_, UpdateApi>(OBJECT_PATH).await?;
    let mut last = status.borrow_and_update().clone();
    while status.changed().await.is_ok() {
        let now = status.borrow_and_update().clone();
        let e = iface.signal_emitter();
        let version = if now.staged_version.is_empty() { &now.available_version } else { &now.staged_version };
        UpdateApi::emit_state_changed(e, &now.state, version, now.progress).await?;
        let api = iface.get().await;
        if now.state != last.state {
            api.state_changed(e).await?;
        }
        if now.progress != last.progress {
            api.progress_changed(e).await?;
        }
        if now.staged_version != last.staged_version {
            api.staged_version_changed(e).await?;
        }
        if now.available_version != last.available_version {
            api.available_version_changed(e).await?;
        }
        if now.last_check != last.last_check || now.last_check_result != last.last_check_result {
            api.last_check_changed(e).await?;
            api.last_check_result_changed(e).await?;
        }
        if now.last_error != last.last_error {
            api.last_error_changed(e).await?;
        }
        if now.last_download != last.last_download {
            api.last_download_changed(e).await?;
        }
        if now.rolled_back != last.rolled_back {
            api.rolled_back_changed(e).await?;
        }
        last = now;
    }
    Ok(())
}
