//! `cairn`: build Cairn images and boot them in QEMU.

use anyhow::{Context, Result};
use cairn_image::lock::LockMode;
use cairn_image::{binaries, build};
use clap::{Parser, Subcommand};
use run::{RunOptions, UserData, run_vm};
use std::io::IsTerminal;
use std::path::PathBuf;

mod run;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Build Cairn disk images and boot them in QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ReleaseCommand {
    /// Make FEED a TUF repository: the role keys in DIR unless there (0600, never overwritten;
    /// three root keys of which two sign, a targets, a snapshot and a timestamp key) and the
    /// first root, targets, snapshot and timestamp metadata.
    Init {
        #[arg(long, value_name = "FEED")]
        feed: PathBuf,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
    },
    /// Add a release directory to a TUF feed (`cairn release init`; any HTTP server can serve
    /// it): release.json and the artifacts it names (each checked against its sha256) become
    /// targets, and targets, snapshot and timestamp are signed again.
    Publish {
        #[arg(long, value_name = "FEED")]
        feed: PathBuf,
        /// The feed's role keys (targets, snapshot, timestamp).
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// A channel the release is on (repeatable).
        #[arg(long = "channel", default_value = "stable")]
        channels: Vec<String>,
        /// The release directory (`cairn build --trust-root` writes OUT/release).
        release: PathBuf,
    },
    /// Sign a new timestamp for a TUF feed with its timestamp key alone (before the last one
    /// expires: a cron job on whatever serves the feed).
    Refresh {
        #[arg(long, value_name = "FEED")]
        feed: PathBuf,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// How long the new timestamp is valid (e.g. 1d, 12h).
        #[arg(long, value_name = "DURATION", default_value = "1d", conflicts_with = "all")]
        expires: String,
        /// Sign targets (the same ones) and snapshot again too, with their usual lifetimes: needs
        /// the targets key, before the targets (90 days) or snapshot (7 days) run out.
        #[arg(long)]
        all: bool,
    },
    /// Replace a TUF feed's targets, snapshot or timestamp key (lost, or leaving): a new key in
    /// DIR, the old one moved to DIR/retired, the next root version naming the new key, and the
    /// metadata signed again. Hosts follow the chain of roots; nothing changes on them.
    Rotate {
        #[arg(long, value_name = "FEED")]
        feed: PathBuf,
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        #[arg(long, value_parser = ["targets", "snapshot", "timestamp"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a #cloud-config file as a host would read it at boot. Exit status: 0 valid, 1
    /// valid with warnings, 2 refused (a host would apply nothing from it).
    Validate {
        /// The file (`-`: standard input); gzip-compressed is fine.
        file: PathBuf,
        /// One JSON document: {"file", "valid", "diagnostics": [{severity, line, column, path, message}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Build a disk image from a spec.
    Build {
        #[arg(long, default_value = "images/default.toml")]
        spec: PathBuf,
        /// OS version of the image (overrides the spec's os.version).
        #[arg(long)]
        version: Option<String>,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Cache of downloads and intermediate results [default: $CAIRN_CACHE or ~/.cache/cairn]
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Take prebuilt static binaries from DIR instead of building them with cargo.
        #[arg(long, value_name = "DIR")]
        binaries: Option<PathBuf>,
        /// The disk's formats, comma-separated: raw (always made), qcow2, vhd (fixed, Azure),
        /// vmdk (stream-optimized: VMware, AWS), gce (disk.tar.gz). Default: the spec's
        /// `output.formats` (raw and qcow2 unless it says).
        #[arg(long, value_name = "LIST")]
        format: Option<String>,
        /// Trust this TUF root metadata (a feed's `metadata/1.root.json`): the image reads its
        /// feed as a TUF repository, and the release is written to OUT/release/ for
        /// `cairn release publish --keys`.
        #[arg(long, value_name = "ROOT.json")]
        trust_root: Option<PathBuf>,
        /// Take exactly the packages of the lock beside the spec (SPEC.lock); fail, naming
        /// them, if any cannot be had at its locked version, or if the lock is missing or stale.
        #[arg(long, conflicts_with = "update_lock")]
        locked: bool,
        /// Resolve the packages again (what the archive has now), rewrite the lock and print
        /// what changed.
        #[arg(long)]
        update_lock: bool,
        /// Also write the composed OS (what becomes /usr, the factory /etc inside it) as an OCI
        /// image, its layers by Debian package, to a containers-image reference: oci:DIR:TAG,
        /// oci-archive:FILE, docker://REGISTRY/NAME:TAG (registries as registries.conf says).
        #[arg(long, value_name = "REF")]
        push: Option<String>,
        /// Take the OS content from an image instead of the spec's packages: Cairn's exported
        /// image or one derived from it (a Containerfile FROM it), as oci:DIR:TAG,
        /// oci-archive:FILE or docker://REGISTRY/NAME:TAG. The spec gives the rest: kernel
        /// command line, initramfs, partitions, update settings. Layers are cached.
        #[arg(long, value_name = "REF", conflicts_with = "push")]
        from: Option<String>,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Make the TUF role keys missing in DIR (0600, never overwritten): three root keys of
    /// which two sign, a targets, a snapshot and a timestamp key. `release init` does it too.
    Keygen {
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
    },
    /// Releases and their TUF feeds.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Host configuration (#cloud-config).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Boot an image in QEMU with its serial console on this terminal. Ctrl-C powers it off.
    Run {
        #[arg(long, default_value = "out/disk.qcow2")]
        image: PathBuf,
        #[command(flatten)]
        options: RunOptions,
        /// User data (#cloud-config) for the host, through QEMU's fw_cfg.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Hand --config over on a config drive (a `config-2` volume) instead of fw_cfg.
        #[arg(long, requires = "config")]
        config_drive: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("cairn: error: {e:#}");
        std::process::exit(1);
    }
}

/// `1024`, `1024M`, `2G` -> MiB.
fn parse_mem_mib(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u32 = num.parse().map_err(|_| format!("{s:?} is not a size like 1024, 512M or 2G"))?;
    match n.checked_mul(mult) {
        Some(mib) if mib >= 128 => Ok(mib),
        _ => Err(format!("{s:?}: guest memory must be at least 128M")),
    }
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number")),
        // A fixed default keeps builds reproducible when nobody sets it.
        Err(_) => Ok(1_700_000_000),
    }
}

/// `cairn config validate`: prints every diagnostic as FILE:LINE:COLUMN: severity: path: message.
fn validate(file: &std::path::Path, json: bool) -> Result<i32> {
    use cairn_config::Severity;
    let data = if file.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)?;
        data
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    let parsed = cairn_config::parse(&data);
    let valid = !parsed.is_refused();
    let diagnostics = parsed.into_diagnostics();
    let name = file.display().to_string();
    if json {
        let doc = serde_json::json!({"file": name, "valid": valid, "diagnostics": diagnostics});
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for d in &diagnostics {
            println!("{name}:{d}");
        }
        let warnings = diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
        let errors = diagnostics.len() - warnings;
        match (valid, warnings) {
            (true, 0) => println!("{name}: valid"),
            (true, w) => println!("{name}: valid, {w} warning(s)"),
            (false, _) => {
                println!("{name}: refused: {errors} error(s), {warnings} warning(s); a host would apply none of it")
            }
        }
    }
    Ok(match (valid, diagnostics.is_empty()) {
        (false, _) => 2,
        (true, false) => 1,
        (true, true) => 0,
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Config(ConfigCommand::Validate { file, json }) => {
            let code = validate(&file, json)?;
            std::process::exit(code);
        }
        Command::Keygen { keys } => {
            let made = cairn_tuf::keys::generate(&keys)?;
            for key in &made {
                println!("made {}", key.display());
            }
            println!("{} new key(s) in {}; keep the root and targets keys offline", made.len(), keys.display());
            Ok(())
        }
        Command::Release(ReleaseCommand::Init { feed, keys }) => {
            cairn_tuf::init(&feed, &keys, unix_now()?, cairn_tuf::Expiry::default())?;
            println!("{} is a TUF repository: metadata/1.root.json (keys in {})", feed.display(), keys.display());
            Ok(())
        }
        Command::Release(ReleaseCommand::Publish { feed, keys, release, channels }) => {
            let names =
                cairn_tuf::publish(&feed, &keys, &release, &channels, unix_now()?, cairn_tuf::Expiry::default())?;
            println!("published {} target(s) to {}: {}", names.len(), feed.display(), names.join(", "));
            Ok(())
        }
        Command::Release(ReleaseCommand::Refresh { feed, keys, all: true, .. }) => {
            cairn_tuf::resign(&feed, &keys, unix_now()?, cairn_tuf::Expiry::default())?;
            println!("targets, snapshot and timestamp of {} signed again", feed.display());
            Ok(())
        }
        Command::Release(ReleaseCommand::Refresh { feed, keys, expires, all: false }) => {
            let valid = cairn_release::duration::parse(&expires).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let version = cairn_tuf::refresh(&feed, &keys, unix_now()?, valid.as_secs())?;
            println!("timestamp {version} of {} valid for {expires}", feed.display());
            Ok(())
        }
        Command::Release(ReleaseCommand::Rotate { feed, keys, role }) => {
            let role = match role.as_str() {
                "targets" => cairn_tuf::keys::RoleType::Targets,
                "snapshot" => cairn_tuf::keys::RoleType::Snapshot,
                _ => cairn_tuf::keys::RoleType::Timestamp,
            };
            let version = cairn_tuf::rotate(&feed, &keys, role, unix_now()?, cairn_tuf::Expiry::default())?;
            println!("root {version} of {} names the new {} key", feed.display(), cairn_tuf::keys::role_name(role));
            Ok(())
        }
        Command::Build {
            spec,
            version,
            out,
            cache,
            binaries,
            format,
            trust_root,
            locked,
            update_lock,
            push,
            from,
            quiet,
        } => {
            let opts = build::BuildOptions {
                spec_path: spec,
                version,
                out: out.clone(),
                cache: cache.unwrap_or_else(cairn_image::default_cache_dir),
                source_date_epoch: source_date_epoch()?,
                binaries: binaries.map(binaries::Source::Dir).unwrap_or_else(binaries::Source::default_cargo),
                interactive: std::io::stderr().is_terminal(),
                quiet,
                formats: format.as_deref().map(cairn_image::formats::parse_list).transpose()?,
                trust_root,
                lock: match (locked, update_lock) {
                    (true, _) => LockMode::Locked,
                    (_, true) => LockMode::Update,
                    _ => LockMode::Use,
                },
                push,
                from,
            };
            let report = build::build(&opts)?;
            println!(
                "built {} {} in {:.1} s into {} (usr root hash {})",
                report.os_id,
                report.version,
                report.total_ms as f64 / 1000.0,
                out.display(),
                &report.usr.root_hash[..16]
            );
            Ok(())
        }
        Command::Run { image, options, config, config_drive } => {
            let user_data = config.map(|file| UserData { file, drive: config_drive });
            run_vm(image, options, user_data)
        }
    }
}

fn unix_now() -> Result<u64> {
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())
}

fn parse_nic(s: &str) -> Result<cairn_qemu::Nic, String> {
    cairn_qemu::Nic::parse(s).ok_or_else(|| format!("{s:?}: one of {}", cairn_qemu::Nic::NAMES.join(", ")))
}

fn parse_disk_bus(s: &str) -> Result<cairn_qemu::DiskBus, String> {
    cairn_qemu::DiskBus::parse(s).ok_or_else(|| format!("{s:?}: one of {}", cairn_qemu::DiskBus::NAMES.join(", ")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_sizes() {
        assert_eq!(super::parse_mem_mib("2G"), Ok(2048));
        assert_eq!(super::parse_mem_mib("512M"), Ok(512));
        assert_eq!(super::parse_mem_mib("1024"), Ok(1024));
        assert!(super::parse_mem_mib("64M").is_err());
        assert!(super::parse_mem_mib("lots").is_err());
    }
}
