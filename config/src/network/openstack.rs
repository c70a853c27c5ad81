//! OpenStack's `network_data.json` (config drive `openstack/latest/network_data.json`, and
//! the metadata service's): `links` (interfaces by MAC), `networks` on them (static IPv4 or
//! IPv6 with routes, DHCP, SLAAC) and `services` (DNS servers).

use super::{Address, Interface, Match, NetworkConfig, Route};
use crate::diag::{Diagnostic, Severity};
use serde::Deserialize;

const FILE: &str = "network_data.json";

#[derive(Deserialize)]
struct NetworkData {
    #[serde(default)]
    links: Vec<Link>,
    #[serde(default)]
    networks: Vec<Network>,
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Deserialize)]
struct Link {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    ethernet_mac_address: Option<String>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
struct Network {
    link: String,
    #[serde(rename = "type")]
    kind: String,
    ip_address: Option<String>,
    netmask: Option<String>,
    #[serde(default)]
    routes: Vec<OsRoute>,
    #[serde(default)]
    dns_nameservers: Vec<String>,
}

#[derive(Deserialize)]
struct OsRoute {
    network: String,
    netmask: String,
    gateway: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

fn diagnostic(severity: Severity, path: String, message: String) -> Diagnostic {
    Diagnostic { severity, line: 0, column: 0, path, message }
}

/// The network configuration `network_data.json` describes, or its problems.
pub fn parse(data: &[u8]) -> Result<(NetworkConfig, Vec<Diagnostic>), Vec<Diagnostic>> {
    let nd: NetworkData = serde_json::from_slice(data).map_err(|e| {
        vec![Diagnostic::error_at(e.line(), e.column(), FILE, format!("not OpenStack network data: {e}"))]
    })?;
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let mut config = NetworkConfig::default();
    let physical =
        ["phy", "ethernet", "ovs", "bridge", "tap", "vif", "dvs", "hw_veb", "hyperv", "vhostuser", "vrouter", ""];
    for (i, link) in nd.links.iter().enumerate() {
        let path = format!("{FILE}: links[{i}]");
        if !physical.contains(&link.kind.as_str()) {
            warnings.push(diagnostic(
                Severity::Warning,
                path,
                format!("type {:?}: not supported by Cairn; left out", link.kind),
            ));
            continue;
        }
        let Some(mac) = link.ethernet_mac_address.as_deref() else {
            errors.push(diagnostic(Severity::Error, path, "has no ethernet_mac_address".into()));
            continue;
        };
        match super::mac(mac) {
            Ok(mac) => config.interfaces.push(Interface {
                matching: Match { mac: Some(mac), name: None },
                mtu: link.mtu,
                accept_ra: true,
                ..Default::default()
            }),
            Err(e) => errors.push(diagnostic(Severity::Error, path, e)),
        }
    }
    for (i, n) in nd.networks.iter().enumerate() {
        let path = format!("{FILE}: networks[{i}]");
        let Some(li) = nd.links.iter().position(|l| l.id == n.link) else {
            errors.push(diagnostic(Severity::Error, path, format!("names link {:?}, which links lacks", n.link)));
            continue;
        };
        let mac = nd.links[li].ethernet_mac_address.as_deref().and_then(|m| super::mac(m).ok());
        let Some(iface) = config.interfaces.iter_mut().find(|i| i.matching.mac.is_some() && i.matching.mac == mac)
        else {
            continue;
        };
        let mut err = |m: String| errors.push(diagnostic(Severity::Error, path.clone(), m));
        match n.kind.as_str() {
            "ipv4_dhcp" => iface.dhcp4 = true,
            "ipv6_slaac" | "ipv6_dhcpv6-stateless" | "ipv6_dhcp" | "ipv6_dhcpv6-stateful" => iface.accept_ra = true,
            "ipv4" | "ipv6" => {
                let (Some(ip), Some(mask)) = (n.ip_address.as_deref(), n.netmask.as_deref()) else {
                    err("a static network needs ip_address and netmask".into());
                    continue;
                };
                match Address::with_netmask(ip, mask) {
                    Ok(a) => iface.addresses.push(a),
                    Err(e) => err(e),
                }
                for r in &n.routes {
                    let via = r.gateway.parse();
                    match (Address::with_netmask(&r.network, &r.netmask), via) {
                        (Ok(to), Ok(via)) if to.prefix == 0 => iface.gateways.push(via),
                        (Ok(to), Ok(via)) => iface.routes.push(Route { to, via, metric: None }),
                        (Err(e), _) => err(format!("route to {}: {e}", r.network)),
                        (_, Err(_)) => err(format!("route to {}: {:?} is not an IP address", r.network, r.gateway)),
                    }
                }
                for s in &n.dns_nameservers {
                    match s.parse() {
                        Ok(ip) => config.dns.servers.push(ip),
                        Err(_) => err(format!("dns_nameservers: {s:?} is not an IP address")),
                    }
                }
            }
            other => err(format!("network type {other:?} is not supported")),
        }
    }
    for (i, s) in nd.services.iter().enumerate().filter(|(_, s)| s.kind == "dns") {
        match s.address.parse() {
            Ok(ip) if !config.dns.servers.contains(&ip) => config.dns.servers.push(ip),
            Ok(_) => {}
            Err(_) => errors.push(diagnostic(
                Severity::Error,
                format!("{FILE}: services[{i}]"),
                format!("{:?} is not an IP address", s.address),
            )),
        }
    }
    if errors.is_empty() {
        Ok((config, warnings))
    } else {
        errors.extend(warnings);
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 1450},
                {"id": "bond0", "type": "bond", "bond_links": ["tap0"]}],
      "networks": [{"id": "n0", "link": "tap0", "type": "ipv4", "ip_address": "10.0.2.15",
                    "netmask": "255.255.255.0",
                    "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}]},
                   {"id": "n1", "link": "tap0", "type": "ipv6_slaac"}],
      "services": [{"type": "dns", "address": "10.0.2.2"}]
    }"#;

    #[test]
    fn a_static_link_by_mac_with_its_default_route_and_dns() {
        let (c, warnings) = parse(EXAMPLE.as_bytes()).unwrap();
        let i = &c.interfaces[0];
        assert_eq!(i.matching.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(i.addresses[0].to_string(), "10.0.2.15/24");
        assert_eq!(i.gateways[0].to_string(), "10.0.2.2");
        assert_eq!(i.mtu, Some(1450));
        assert!(!i.dhcp4 && i.accept_ra);
        assert_eq!(c.dns.servers[0].to_string(), "10.0.2.2");
        assert!(warnings[0].to_string().contains("bond"), "{warnings:?}");
    }

    #[test]
    fn bad_data_is_refused_with_the_place_named() {
        let e = parse(EXAMPLE.replace("10.0.2.15", "10.0.2.1500").as_bytes()).unwrap_err();
        assert!(e[0].to_string().contains("networks[0]"), "{e:?}");
        let e = parse(b"{\"links\": [}").unwrap_err();
        assert!(e[0].to_string().starts_with("1:"), "{e:?}");
    }
}
