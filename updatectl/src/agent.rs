//! The host's own update agent, over its D-Bus API (`org.cairn.Update1` on the system bus).

use futures_util::StreamExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[zbus::proxy(
    interface = "org.cairn.Update1",
    default_service = "org.cairn.Update1",
    default_path = "/org/cairn/Update1"
)]
pub trait Update1 {
    fn check(&self) -> zbus::Result<()>;
    fn apply(&self) -> zbus::Result<()>;
    fn reboot(&self) -> zbus::Result<()>;
    #[zbus(signal, name = "StateChanged")]
    fn phase_changed(&self, state: String, version: String, progress: f64) -> zbus::Result<()>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn current_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn slot(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn staged_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn available_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn last_check(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn last_check_result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn rolled_back(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn last_download(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn strategy(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn cloud_config(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn containers(&self) -> zbus::Result<String>;
}

/// States in which a check is still under way.
const BUSY: [&str; 3] = ["checking", "downloading", "verifying"];

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn ago(t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{}s ago (unix {t})", now.saturating_sub(t))
}

pub async fn print_status(p: &Update1Proxy<'_>) -> zbus::Result<()> {
    let progress = p.progress().await?;
    let state = p.state().await?;
    let shown = if state == "downloading" { format!("{state} ({:.0}%)", progress * 100.0) } else { state };
    println!("State:           {shown}");
    println!("Current version: {} (slot {})", p.current_version().await?, p.slot().await?);
    println!("Staged version:  {}", or_dash(p.staged_version().await?));
    println!("Available:       {}", or_dash(p.available_version().await?));
    println!("Strategy:        {}", p.strategy().await?);
    println!("Source:          {}", or_dash(p.source().await?));
    println!("Last check:      {}: {}", ago(p.last_check().await?), or_dash(p.last_check_result().await?));
    println!("Last error:      {}", or_dash(p.last_error().await?));
    println!("Rolled back:     {}", or_dash(p.rolled_back().await?.join(" ")));
    if let Ok(d) = p.last_download().await {
        println!("Last download:   {}", or_dash(d));
    }
    // An older agent has no such property: say nothing rather than fail.
    if let Ok(c) = p.cloud_config().await {
        println!("Cloud-config:    {}", or_dash(c));
    }
    if let Ok(c) = p.containers().await {
        println!("Containers:      {}", or_dash(c));
    }
    Ok(())
}

pub async fn check(p: &Update1Proxy<'_>, timeout: u64) -> zbus::Result<bool> {
    let mut changes = p.receive_phase_changed().await?;
    p.check().await?;
    let wait = async {
        let mut started = false;
        while let Some(signal) = changes.next().await {
            let args = signal.args()?;
            let state = args.state().as_str();
            started |= BUSY.contains(&state);
            if started && !BUSY.contains(&state) {
                return Ok::<_, zbus::Error>(state.to_string());
            }
            if state == "downloading" {
                eprint!("\rdownloading {} {:.0}%", args.version(), args.progress() * 100.0);
            }
        }
        Err(zbus::Error::Failure("the agent went away".into()))
    };
    let outcome = match tokio::time::timeout(Duration::from_secs(timeout), wait).await {
        Ok(r) => r,
        Err(_) => {
            eprintln!("updatectl: no outcome within {timeout}s");
            return Ok(false);
        }
    };
    // The agent reboots right after staging with the immediate strategy; the bus may go first.
    let state = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("updatectl: {e}");
            return Ok(false);
        }
    };
    eprintln!();
    print_status(p).await?;
    Ok(state != "error")
}

pub async fn proxy(conn: &zbus::Connection) -> zbus::Result<Update1Proxy<'_>> {
    Update1Proxy::builder(conn).cache_properties(zbus::proxy::CacheProperties::No).build().await
}
