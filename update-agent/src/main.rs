//! `cairn-agent`: the update agent service. A worker thread runs the agent's steps (blocking
//! I/O: downloads, partition writes); the main thread serves the D-Bus API on a small tokio
//! runtime. They share the status through a watch channel and commands through a queue.

use anyhow::{Context, bail};
use cairn_agent::core::status::Status;
use cairn_agent::core::{Command, Identity};
use cairn_agent::credential::{CREDENTIAL_FILE, Credentials};
use cairn_agent::driver::{Driver, Ports, Publish};
use cairn_agent::fleetlock::{FleetLockClient, LockAuth};
use cairn_agent::linux::host::{LinuxHost, detect_running};
use cairn_agent::ports::{RebootLock, ReleaseSource, RolloutServer, SystemClock, Transport};
use cairn_agent::server::HttpRolloutServer;
use cairn_agent::source::DirTransport;
use cairn_agent::store::StateFile;
use cairn_agent::tuf_feed::{TufFeed, TufServerSource};
use cairn_agent::{dbus, http};
use cairn_release::update_config::{self, Strategy, UpdateConfig, UpdateSettings};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

const STATE_FILE: &str = "/var/lib/cairn/agent.json";
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn settings_file(path: &str) -> anyhow::Result<UpdateSettings> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{path}: {}", e.to_string().trim().replace('\n', " ")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateSettings::default()),
        Err(e) => Err(e).context(path.to_string()),
    }
}

/// The image's settings with the host's on top. A bad host file is reported and ignored, so a
/// typo never stops updates that would fix it.
fn load_config() -> UpdateConfig {
    let image = settings_file(update_config::IMAGE_FILE).unwrap_or_else(|e| {
        eprintln!("error: {e}; using defaults");
        UpdateSettings::default()
    });
    let host = settings_file(update_config::HOST_FILE).and_then(|h| {
        let merged = image.overlay(&h);
        merged.resolve().map_err(|e| anyhow::anyhow!("{}: {e}", update_config::HOST_FILE))?;
        Ok(merged)
    });
    let merged = host.unwrap_or_else(|e| {
        eprintln!("error: {e:#}; using the image's settings");
        image.clone()
    });
    merged.resolve().unwrap_or_else(|e| {
        eprintln!("error: {}: {e}; using defaults", update_config::IMAGE_FILE);
        UpdateSettings::default().resolve().expect("defaults are valid")
    })
}

fn transport(source: &str, config: &UpdateConfig, client: &reqwest::blocking::Client) -> Box<dyn Transport> {
    if source.starts_with("http://") || source.starts_with("https://") {
        Box::new(http::HttpTransport::new(source, client.clone()).with_download_timeout(config.download_timeout))
    } else {
        Box::new(DirTransport(PathBuf::from(source.strip_prefix("file://").unwrap_or(source))))
    }
}

fn run_worker(publish: Publish, commands: mpsc::Receiver<Command>) -> anyhow::Result<()> {
    let config = load_config();
    let host = LinuxHost::new(detect_running()?).context("finding this host's disk")?;
    let tuf_root = Path::new("/").join(cairn_release::layout::TUF_ROOT);
    // Without a root to trust, no release can be verified: updates are off, loudly.
    let trusts_a_root = tuf_root.exists();
    if !trusts_a_root {
        eprintln!("error: {} is missing: this image trusts no release feed, so it never updates", tuf_root.display());
    }
    let state = PathBuf::from(cairn_release::layout::TUF_STATE_DIR);
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_string();
    let options = http::ClientOptions {
        read_timeout: READ_TIMEOUT,
        insecure: config.insecure,
        ca_bundle: config.ca_bundle.clone(),
    };
    let client = http::client(&options)?;
    let credentials = config.server.as_ref().map(|url| {
        Arc::new(Credentials::load(
            PathBuf::from(CREDENTIAL_FILE),
            url,
            &machine_id,
            &config.group,
            config.enrollment_token.clone(),
            client.clone(),
        ))
    });
    // With a rollout server, the offer names a release of the server's TUF repository.
    let (source, server): (Option<Box<dyn ReleaseSource>>, _) = match (&config.server, &credentials) {
        (Some(url), Some(credentials)) => {
            if machine_id.is_empty() {
                bail!("a rollout server is configured but /etc/machine-id is empty: the host has no identity");
            }
            let server: Arc<dyn RolloutServer> =
                Arc::new(HttpRolloutServer::new(url, client.clone(), credentials.clone()));
            let source = trusts_a_root.then(|| {
                let transport =
                    Arc::from(transport(&format!("{}/v1/tuf", url.trim_end_matches('/')), &config, &client));
                let feed = TufFeed::new(transport, tuf_root.clone(), state.clone(), &config.channel);
                Box::new(TufServerSource { server: server.clone(), feed }) as Box<dyn ReleaseSource>
            });
            (source, Some(server))
        }
        _ => match &config.source {
            Some(s) if trusts_a_root => {
                let transport = Arc::from(transport(s, &config, &client));
                (Some(Box::new(TufFeed::new(transport, tuf_root.clone(), state, &config.channel)) as _), None)
            }
            _ => (None, None),
        },
    };
    let lock = match (&config.lock_server, config.strategy) {
        (Some(url), Strategy::FleetLock) => {
            if machine_id.is_empty() {
                bail!("strategy fleetlock but /etc/machine-id is empty: the host has no identity");
            }
            // The rollout server knows the host by its credential; another lock server by the
            // group's token, if it has one.
            let auth = match (&config.lock_token, &credentials) {
                (Some(token), _) => LockAuth::Token(token.clone()),
                (None, Some(credentials)) if config.server.as_ref() == Some(url) => LockAuth::Host(credentials.clone()),
                (None, _) => LockAuth::None,
            };
            let client = FleetLockClient::new(url, &machine_id, &config.lock_group, client.clone(), auth);
            Some(Box::new(client) as Box<dyn RebootLock>)
        }
        _ => None,
    };
    let described = match &config.server {
        Some(url) => format!("server {url} (group {}), releases through its TUF repository", config.group),
        None => format!("TUF feed {} (channel {})", config.source.as_deref().unwrap_or("(none)"), config.channel),
    };
    eprintln!(
        "cairn-agent: running {} {} in slot {}; source {}; strategy {}; every {}s",
        host.running.os_id,
        host.running.version,
        host.running.slot.letter(),
        described,
        config.strategy.as_str(),
        config.interval.as_secs(),
    );
    let seed = std::fs::read("/etc/machine-id").unwrap_or_default();
    let ports = Ports {
        host,
        clock: SystemClock::this_host(),
        source,
        server,
        lock,
        state_file: StateFile(PathBuf::from(STATE_FILE)),
        publish,
        wait: Box::new(std::thread::sleep),
    };
    let mut driver = Driver::start(ports, config, Identity { instance_id: machine_id, seed })?;
    let mut command = None;
    loop {
        let wait = driver.step(command.take());
        command = match commands.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
    }
}

fn main() -> ExitCode {
    let (status_tx, status_rx) = tokio::sync::watch::channel(Status::default());
    let publish: Publish = Arc::new(move |s: &Status| {
        status_tx.send_replace(s.clone());
    });
    let (command_tx, command_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || run_worker(publish, command_rx))
        .expect("spawning the worker");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // The bus may start after us or restart: keep trying, the worker runs regardless.
        let mut delay = Duration::from_millis(250);
        let cloud_config = cairn_release::config_status::ConfigStatus::read().map(|s| s.summary()).unwrap_or_default();
        loop {
            if worker.is_finished() {
                return;
            }
            match dbus::serve(status_rx.clone(), command_tx.clone(), cloud_config.clone()).await {
                Ok(()) => return,
                Err(e) if delay >= Duration::from_secs(4) => eprintln!("D-Bus: {e}; retrying"),
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
    match worker.join() {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}
