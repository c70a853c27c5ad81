//! A container's spec in CRI's terms (pure): the sandbox (network, published ports, hostname,
//! log directory) and the container in it (image, command, environment, volumes, user, working
//! directory, log file).

use super::options::{Network, User};
use crate::cairn::Container;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, SecurityProfile, security_profile,
};
use std::collections::HashMap;
use std::time::Duration;

/// The label on each container's sandbox that names its container: how a runner finds what an
/// earlier run of the same container left.
pub const LABEL: &str = "io.cairn.container";
/// The CRI namespace of Cairn's sandboxes (a name in containerd's records, not a Linux namespace).
const SANDBOX_NAMESPACE: &str = "cairn";
/// Containers' logs, as containerd writes them (tmpfs: the runner forwards them to init's log,
/// which bounds them on disk).
pub const LOG_ROOT: &str = "/run/cairn/containers";
pub const LOG_FILE: &str = "container.log";
/// The containerd runtime whose CNI configuration is a loopback interface only (its config.toml).
pub const NO_NETWORK_HANDLER: &str = "cairn-none";
/// How long a container has after SIGTERM, unless its spec says.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn log_directory(name: &str) -> String {
    format!("{LOG_ROOT}/{name}")
}

/// The containerd runtime a container's sandbox runs under: its network.
pub fn runtime_handler(c: &Container) -> &'static str {
    match c.network {
        Network::None => NO_NETWORK_HANDLER,
        Network::Bridge | Network::Host => "",
    }
}

pub fn stop_timeout(c: &Container) -> Duration {
    c.stop_timeout.as_deref().and_then(|t| cairn_release::duration::parse(t).ok()).unwrap_or(DEFAULT_STOP_TIMEOUT)
}

/// The sandbox of one run of container `c`; `run` tells runs apart (containerd reserves a
/// sandbox's name until it is removed, and an earlier run's is removed after this one starts).
pub fn sandbox_config(c: &Container, run: &str) -> PodSandboxConfig {
    let network = match c.network {
        Network::Host => NamespaceMode::Node,
        Network::Bridge | Network::None => NamespaceMode::Pod,
    };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: c.name.clone(),
            uid: format!("{}-{run}", c.name),
            namespace: SANDBOX_NAMESPACE.into(),
            attempt: 0,
        }),
        // A container on the host's network has the host's name.
        hostname: if c.network == Network::Host { String::new() } else { c.name.clone() },
        log_directory: log_directory(&c.name),
        // No port mappings: the runner publishes the ports itself (`super::ports`); no CNI
        // plugin in the conflist takes them.
        labels: HashMap::from([(LABEL.to_string(), c.name.clone())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: network as i32, ..NamespaceOption::default() }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// The container in its sandbox, running `image` (as containerd names it). `command`, when set,
/// is the whole command line (the image's entrypoint and arguments are not used), as before.
pub fn container_config(c: &Container, image: &str) -> ContainerConfig {
    let mounts = c
        .volumes
        .iter()
        .map(|v| Mount {
            container_path: v.target.clone(),
            host_path: v.host_path(),
            readonly: v.read_only,
            ..Mount::default()
        })
        .collect();
    let (run_as_user, run_as_group, run_as_username) = match &c.user {
        None => (None, None, String::new()),
        Some(User::Id { uid, gid }) => (
            Some(Int64Value { value: i64::from(*uid) }),
            gid.map(|g| Int64Value { value: i64::from(g) }),
            String::new(),
        ),
        Some(User::Name(n)) => (None, None, n.clone()),
    };
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: c.name.clone(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..ImageSpec::default() }),
        command: c.command.clone(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: c.environment.iter().map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() }).collect(),
        mounts,
        labels: HashMap::from([(LABEL.to_string(), c.name.clone())]),
        log_path: LOG_FILE.into(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                run_as_user,
                run_as_group,
                run_as_username,
                // As in Docker: setuid binaries in the image cannot raise privileges, and
                // containerd's default seccomp filter refuses the system calls containers have
                // no business making.
                no_new_privs: true,
                seccomp: Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                    ..SecurityProfile::default()
                }),
                ..LinuxContainerSecurityContext::default()
            }),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Container {
        Container {
            name: "web".into(),
            image: "10.0.2.2:5000/web:1".into(),
            sha256: None,
            command: vec!["/bin/busybox".into(), "httpd".into(), "-f".into()],
            environment: [("A".to_string(), "1 2".to_string())].into(),
            restart: "always".into(),
            network: Network::Bridge,
            ports: vec!["8080:80".parse().unwrap(), "127.0.0.1:5353:53/udp".parse().unwrap()],
            volumes: vec!["data:/data".parse().unwrap(), "/etc/app:/config:ro".parse().unwrap()],
            user: Some("1000:1000".parse().unwrap()),
            working_dir: Some("/data".into()),
            stop_timeout: Some("30s".into()),
            health: None,
        }
    }

    #[test]
    fn a_bridged_container_has_its_own_namespace() {
        let c = web();
        let s = sandbox_config(&c, "1");
        assert_eq!(s.hostname, "web");
        assert_eq!(s.metadata.unwrap().uid, "web-1");
        assert_eq!(s.log_directory, "/run/cairn/containers/web");
        assert_eq!(s.labels[LABEL], "web");
        assert!(s.port_mappings.is_empty(), "the runner publishes them (super::ports), not CNI");
        let ns = s.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, NamespaceMode::Pod as i32);
        assert_eq!(runtime_handler(&c), "");
        assert_eq!(stop_timeout(&c), Duration::from_secs(30));
    }

    #[test]
    fn host_and_none_networks_choose_the_namespace_and_the_runtime() {
        let mut c = web();
        c.ports.clear();
        c.network = Network::Host;
        let s = sandbox_config(&c, "1");
        let ns = s.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, NamespaceMode::Node as i32);
        assert_eq!(s.hostname, "");
        c.network = Network::None;
        assert_eq!(runtime_handler(&c), NO_NETWORK_HANDLER);
        c.stop_timeout = None;
        assert_eq!(stop_timeout(&c), DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn the_container_has_its_volumes_user_directory_and_environment() {
        let c = web();
        let k = container_config(&c, "10.0.2.2:5000/web@sha256:aa");
        assert_eq!(k.image.unwrap().image, "10.0.2.2:5000/web@sha256:aa");
        assert_eq!(k.command, c.command);
        assert!(k.args.is_empty());
        assert_eq!(k.working_dir, "/data");
        assert_eq!(k.envs, [KeyValue { key: "A".into(), value: "1 2".into() }]);
        assert_eq!(k.log_path, LOG_FILE);
        let m: Vec<(&str, &str, bool)> =
            k.mounts.iter().map(|m| (m.host_path.as_str(), m.container_path.as_str(), m.readonly)).collect();
        assert_eq!(m, [("/var/lib/cairn/volumes/data", "/data", false), ("/etc/app", "/config", true)]);
        let sc = k.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(Int64Value { value: 1000 }));
        assert_eq!(sc.run_as_group, Some(Int64Value { value: 1000 }));
        assert!(sc.no_new_privs);
        assert_eq!(sc.seccomp.unwrap().profile_type, security_profile::ProfileType::RuntimeDefault as i32);
        let mut named = web();
        named.user = Some("nobody".parse().unwrap());
        let sc = container_config(&named, "x").linux.unwrap().security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_username.as_str()), (None, "nobody"));
    }
}
