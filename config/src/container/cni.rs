//! The CNI plugins Debian ships (`containernetworking-plugins`), run as the CNI specification
//! says: each plugin an executable given its network's configuration on stdin and the
//! container's namespace in its environment. A container's network is the loopback plugin on
//! `lo` and Cairn's network list (the bridge, with host-local addresses) on `eth0`, the two run
//! side by side, as containerd runs a sandbox's networks.

use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where Debian installs the plugins.
pub const BIN_DIR: &str = "/usr/lib/cni";
/// Cairn's network lists, by network setting.
pub const BRIDGE_LIST: &str = "/usr/lib/cairn/cni/bridge/10-cairn.conflist";
pub const NONE_LIST: &str = "/usr/lib/cairn/cni/none/10-cairn-none.conflist";

/// CNI's two verbs Cairn uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
        }
    }
}

/// One plugin's run: which executable, its configuration (stdin) and interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub plugin: String,
    pub config: Value,
    pub ifname: &'static str,
}

/// The runs a network list makes, in order (pure): each plugin's configuration with the list's
/// name and version, and the previous plugin's result for a chained ADD.
pub fn list_invocations(list: &Value, ifname: &'static str) -> Result<Vec<Invocation>, String> {
    let name = list["name"].as_str().ok_or("a network list without a name")?;
    let version = list["cniVersion"].as_str().ok_or("a network list without a cniVersion")?;
    let plugins = list["plugins"].as_array().ok_or("a network list without plugins")?;
    plugins
        .iter()
        .map(|p| {
            let plugin = p["type"].as_str().ok_or_else(|| format!("network {name}: a plugin without a type"))?;
            if !plugin.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("network {name}: plugin type {plugin:?} is not a plain name"));
            }
            let mut config = p.clone();
            config["name"] = json!(name);
            config["cniVersion"] = json!(version);
            Ok(Invocation { plugin: plugin.to_string(), config, ifname })
        })
        .collect()
}

/// The loopback network every container has.
pub fn loopback() -> Invocation {
    Invocation {
        plugin: "loopback".into(),
        config: json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}),
        ifname: "lo",
    }
}

/// The first IPv4 address of a CNI result (`ips[].address`, `10.88.0.2/16`), without its prefix.
pub fn ipv4_of(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"].as_array()?.iter().filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok()).next()
}

/// Runs one plugin; its result (ADD) or `null` (DEL).
fn invoke(inv: &Invocation, verb: Verb, id: &str, netns: &Path, prev: Option<&Value>) -> Result<Value, String> {
    let mut config = inv.config.clone();
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    let binary = Path::new(BIN_DIR).join(&inv.plugin);
    let mut child = Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", verb.name())
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", BIN_DIR)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    let input = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    // A plugin reads all of its stdin before it writes: the write cannot block on its output.
    child
        .stdin
        .take()
        .map(|mut s| s.write_all(&input))
        .transpose()
        .map_err(|e| format!("{}: stdin: {e}", inv.plugin))?;
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", inv.plugin))?;
    let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{}: its output is not JSON: {e}", inv.plugin))?
    };
    if !out.status.success() {
        // A plugin's error: {"code": N, "msg": "...", "details": "..."}.
        let said = match (stdout["msg"].as_str(), stdout["details"].as_str()) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Some(m), _) => m.to_string(),
            _ => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        return Err(format!("CNI {} {} on {}: {said} ({})", inv.plugin, verb.name(), inv.ifname, out.status));
    }
    Ok(stdout)
}

/// Runs a list's plugins for ADD (in order, each given the last result) or DEL (in reverse):
/// the last result.
pub fn run(invocations: &[Invocation], verb: Verb, id: &str, netns: &Path) -> Result<Value, String> {
    let mut result = Value::Null;
    match verb {
        Verb::Add => {
            for inv in invocations {
                let prev = (!result.is_null()).then_some(&result);
                result = invoke(inv, verb, id, netns, prev)?;
            }
        }
        Verb::Del => {
            // Every plugin is asked, whichever fails: what one left is another's to release.
            let mut failed = Vec::new();
            for inv in invocations.iter().rev() {
                if let Err(e) = invoke(inv, verb, id, netns, None) {
                    failed.push(e);
                }
            }
            if !failed.is_empty() {
                return Err(failed.join("; "));
            }
        }
    }
    Ok(result)
}

/// The network list at `path`.
pub fn read_list(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_becomes_one_run_per_plugin() {
        let list = json!({"cniVersion": "1.0.0", "name": "cairn", "plugins": [
            {"type": "bridge", "bridge": "cairn0", "ipam": {"type": "host-local"}},
            {"type": "tuning"}
        ]});
        let runs = list_invocations(&list, "eth0").unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].plugin, "bridge");
        assert_eq!(runs[0].config["name"], "cairn");
        assert_eq!(runs[0].config["cniVersion"], "1.0.0");
        assert_eq!(runs[0].config["bridge"], "cairn0");
        assert_eq!(runs[1].ifname, "eth0");
        let evil = json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]});
        assert!(list_invocations(&evil, "eth0").unwrap_err().contains("not a plain name"));
        assert!(list_invocations(&json!({"plugins": []}), "eth0").unwrap_err().contains("name"));
    }

    #[test]
    fn the_address_is_read_from_a_result() {
        let result = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
            "ips": [{"address": "fd00::2/64"}, {"address": "10.88.0.7/16", "gateway": "10.88.0.1"}]});
        assert_eq!(ipv4_of(&result), Some("10.88.0.7".parse().unwrap()));
        assert_eq!(ipv4_of(&json!({})), None);
    }

    /// The lists the image ships are valid for this reading.
    #[test]
    fn the_images_lists_are_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/overlay/container-host");
        for list in [BRIDGE_LIST, NONE_LIST] {
            let text = std::fs::read_to_string(root.join(list.trim_start_matches('/'))).unwrap();
            let runs = list_invocations(&serde_json::from_str(&text).unwrap(), "eth0").unwrap();
            assert_eq!(runs[0].plugin, "bridge", "{list}");
        }
    }
}
