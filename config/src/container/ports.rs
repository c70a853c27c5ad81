//! Published ports: DNAT rules in the image's chain `CAIRN-PORTS` (`cni/bridge.rules` sends the
//! host's local addresses there). Each runner notes its container's rules in a file of its own
//! on /run, and every change rewrites the whole chain from those files with one
//! `iptables-restore`: one process run a start or a stop, where CNI's portmap made some ten
//! iptables runs a sandbox (0.9 s under emulation, 1.4 s to take them down again). The chain is
//! rewritten whole, so what a killed runner left is replaced, never doubled, when its container
//! starts again. Call under the network lock (`run`), as for anything else that changes the
//! packet filter.

use super::options::{Port, Protocol};
use cairn_release::durable;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// One file per container with published ports (its rules): on /run, gone with the tables.
pub const DIR: &str = "/run/cairn/containers/.ports";
/// The chain the image's rules jump to for packets to a local address (`cni/bridge.rules`).
pub const CHAIN: &str = "CAIRN-PORTS";

/// The rules that publish `ports` of container `name` at `address`, one per line. A port on an
/// IPv6 host address is left out (the bridge has no IPv6 addresses): its text is in the second
/// list, for the runner to say so.
pub fn rules(name: &str, address: Ipv4Addr, ports: &[Port]) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut skipped = Vec::new();
    for p in ports {
        let destination = match p.host_ip {
            Some(IpAddr::V6(_)) => {
                skipped.push(p.to_string());
                continue;
            }
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => format!(" -d {ip}/32"),
            _ => String::new(),
        };
        let protocol = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        // The container's name is letters, digits, '-', '_' and '.' (validated): no quoting.
        let _ = writeln!(
            text,
            "-A {CHAIN}{destination} -p {protocol} -m comment --comment container-{name} -m {protocol} --dport {} \
             -j DNAT --to-destination {address}:{}",
            p.host_port, p.container_port
        );
    }
    (text, skipped)
}

/// The iptables-restore input that makes `CAIRN-PORTS` hold exactly `rules` (each container's
/// lines, in order): declaring the chain empties it, within the same commit.
pub fn restore_input<'a>(rules: impl IntoIterator<Item = &'a str>) -> String {
    let mut input = format!("*nat\n:{CHAIN} - [0:0]\n");
    for r in rules {
        input.push_str(r);
        if !r.is_empty() && !r.ends_with('\n') {
            input.push('\n');
        }
    }
    input.push_str("COMMIT\n");
    input
}

/// Publishes container `name`'s ports at `address` (its rules replace any it had). The ports
/// left out (IPv6 host addresses) are returned.
pub fn publish(dir: &Path, name: &str, address: Ipv4Addr, ports: &[Port]) -> Result<Vec<String>, String> {
    let (text, skipped) = rules(name, address, ports);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = dir.join(name);
    durable::write_atomic(&file, text.as_bytes(), 0o600).map_err(|e| format!("writing {}: {e}", file.display()))?;
    apply(dir)?;
    Ok(skipped)
}

/// Takes container `name`'s published ports down (nothing to do if it had none).
pub fn withdraw(dir: &Path, name: &str) -> Result<(), String> {
    let file = dir.join(name);
    match std::fs::remove_file(&file) {
        Ok(()) => apply(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", file.display())),
    }
}

/// Rewrites the chain from every container's file in `dir`, in name order.
fn apply(dir: &Path) -> Result<(), String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut all = Vec::with_capacity(names.len());
    for n in &names {
        let path = dir.join(n);
        all.push(std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?);
    }
    super::iptables::restore(&restore_input(all.iter().map(String::as_str)), "publishing ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[&str]) -> Vec<Port> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn each_port_is_one_dnat_rule_to_the_container() {
        let (text, skipped) = rules(
            "web",
            Ipv4Addr::new(10, 88, 0, 2),
            &ports(&["8080:80", "127.0.0.1:9000:9000/udp", "0.0.0.0:8443:443"]),
        );
        assert!(skipped.is_empty());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "-A CAIRN-PORTS -p tcp -m comment --comment container-web -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80",
                "-A CAIRN-PORTS -d 127.0.0.1/32 -p udp -m comment --comment container-web -m udp --dport 9000 -j DNAT --to-destination 10.88.0.2:9000",
                "-A CAIRN-PORTS -p tcp -m comment --comment container-web -m tcp --dport 8443 -j DNAT --to-destination 10.88.0.2:443",
            ]
        );
    }

    #[test]
    fn an_ipv6_host_address_is_left_out_and_named() {
        let (text, skipped) = rules("web", Ipv4Addr::new(10, 88, 0, 2), &ports(&["[::1]:8080:80", "8081:81"]));
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("--dport 8081"), "{text}");
        assert_eq!(skipped, ["[::1]:8080:80"]);
    }

    #[test]
    fn the_chain_is_declared_then_filled_in_one_commit() {
        let input =
            restore_input(["-A CAIRN-PORTS -p tcp --dport 1 -j DNAT --to-destination 10.88.0.2:1\n", "", "-A x"]);
        assert_eq!(
            input,
            "*nat\n:CAIRN-PORTS - [0:0]\n-A CAIRN-PORTS -p tcp --dport 1 -j DNAT --to-destination 10.88.0.2:1\n-A x\nCOMMIT\n"
        );
        assert_eq!(restore_input([]), "*nat\n:CAIRN-PORTS - [0:0]\nCOMMIT\n", "no container: the chain is emptied");
    }
}
