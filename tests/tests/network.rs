//! VM tests of static network configuration (issue 18), with DHCP not used: a NoCloud seed
//! made by Debian's `cloud-localds --network-config` (cloud-init's version 2, the interface
//! matched by its MAC address), and an OpenStack config drive with `network_data.json`. Each
//! puts the host at 10.0.2.15/24 on QEMU's user network, gateway and resolver 10.0.2.2, and the
//! host answers ssh with the seed's hostname.

use anyhow::{Context, Result, bail};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::server::free_port;
use cairn_tests::ssh::{key, ssh};
use cairn_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
/// QEMU's first NIC.
const MAC: &str = "52:54:00:12:34:56";

/// A NoCloud seed (an ISO labelled `cidata`) as `cloud-localds` makes it.
fn cloud_localds(dir: &Path, user_data: &str, meta_data: &str, network_config: &str) -> Result<PathBuf> {
    let (u, m, n) = (dir.join("user-data"), dir.join("meta-data"), dir.join("network-config"));
    std::fs::write(&u, user_data)?;
    std::fs::write(&m, meta_data)?;
    std::fs::write(&n, network_config)?;
    let seed = dir.join("seed.iso");
    let out = Command::new("cloud-localds")
        .arg(format!("--network-config={}", n.display()))
        .arg(&seed)
        .arg(&u)
        .arg(&m)
        .output()
        .context("cloud-localds (./scripts/setup.sh installs cloud-image-utils)")?;
    if !out.status.success() {
        bail!("cloud-localds: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(seed)
}

/// Boots the dev image with `drive` attached and checks the static network: the address and
/// route, the resolvers, no DHCP client, ssh as `core` and the hostname.
fn boots_with_static_network(drive: PathBuf, core_key: &Path, hostname: &str) -> Result<()> {
    let img = dev_image()?;
    let ssh_port = free_port()?;
    let mut cfg = VmConfig { ssh_port: Some(ssh_port), ..VmConfig::uefi(img.raw()) };
    cfg.extra_disks = vec![drive];
    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    let console = vm.console().text();
    assert!(console.contains("cairn: cloud-config: network: eth0 configured statically"), "{console}");

    let status = vm.run_ok("cairnctl status", CMD)?;
    assert!(!status.contains("dhcp-eth0"), "DHCP runs on eth0 though the config is static:\n{status}");
    let addr = vm.run_ok("ip -4 addr show dev eth0", CMD)?;
    assert!(addr.contains("inet 10.0.2.15/24"), "{addr}");
    let routes = vm.run_ok("ip -4 route", CMD)?;
    assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");
    let resolv = vm.run_ok("cat /etc/resolv.conf", CMD)?;
    assert!(resolv.contains("nameserver 10.0.2.2"), "QEMU's DHCP would have named 10.0.2.3:\n{resolv}");
    // IPv6 by SLAAC beside the static IPv4: QEMU's router advertises fec0::/64.
    let slaac =
        "for i in $(seq 30); do ip -6 addr show dev eth0 | grep -q 'inet6 fec0::' && exit 0; sleep 1; done; exit 1";
    if vm.run(slaac, CMD)?.status != 0 {
        panic!("no SLAAC address on eth0 within 30 s:\n{}", vm.run("ip -6 addr; ip -6 route", CMD)?.output);
    }

    let (ok, out, err) = ssh(ssh_port, "core", core_key, "hostname")?;
    assert!(ok, "ssh over the static address failed: {err}\n{}", vm.console().text());
    assert_eq!(out.trim(), hostname);
    vm.shutdown(CMD)?;
    Ok(())
}

#[test]
fn a_nocloud_seed_with_a_static_network_config_from_cloud_localds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (core_key, core_pub) = key(dir.path(), "core")?;
    let network = format!(
        "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"{MAC}\"\n    dhcp4: false\n    \
         addresses: [10.0.2.15/24]\n    gateway4: 10.0.2.2\n    nameservers:\n      addresses: [10.0.2.2]\n      \
         search: [cairn.test]\n"
    );
    let seed = cloud_localds(
        dir.path(),
        &format!("#cloud-config\nssh_authorized_keys:\n  - {core_pub}\n"),
        "instance-id: net-nocloud\nlocal-hostname: net-nocloud\n",
        &network,
    )?;
    boots_with_static_network(seed, &core_key, "net-nocloud")
}

#[test]
fn an_openstack_config_drive_with_network_data_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (core_key, core_pub) = key(dir.path(), "core")?;
    let network = serde_json::json!({
        "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": MAC, "mtu": 1500}],
        "networks": [{
            "id": "network0", "link": "tap0", "type": "ipv4",
            "ip_address": "10.0.2.15", "netmask": "255.255.255.0",
            "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}],
        }],
        "services": [{"type": "dns", "address": "10.0.2.2"}],
    })
    .to_string();
    let meta = serde_json::json!({"uuid": "net-drive", "hostname": "net-drive"}).to_string();
    let user_data = format!("#cloud-config\nssh_authorized_keys:\n  - {core_pub}\n");
    let drive = nova_config_drive(
        dir.path(),
        &[
            ("user_data", user_data.as_bytes()),
            ("meta_data.json", meta.as_bytes()),
            ("network_data.json", network.as_bytes()),
        ],
    )?;
    boots_with_static_network(drive, &core_key, "net-drive")
}
