//! The bridge network's packet filter base: the masquerade (of the subnet, of the host's own and
//! of hairpin connections to published ports), the published ports' chain (`super::ports` fills
//! it), forwarding to and from the bridge whatever FORWARD's policy, and the guard on 127/8;
//! loaded from the image's rules once a boot, before the first sandbox on the bridge. The CNI
//! plugins touch no packet filter (10-cairn.conflist: the bridge plugin's `ipMasq` off, no
//! portmap, no firewall plugin): each iptables run costs 0.1 s and more on a small or emulated
//! host, and they made dozens a sandbox.

use super::iptables::{self, Restore};
use std::path::{Path, PathBuf};

/// The rules, in iptables-restore's format (on the verified `/usr`).
pub const RULES: &str = "/usr/lib/cairn/cni/bridge.rules";
/// Present once this boot's packet filter has the rules (on /run: gone with the tables).
pub const LOADED: &str = "/run/cairn/containers/.bridge-rules-loaded";
/// The bridge the conflist makes, which the rules name.
pub const BRIDGE: &str = "cairn0";

/// Present once this boot's DOCKER-USER chain jumps to the rules' forwarding chain (the Docker
/// variant).
pub const DOCKER_HOOKED: &str = "/run/cairn/containers/.docker-user-hooked";
/// dockerd, on the Docker variant: its rules come before Cairn's in FORWARD unless hooked.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// dockerd's chain for rules of the host's own: it jumps there first in FORWARD, then accepts
/// whatever leaves docker0 (a Docker container reaching any Cairn container's address).
const DOCKER_USER: &str = "DOCKER-USER";
/// The rules' forwarding chain.
const FORWARD: &str = "CAIRN-FORWARD";

/// What a sandbox on the bridge needs done to the packet filter first, once a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The rules, in iptables-restore's format, and where their being loaded is noted.
    pub rules: PathBuf,
    pub loaded: PathBuf,
    /// Where DOCKER-USER's jump is noted, when dockerd is installed.
    pub docker_hooked: Option<PathBuf>,
}

impl Base {
    /// This image's: the rules on `/usr`, DOCKER-USER hooked if dockerd is there.
    pub fn of_this_host() -> Base {
        Base {
            rules: RULES.into(),
            loaded: LOADED.into(),
            docker_hooked: Path::new(DOCKERD).exists().then(|| DOCKER_HOOKED.into()),
        }
    }

    fn rules_needed(&self) -> bool {
        !self.loaded.exists()
    }

    fn hook_needed(&self) -> bool {
        self.docker_hooked.as_deref().is_some_and(|h| !h.exists())
    }
}

/// The rules being loaded: `start` begins it, `finish` waits for it. The CNI plugins touch no
/// packet filter, so the rules load while containerd makes the first sandbox (a tenth of a
/// second or more under emulation, once a boot).
pub struct Loading<L> {
    base: Base,
    restore: Option<Restore>,
    /// The network lock, held until the base is in (let go at once if it was): the rules add
    /// to built-in chains, so loading them twice would double those entries.
    lock: Option<L>,
}

/// Starts loading `base` unless it is in, then holding `lock` until `finish`.
pub fn start<L>(base: Base, lock: L) -> Result<Loading<L>, String> {
    let (rules_needed, hook_needed) = (base.rules_needed(), base.hook_needed());
    let mut loading = Loading { base, restore: None, lock: None };
    if !rules_needed && !hook_needed {
        return Ok(loading);
    }
    loading.lock = Some(lock);
    if rules_needed {
        let rules = &loading.base.rules;
        let input =
            std::fs::File::open(rules).map_err(|e| format!("the bridge network's rules {}: {e}", rules.display()))?;
        let doing = format!("loading {}", rules.display());
        loading.restore = Some(iptables::start_restore(input, doing)?);
    }
    Ok(loading)
}

impl<L> Loading<L> {
    /// Waits for the rules, notes them loaded, hooks DOCKER-USER if needed, and lets the lock
    /// go. iptables-restore commits each table whole: on an error the failing table has
    /// nothing of it, and the next sandbox tries again (a table committed before it then gets
    /// its jumps twice, which changes nothing a packet meets).
    pub fn finish(self) -> Result<(), String> {
        if let Some(restore) = self.restore {
            restore.wait()?;
            let loaded = &self.base.loaded;
            std::fs::write(loaded, b"")
                .map_err(|e| format!("noting the bridge network's rules loaded in {}: {e}", loaded.display()))?;
        }
        if self.lock.is_some()
            && let Some(hooked) = self.base.docker_hooked.as_deref().filter(|h| !h.exists())
        {
            hook_docker_user()?;
            std::fs::write(hooked, b"")
                .map_err(|e| format!("noting DOCKER-USER hooked in {}: {e}", hooked.display()))?;
        }
        Ok(())
    }
}

/// Puts a jump to the rules' forwarding chain first in DOCKER-USER, making the chain if dockerd
/// has not yet (dockerd keeps a chain it finds). Never emptied: the host's own rules for
/// Docker go there.
fn hook_docker_user() -> Result<(), String> {
    // Fails when the chain is there already, which is as good.
    let _ = iptables::iptables(&["-N", DOCKER_USER], "making DOCKER-USER");
    iptables::iptables(&["-I", DOCKER_USER, "-j", FORWARD], &format!("hooking {FORWARD} to {DOCKER_USER}"))
}

/// Lets connections from the host's 127.0.0.1 to a published port cross the bridge (what
/// portmap would do with `snat` on). The rules are loaded first: they drop what else would come in
/// to 127/8 through it (CVE-2020-8558).
pub fn route_localnet() -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet");
    std::fs::write(&path, b"1").map_err(|e| format!("writing {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn overlay(path: &str) -> String {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/overlay").join(path);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    #[test]
    fn the_base_is_loaded_and_docker_user_hooked_once_a_boot() {
        let dir = tempfile::tempdir().unwrap();
        let base = super::Base {
            rules: dir.path().join("rules"),
            loaded: dir.path().join("loaded"),
            docker_hooked: Some(dir.path().join("hooked")),
        };
        assert!(base.rules_needed() && base.hook_needed());
        std::fs::write(&base.loaded, b"").unwrap();
        assert!(!base.rules_needed() && base.hook_needed(), "a hook that failed is tried again");
        std::fs::write(dir.path().join("hooked"), b"").unwrap();
        assert!(!base.rules_needed() && !base.hook_needed());
        let without_docker = super::Base { docker_hooked: None, ..base };
        assert!(!without_docker.hook_needed(), "no DOCKER-USER where there is no dockerd");
        // Nothing to do: the lock is let go at once, no process is run.
        let loading = super::start(without_docker, ()).unwrap();
        assert!(loading.lock.is_none() && loading.restore.is_none());
        loading.finish().unwrap();
    }

    /// The conflist and the rules name the same subnet and bridge, and leave the masquerades
    /// and forwarding to the rules: the rules stand in for what the plugins would otherwise
    /// make, so the two must not drift.
    #[test]
    fn the_rules_publish_masquerade_and_forward_the_conflists_subnet_and_guard_127() {
        let rules = overlay("container-host/usr/lib/cairn/cni/bridge.rules");
        let conflist = overlay("container-host/usr/lib/cairn/cni/bridge/10-cairn.conflist");
        let list: serde_json::Value = serde_json::from_str(&conflist).unwrap();
        let plugins = list["plugins"].as_array().unwrap();
        let plugin = |kind: &str| plugins.iter().find(|p| p["type"] == kind).cloned().unwrap();
        let bridge = plugin("bridge");
        assert_eq!(bridge["bridge"], super::BRIDGE, "the bridge route_localnet is set on");
        assert_eq!(bridge["ipMasq"], false, "the rules masquerade, not the bridge plugin");
        assert!(!plugins.iter().any(|p| p["type"] == "portmap"), "the runner publishes ports, not portmap");
        assert!(!plugins.iter().any(|p| p["type"] == "firewall"), "the rules forward, not the firewall plugin");
        let (subnet, bridge) = (bridge["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap(), super::BRIDGE);
        let ports = super::super::ports::CHAIN;
        for rule in [
            format!(":{ports} - [0:0]"),
            format!("-A PREROUTING -m addrtype --dst-type LOCAL -j {ports}"),
            format!("-A OUTPUT -m addrtype --dst-type LOCAL -j {ports}"),
            format!("-s {subnet} -j MASQUERADE"),
            format!("-s {subnet} -d {subnet} -m conntrack --ctstate DNAT -j MASQUERADE"),
            format!("-s 127.0.0.0/8 -o {bridge} -j MASQUERADE"),
            format!("-i {bridge} -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"),
            format!("-i {bridge} -j ACCEPT"),
            format!(
                "-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n-A CAIRN-FORWARD -o {bridge} -j DROP"
            ),
        ] {
            assert!(rules.contains(&rule), "no {rule:?} in the rules");
        }
    }
}
