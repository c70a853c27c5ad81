//! Network interfaces as init and the cloud-config step see them.

use std::path::Path;

/// The script busybox udhcpc runs on lease events (addresses, routes, resolv.conf, NTP servers).
pub const DHCP_SCRIPT: &str = "/usr/lib/cairn/udhcpc.script";

/// What the boot step decided about the network, for init and the lease script: a file
/// `IFACE.static` for each interface with DHCP off, `dns.static` when the config names the
/// resolvers (the lease script leaves `/etc/resolv.conf` alone then).
pub const RUN_DIR: &str = "/run/cairn/network";

/// Whether the network configuration turned DHCP off on `iface`.
pub fn dhcp_off(run_dir: &Path, iface: &str) -> bool {
    run_dir.join(format!("{iface}.static")).exists()
}

/// Where the kernel lists network interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// The Ethernet interfaces of real (or virtual) hardware, sorted: type 1 (ARPHRD_ETHER) with a
/// device behind them, so not bridges, veths or other software interfaces.
pub fn ethernet_interfaces(sys_class_net: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    out.retain(|i| {
        let dir = sys_class_net.join(i);
        std::fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1") && dir.join("device").exists()
    });
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ethernet_interfaces_with_a_device() {
        let t = tempfile::tempdir().unwrap();
        let iface = |name: &str, kind: &str, device: bool| {
            let d = t.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            if device {
                std::fs::create_dir_all(d.join("device")).unwrap();
            }
        };
        iface("lo", "772", false);
        iface("eth1", "1", true);
        iface("eth0", "1", true);
        iface("veth0", "1", false);
        assert_eq!(ethernet_interfaces(t.path()), ["eth0", "eth1"]);
    }
}
