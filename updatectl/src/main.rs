//! `updatectl`: the host's update agent (`status`, `check`, `apply`, `reboot`, over D-Bus) and the
//! fleet's rollout server (`channel`, `package`, `group`, `instance`, `events`, `rollout`, over
//! its admin API).
//!
//! Exit codes: 0 done; 1 refused (by the agent or the server) or the check failed; 2 usage or
//! local error; 3 server unreachable or failing; 4 not authorized; 5 not found.

mod agent;
mod server;
mod table;

use cairn_release::admin::{
    Channel, ChannelVersion, Group, GroupChange, LockAnonymous, LockGroup, LockRelease, LockSlots, NewChannel,
};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use server::{Client, Failure, Settings, output};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "updatectl", about = "Control Cairn updates: this host's agent, or a fleet's rollout server")]
struct Cli {
    /// The rollout server's URL (for the fleet commands).
    #[arg(long, global = true, env = "CAIRN_SERVER")]
    server: Option<String>,
    /// A file holding an admin token of the server (`cairn-server token create`). The token
    /// itself is never an argument (others see arguments in `ps`): give a file, or set
    /// CAIRN_TOKEN, or `token_file`/`token` in the config file.
    #[arg(long, global = true, env = "CAIRN_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// This host: what the agent is doing, what runs, what is staged, the last check and error.
    Status,
    /// This host: check for an update now and wait for the outcome.
    Check {
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// This host: install the newest release now and reboot into it, whatever the strategy.
    Apply,
    /// This host: reboot into the staged release.
    Reboot,
    /// Fleet: channels (a name and its current version).
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Fleet: signed releases on the server.
    #[command(subcommand)]
    Package(PackageCmd),
    /// Fleet: groups of hosts and their rollout policy.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Fleet: hosts.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Fleet: what hosts reported, newest last.
    Events {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Only events of the last DURATION (30m, 1h, 2d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Fleet: rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Fleet: reboot locks (FleetLock semaphores).
    #[command(subcommand)]
    Lock(LockCmd),
}

#[derive(Subcommand)]
enum LockCmd {
    /// Slots, holders and since when.
    Status {
        #[arg(long)]
        group: Option<String>,
    },
    /// Free the slot a host holds (a host that died holding it).
    Release {
        id: String,
        #[arg(long, default_value = "default")]
        group: String,
    },
    /// Set how many hosts of GROUP may reboot at once (creates the group).
    Slots { group: String, slots: u32 },
    /// Give GROUP a token that lets any client lock and release; prints it once (--remove:
    /// no token).
    Token {
        group: String,
        #[arg(long)]
        remove: bool,
    },
    /// Let clients that cannot authenticate (Zincati without a token) use GROUP's lock, or
    /// no longer (hosts then need their credentials or the group's token).
    Anonymous {
        group: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand)]
enum ChannelCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Point the channel at VERSION: its groups start rolling it out.
    SetVersion {
        name: String,
        version: String,
    },
}

#[derive(Subcommand)]
enum PackageCmd {
    /// The releases of the server's TUF repository (published offline with `cairn release
    /// publish`), which channels and pins may name.
    List,
}

#[derive(Args, Default)]
struct PolicyArgs {
    #[arg(long)]
    channel: Option<String>,
    /// Grant at most N updates per period.
    #[arg(long, value_name = "N")]
    max_per_period: Option<u32>,
    /// The rate's period (1h, 30m, 1d).
    #[arg(long, value_name = "DURATION")]
    period: Option<String>,
    /// One host at a time until the first succeeds (--safe-mode=false to turn off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    safe_mode: Option<bool>,
    /// Halt the rollout after K failures or rollbacks (0: never).
    #[arg(long, value_name = "K")]
    halt_after: Option<u32>,
    /// Only this percentage of the group's hosts.
    #[arg(long, value_name = "P")]
    percentage: Option<u8>,
    /// Install VERSION instead of the channel's ("" to follow the channel again).
    #[arg(long, value_name = "VERSION")]
    pin: Option<String>,
    /// A grant not reported back within DURATION counts as failed.
    #[arg(long, value_name = "DURATION")]
    grant_timeout: Option<String>,
}

#[derive(Subcommand)]
enum GroupCmd {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    Update {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Stop granting updates in the group.
    Pause {
        name: String,
    },
    /// Grant updates again; a halted rollout restarts with its failures forgiven.
    Resume {
        name: String,
    },
    /// A new enrollment token for the group, printed once (hosts trade it for credentials of
    /// their own; an earlier token stops working). --remove: the group takes no enrollments.
    EnrollmentToken {
        name: String,
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Subcommand)]
enum InstanceCmd {
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Forget a host: its record and its credential (it must enroll again, e.g. after its
    /// disk was replaced).
    Forget { id: String },
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Hosts per version and state, the rollout's progress and failures, halted or not.
    Status {
        #[arg(long)]
        group: Option<String>,
    },
}

fn seconds(flag: &str, value: &Option<String>) -> server::Result<Option<u64>> {
    value
        .as_ref()
        .map(|v| {
            cairn_release::duration::parse(v).map(|d| d.as_secs()).map_err(|e| Failure::Usage(format!("{flag}: {e}")))
        })
        .transpose()
}

impl PolicyArgs {
    fn change(&self, name: Option<&str>) -> server::Result<GroupChange> {
        Ok(GroupChange {
            name: name.map(str::to_string),
            channel: self.channel.clone(),
            max_per_period: self.max_per_period,
            period_s: seconds("--period", &self.period)?,
            safe_mode: self.safe_mode,
            halt_after: self.halt_after,
            percentage: self.percentage,
            pinned_version: self.pin.clone(),
            grant_timeout_s: seconds("--grant-timeout", &self.grant_timeout)?,
            ..GroupChange::default()
        })
    }
}

/// `?a=b&c=d` of the parameters that are set (values are names and versions: URL-safe).
fn query(params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = params.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}"))).collect();
    if set.is_empty() { String::new() } else { format!("?{}", set.join("&")) }
}

fn fleet(cli: Cli) -> server::Result<()> {
    use reqwest::Method;
    let as_json = cli.json;
    let client = Client::new(Settings::load(cli.server, cli.token_file)?)?;
    match cli.command {
        Cmd::Channel(ChannelCmd::List) => server::show_list(&client, "/channels", as_json, server::print_channels)?,
        Cmd::Channel(ChannelCmd::Create { name, version }) => {
            let c: Channel = client.call(Method::POST, "/channels", &NewChannel { name, version })?;
            output(&vec![c], as_json, |v| server::print_channels(v))
        }
        Cmd::Channel(ChannelCmd::SetVersion { name, version }) => {
            let c: Channel = client.call(Method::PUT, &format!("/channels/{name}"), &ChannelVersion { version })?;
            output(&vec![c], as_json, |v| server::print_channels(v))
        }
        Cmd::Package(PackageCmd::List) => server::show_list(&client, "/packages", as_json, server::print_packages)?,
        Cmd::Group(GroupCmd::List) => server::show_list(&client, "/groups", as_json, server::print_groups)?,
        Cmd::Group(GroupCmd::Show { name }) => {
            let g: Group = client.get(&format!("/groups/{name}"))?;
            output(&vec![g], as_json, |v| server::print_groups(v))
        }
        Cmd::Group(GroupCmd::Create { name, policy }) => {
            let g: Group = client.call(Method::POST, "/groups", &policy.change(Some(&name))?)?;
            output(&vec![g], as_json, |v| server::print_groups(v))
        }
        Cmd::Group(GroupCmd::Update { name, policy }) => {
            let g: Group = client.call(Method::PATCH, &format!("/groups/{name}"), &policy.change(None)?)?;
            output(&vec![g], as_json, |v| server::print_groups(v))
        }
        Cmd::Group(GroupCmd::Pause { name }) => {
            let pause = GroupChange { updates_enabled: Some(false), ..GroupChange::default() };
            let g: Group = client.call(Method::PATCH, &format!("/groups/{name}"), &pause)?;
            output(&vec![g], as_json, |v| server::print_groups(v))
        }
        Cmd::Group(GroupCmd::Resume { name }) => {
            let resume = GroupChange { updates_enabled: Some(true), halted: Some(false), ..GroupChange::default() };
            let g: Group = client.call(Method::PATCH, &format!("/groups/{name}"), &resume)?;
            output(&vec![g], as_json, |v| server::print_groups(v))
        }
        Cmd::Instance(InstanceCmd::List { group, version, state, limit }) => {
            let q =
                query(&[("group", group), ("version", version), ("state", state), ("limit", Some(limit.to_string()))]);
            server::show_list(&client, &format!("/instances{q}"), as_json, server::print_instances)?
        }
        Cmd::Events { instance, group, since, limit } => {
            let since = seconds("--since", &since)?.map(|s| (table::now_ms() - s as i64 * 1000).to_string());
            let q = query(&[
                ("instance", instance),
                ("group", group),
                ("since", since),
                ("limit", Some(limit.to_string())),
            ]);
            server::show_list(&client, &format!("/events{q}"), as_json, server::print_events)?
        }
        Cmd::Rollout(RolloutCmd::Status { group }) => server::show_list(
            &client,
            &format!("/rollout{}", query(&[("group", group)])),
            as_json,
            server::print_rollout,
        )?,
        Cmd::Lock(LockCmd::Status { group }) => {
            server::show_list(&client, &format!("/locks{}", query(&[("group", group)])), as_json, server::print_locks)?
        }
        Cmd::Lock(LockCmd::Release { id, group }) => {
            let release = LockRelease { id: id.clone() };
            let v: Value = client.call(Method::POST, &format!("/locks/{group}/release"), &release)?;
            output(&v, as_json, |_| println!("released {id}'s reboot slot in {group}"))
        }
        Cmd::Lock(LockCmd::Slots { group, slots }) => {
            let groups: Vec<LockGroup> =
                client.call(Method::PUT, &format!("/locks/{group}"), &LockSlots { slots: slots.into() })?;
            output(&groups, as_json, |v| server::print_locks(v))
        }
        Cmd::Lock(LockCmd::Anonymous { group, state }) => {
            let anonymous = LockAnonymous { anonymous: state == "on" };
            let groups: Vec<LockGroup> = client.call(Method::PUT, &format!("/locks/{group}/anonymous"), &anonymous)?;
            output(&groups, as_json, |v| server::print_locks(v))
        }
        Cmd::Group(GroupCmd::EnrollmentToken { name, remove }) => {
            let path = format!("/groups/{name}/enrollment-token");
            if remove {
                let _: Value = client.call(Method::DELETE, &path, &Value::Null)?;
                output(&json!({"group": name, "token": null}), as_json, |_| println!("{name}: takes no enrollments"))
            } else {
                let v: Value = client.call(Method::POST, &path, &Value::Null)?;
                output(&v, as_json, |v| println!("{}", v["token"].as_str().unwrap_or_default()))
            }
        }
        Cmd::Instance(InstanceCmd::Forget { id }) => {
            let _: Value = client.call(Method::DELETE, &format!("/instances/{id}"), &Value::Null)?;
            output(&json!({"forgotten": id}), as_json, |_| println!("forgot {id}: it enrolls again to check in"))
        }
        Cmd::Lock(LockCmd::Token { group, remove }) => {
            if remove {
                let _: Value = client.call(Method::DELETE, &format!("/locks/{group}/token"), &Value::Null)?;
                output(&json!({"group": group, "token": null}), as_json, |_| println!("{group}: no token needed"))
            } else {
                let v: Value = client.call(Method::POST, &format!("/locks/{group}/token"), &Value::Null)?;
                output(&v, as_json, |v| println!("{}", v["token"].as_str().unwrap_or_default()))
            }
        }
        Cmd::Status | Cmd::Check { .. } | Cmd::Apply | Cmd::Reboot => unreachable!("host commands"),
    }
    Ok(())
}

async fn host(command: Cmd) -> zbus::Result<bool> {
    let conn = zbus::Connection::system().await?;
    let p = agent::proxy(&conn).await?;
    match command {
        Cmd::Status => agent::print_status(&p).await.map(|()| true),
        Cmd::Check { timeout } => agent::check(&p, timeout).await,
        Cmd::Apply => p.apply().await.map(|()| true),
        Cmd::Reboot => p.reboot().await.map(|()| true),
        _ => unreachable!("fleet commands"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Status | Cmd::Check { .. } | Cmd::Apply | Cmd::Reboot) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        return match runtime.block_on(host(cli.command)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("updatectl: {e}");
                ExitCode::from(2)
            }
        };
    }
    match fleet(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("updatectl: {}", f.message());
            ExitCode::from(f.exit_code())
        }
    }
}
