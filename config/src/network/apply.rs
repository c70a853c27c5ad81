//! Carrying out the network plan at boot, before init starts its DHCP clients: `ip`
//! (busybox's) for links, addresses and routes, `/proc/sys` for IPv6 router advertisements,
//! `/etc/resolv.conf`, and the markers init and the lease script read
//! (`cairn_release::net::RUN_DIR`).

use super::NetworkConfig;
use super::plan::{Plan, Present, plan};
use std::path::Path;
use std::process::Command;

/// The Ethernet interfaces present, with their MAC addresses.
pub fn present(sys_class_net: &Path) -> Vec<Present> {
    cairn_release::net::ethernet_interfaces(sys_class_net)
        .into_iter()
        .map(|name| {
            let mac = std::fs::read_to_string(sys_class_net.join(&name).join("address")).unwrap_or_default();
            Present { mac: mac.trim().to_ascii_lowercase(), name }
        })
        .collect()
}

/// The configuration read from `CONFIG_FILE` under `root`; none: DHCP everywhere.
pub fn load(root: &Path) -> Result<NetworkConfig, String> {
    let path = root.join(super::CONFIG_FILE.trim_start_matches('/'));
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NetworkConfig::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Configures this host's interfaces as `config` says; returns what it did and what failed,
/// for the console. A step that fails is reported and the rest still run.
pub fn configure(config: &NetworkConfig) -> Vec<String> {
    let p = plan(config, &present(Path::new(cairn_release::net::SYS_CLASS_NET)));
    carry_out(&p, Path::new("/proc/sys"), Path::new(cairn_release::net::RUN_DIR), Path::new("/etc/resolv.conf"))
}

fn carry_out(p: &Plan, proc_sys: &Path, run_dir: &Path, resolv_conf: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    if let Err(e) = std::fs::create_dir_all(run_dir) {
        lines.push(format!("network: creating {}: {e}", run_dir.display()));
    }
    for i in &p.interfaces {
        for (key, value) in &i.sysctls {
            let file = proc_sys.join(key);
            // IPv6 may be off in the kernel; that is not this step's failure.
            if file.exists()
                && let Err(e) = std::fs::write(&file, value)
            {
                lines.push(format!("network: {}: {e}", file.display()));
            }
        }
        let mut failed = false;
        for args in &i.commands {
            match Command::new("/usr/bin/busybox").arg("ip").args(args).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    failed = true;
                    lines.push(format!(
                        "network: ip {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
                Err(e) => {
                    failed = true;
                    lines.push(format!("network: ip {}: {e}", args.join(" ")))
                }
            }
        }
        let marker = run_dir.join(format!("{}.static", i.name));
        if !i.dhcp4
            && let Err(e) = std::fs::write(&marker, b"")
        {
            lines.push(format!("network: {}: {e}", marker.display()));
        }
        if !i.commands.is_empty() {
            let how = if i.dhcp4 { "configured, with DHCP" } else { "configured statically" };
            lines.push(format!("network: {} {how}{}", i.name, if failed { " (with errors)" } else { "" }));
        }
    }
    if let Some(text) = &p.resolv_conf {
        match cairn_release::durable::write_atomic(resolv_conf, text.as_bytes(), 0o644) {
            Ok(()) => {
                let _ = std::fs::write(run_dir.join("dns.static"), b"");
            }
            Err(e) => lines.push(format!("network: {}: {e}", resolv_conf.display())),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::plan::InterfacePlan;

    #[test]
    fn markers_sysctls_and_resolv_conf_are_written_where_told() {
        let t = tempfile::tempdir().unwrap();
        let (proc_sys, run, resolv) = (t.path().join("sys"), t.path().join("run"), t.path().join("resolv.conf"));
        std::fs::create_dir_all(proc_sys.join("net/ipv6/conf/eth0")).unwrap();
        std::fs::write(proc_sys.join("net/ipv6/conf/eth0/accept_ra"), "1").unwrap();
        let p = Plan {
            interfaces: vec![
                InterfacePlan {
                    name: "eth0".into(),
                    dhcp4: false,
                    commands: Vec::new(),
                    sysctls: vec![
                        ("net/ipv6/conf/eth0/accept_ra".into(), "2".into()),
                        // A missing key (IPv6 off) is skipped, not an error.
                        ("net/ipv6/conf/eth0/autoconf".into(), "1".into()),
                    ],
                },
                InterfacePlan { name: "eth1".into(), dhcp4: true, commands: Vec::new(), sysctls: Vec::new() },
            ],
            resolv_conf: Some("nameserver 10.0.2.2\n".into()),
        };
        let lines = carry_out(&p, &proc_sys, &run, &resolv);
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(std::fs::read_to_string(proc_sys.join("net/ipv6/conf/eth0/accept_ra")).unwrap(), "2");
        assert!(cairn_release::net::dhcp_off(&run, "eth0"));
        assert!(!cairn_release::net::dhcp_off(&run, "eth1"));
        assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "nameserver 10.0.2.2\n");
        assert!(run.join("dns.static").exists());
    }
}
