//! A container's OCI runtime spec (pure), as containerd's CRI would make it: the image's
//! command and environment under the container's settings, Docker's default capabilities,
//! mounts, masked paths and device rules, no new privileges and the default seccomp filter.

use super::options::Network;
use super::passwd::Identity;
use crate::cairn::Container;
use serde::Deserialize;
use serde_json::{Value, json};

/// The capabilities Docker and containerd give a container.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The container's PID 1 on the host (Debian's static tini) and where the container sees it, as
/// Podman's `--init` has it: it passes signals on to the container's process (which, not PID 1,
/// dies of SIGTERM unless it handles it) and reaps the orphans the process leaves.
pub const INIT: &str = "/usr/bin/tini-static";
const INIT_IN_CONTAINER: &str = "/dev/init";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an OCI image's config a container runs by (`config` in the image's JSON).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// The host files a container sees as its `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`.
pub struct EtcFiles {
    pub resolv_conf: String,
    pub hosts: String,
    pub hostname: String,
}

/// Everything a container's spec is made of besides its settings.
pub struct Parts<'a> {
    pub image: &'a ImageConfig,
    pub identity: &'a Identity,
    /// Its network namespace (a bind-mounted one), unless it is on the host's network.
    pub netns: Option<&'a str>,
    pub etc: &'a EtcFiles,
    pub seccomp: Value,
    pub cgroups_path: String,
}

/// The process's arguments: the container's `command` when set (the whole command line, the
/// image's entrypoint not used), else the image's entrypoint and command.
pub fn args(c: &Container, image: &ImageConfig) -> Result<Vec<String>, String> {
    let args: Vec<String> = if c.command.is_empty() {
        image.entrypoint.iter().flatten().chain(image.cmd.iter().flatten()).cloned().collect()
    } else {
        c.command.clone()
    };
    if args.is_empty() {
        return Err("neither the container nor its image says what to run (command, Entrypoint, Cmd)".into());
    }
    Ok(args)
}

/// The image's environment with the container's on top (a name set by both takes the
/// container's value), and a `PATH` if neither has one.
pub fn environment(c: &Container, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for (k, v) in &c.environment {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
        env.push(format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

/// The user the process runs as before resolution: the container's setting, else the image's.
pub fn user(c: &Container, image: &ImageConfig) -> String {
    c.user.as_ref().map(|u| u.to_string()).or_else(|| image.user.clone()).unwrap_or_default()
}

fn bind(destination: &str, source: &str, read_only: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    if read_only {
        options.push("ro");
    }
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// The runtime spec of container `c`.
pub fn spec(c: &Container, p: &Parts) -> Result<Value, String> {
    let caps = DEFAULT_CAPS;
    let cwd = c.working_dir.clone().or_else(|| p.image.working_dir.clone().filter(|d| !d.is_empty()));
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        bind(INIT_IN_CONTAINER, INIT, true),
        bind("/etc/resolv.conf", &p.etc.resolv_conf, false),
        bind("/etc/hosts", &p.etc.hosts, false),
    ];
    if c.network != Network::Host {
        mounts.push(bind("/etc/hostname", &p.etc.hostname, false));
    }
    mounts.extend(c.volumes.iter().map(|v| bind(&v.target, &v.host_path(), v.read_only)));
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "mount"})];
    match p.netns {
        Some(path) => {
            namespaces.push(json!({"type": "network", "path": path}));
            namespaces.push(json!({"type": "uts"}));
        }
        // The host's network and name.
        None if c.network == Network::Host => {}
        None => return Err(format!("container {}: no network namespace for network {:?}", c.name, c.network)),
    }
    // What containerd's default spec lets a container use: the usual character devices, and
    // mknod of any (the device cgroup still refuses their use).
    let device = |kind: &str, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut rule = json!({"allow": true, "type": kind, "access": access});
        // Left out, not null: any number.
        if let Some(major) = major {
            rule["major"] = json!(major);
        }
        if let Some(minor) = minor {
            rule["minor"] = json!(minor);
        }
        rule
    };
    let devices = vec![
        json!({"allow": false, "access": "rwm"}),
        device("c", None, None, "m"),
        device("b", None, None, "m"),
        device("c", Some(1), Some(3), "rwm"),
        device("c", Some(1), Some(8), "rwm"),
        device("c", Some(1), Some(7), "rwm"),
        device("c", Some(5), Some(0), "rwm"),
        device("c", Some(1), Some(5), "rwm"),
        device("c", Some(1), Some(9), "rwm"),
        device("c", Some(5), Some(2), "rwm"),
        device("c", Some(136), None, "rwm"),
        device("c", Some(10), Some(200), "rwm"),
    ];
    let command: Vec<String> =
        [INIT_IN_CONTAINER, "--"].into_iter().map(String::from).chain(args(c, p.image)?).collect();
    let mut process = json!({
        "terminal": false,
        "user": {"uid": p.identity.uid, "gid": p.identity.gid},
        "args": command,
        "env": environment(c, p.image),
        "cwd": cwd.unwrap_or_else(|| "/".into()),
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": true,
    });
    if !p.identity.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(p.identity.additional_gids);
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": p.cgroups_path,
            "resources": {"devices": devices},
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            "seccomp": p.seccomp,
        },
    });
    if c.network != Network::Host {
        spec["hostname"] = json!(c.name);
    }
    Ok(spec)
}

/// A process run in a running container (a health command): its user, environment and
/// directory as the container's own.
pub fn exec_process(container_spec: &Value, command: &[String]) -> Value {
    let mut process = container_spec["process"].clone();
    process["args"] = json!(command);
    process
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Container {
        Container {
            name: "web".into(),
            image: "10.0.2.2:5000/web:1".into(),
            sha256: None,
            command: vec![],
            environment: [("A".to_string(), "1 2".to_string()), ("PATH".to_string(), "/bin".to_string())].into(),
            restart: "always".into(),
            network: Network::Bridge,
            ports: vec![],
            volumes: vec!["data:/data".parse().unwrap(), "/etc/app:/config:ro".parse().unwrap()],
            user: None,
            working_dir: None,
            stop_timeout: None,
            health: None,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            user: Some("www".into()),
            env: Some(vec!["PATH=/usr/bin".into(), "LANG=C".into()]),
            entrypoint: Some(vec!["/bin/httpd".into()]),
            cmd: Some(vec!["-f".into()]),
            working_dir: Some("/www".into()),
        }
    }

    fn etc() -> EtcFiles {
        EtcFiles {
            resolv_conf: "/run/c/web/resolv.conf".into(),
            hosts: "/run/c/web/hosts".into(),
            hostname: "/run/c/web/hostname".into(),
        }
    }

    #[test]
    fn the_image_runs_under_the_containers_settings() {
        let (c, img) = (web(), image());
        assert_eq!(args(&c, &img).unwrap(), ["/bin/httpd", "-f"]);
        assert_eq!(environment(&c, &img), ["LANG=C", "A=1 2", "PATH=/bin"]);
        assert_eq!(user(&c, &img), "www");
        let mut own = web();
        own.command = vec!["/bin/sh".into()];
        own.user = Some("1000:1000".parse().unwrap());
        assert_eq!(args(&own, &img).unwrap(), ["/bin/sh"], "command is the whole command line");
        assert_eq!(user(&own, &img), "1000:1000");
        assert!(!environment(&own, &ImageConfig::default()).contains(&DEFAULT_PATH.to_string()));
        assert_eq!(
            environment(&Container { environment: Default::default(), ..web() }, &ImageConfig::default()),
            [DEFAULT_PATH]
        );
        assert!(args(&web(), &ImageConfig::default()).unwrap_err().contains("what to run"));
    }

    #[test]
    fn a_bridged_container_is_confined() {
        let identity = Identity { uid: 33, gid: 33, additional_gids: vec![50] };
        let (c, img, etc) = (web(), image(), etc());
        let parts = Parts {
            image: &img,
            identity: &identity,
            netns: Some("/run/netns/web"),
            etc: &etc,
            seccomp: json!({"defaultAction": "SCMP_ACT_ERRNO"}),
            cgroups_path: "/cairn/web".into(),
        };
        let s = spec(&c, &parts).unwrap();
        assert_eq!(s["hostname"], "web");
        assert_eq!(s["process"]["user"], json!({"uid": 33, "gid": 33, "additionalGids": [50]}));
        assert_eq!(s["process"]["cwd"], "/www");
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["process"]["args"], json!(["/dev/init", "--", "/bin/httpd", "-f"]), "tini runs the command");
        assert_eq!(s["process"]["capabilities"]["bounding"].as_array().unwrap().len(), DEFAULT_CAPS.len());
        assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let ns: Vec<&str> =
            s["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(ns, ["pid", "ipc", "mount", "network", "uts"]);
        assert_eq!(s["linux"]["namespaces"][3]["path"], "/run/netns/web");
        let mounts: Vec<(&str, &str)> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["destination"].as_str().unwrap(), m["source"].as_str().unwrap()))
            .collect();
        assert!(mounts.contains(&("/data", "/var/lib/cairn/volumes/data")), "{mounts:?}");
        assert!(mounts.contains(&("/etc/hostname", "/run/c/web/hostname")));
        let config = s["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/config").unwrap();
        assert_eq!(config["options"], json!(["rbind", "rprivate", "ro"]));
    }

    #[test]
    fn a_host_network_container_shares_the_hosts_network_and_name() {
        let identity = Identity { uid: 0, gid: 0, additional_gids: vec![] };
        let mut c = web();
        c.network = Network::Host;
        let (img, etc) = (image(), etc());
        let parts = Parts {
            image: &img,
            identity: &identity,
            netns: None,
            etc: &etc,
            seccomp: json!({}),
            cgroups_path: "/cairn/web".into(),
        };
        let s = spec(&c, &parts).unwrap();
        assert!(s.get("hostname").is_none());
        let ns: Vec<&str> =
            s["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert_eq!(ns, ["pid", "ipc", "mount"]);
        assert!(!s["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/etc/hostname"));
        assert!(s["process"]["user"].get("additionalGids").is_none());
        c.network = Network::Bridge;
        assert!(spec(&c, &parts).unwrap_err().contains("no network namespace"));
        let health = exec_process(&s, &["/bin/true".to_string()]);
        assert_eq!(health["args"], json!(["/bin/true"]));
        assert_eq!(health["cwd"], "/www");
    }
}
