//! A NoCloud seed's `network-config`: cloud-init's version 1 (a list of `physical`,
//! `nameserver` and `route` entries with their subnets) or version 2 (netplan's `ethernets`),
//! the subset a static VM needs, as Debian's `cloud-localds --network-config` puts it on the
//! seed. Bonds, bridges and VLANs are warned about and left out; anything else wrong refuses
//! the whole seed, as a bad user-data document does.

use super::cairn::{dns, ip, mtu, scalar, scalars};
use super::{Address, Dns, Interface, Match, NetworkConfig, Route};
use crate::diag::{self, Diagnostic};
use crate::walk::{At, Fields, Value, Walker};

const TOP_KEYS: &[&str] =
    &["network", "version", "config", "ethernets", "renderer", "bonds", "bridges", "vlans", "wifis"];
const V1_ENTRY_KEYS: &[&str] = &[
    "type",
    "name",
    "mac_address",
    "mtu",
    "subnets",
    "accept_ra",
    "address",
    "search",
    "destination",
    "gateway",
    "metric",
    "interfaces",
    "params",
    "vlan_link",
    "vlan_id",
];
const V1_SUBNET_KEYS: &[&str] =
    &["type", "address", "netmask", "gateway", "dns_nameservers", "dns_search", "routes", "control", "metric"];
const V1_ROUTE_KEYS: &[&str] = &["network", "destination", "netmask", "gateway", "metric"];
const V2_ETHERNET_KEYS: &[&str] = &[
    "match",
    "set_name",
    "dhcp4",
    "dhcp6",
    "addresses",
    "gateway4",
    "gateway6",
    "routes",
    "nameservers",
    "mtu",
    "accept_ra",
    "optional",
    "wakeonlan",
    "critical",
];
const V2_MATCH_KEYS: &[&str] = &["macaddress", "name", "driver"];
const V2_ROUTE_KEYS: &[&str] = &["to", "via", "metric", "on_link", "table"];
const V2_NAMESERVER_KEYS: &[&str] = &["addresses", "search"];

/// The network configuration a `network-config` file describes, or its problems (positions in
/// that file, paths starting `network-config`). Warnings come with a config too.
pub fn parse(data: &[u8]) -> Result<(NetworkConfig, Vec<Diagnostic>), Vec<Diagnostic>> {
    let whole = |message: &str| vec![diag::Diagnostic::error_at(1, 1, "network-config", message)];
    let text = std::str::from_utf8(data).map_err(|_| whole("not UTF-8 text"))?;
    let root = crate::document::load_yaml(text).map_err(|d| vec![d])?;
    let mut w = Walker::default();
    let mut v = Value { node: &root, at: At { line: 1, column: 1 } };
    let mut path = "network-config".to_string();
    let mut f = w.mapping(v, &path, TOP_KEYS).ok_or_else(|| w.diagnostics.clone())?;
    // The file may hold the `network:` key itself (as cloud-init's docs write it) or its value.
    if let Some((inner, p)) = f.get("network") {
        v = inner;
        path = p;
        f = w.mapping(v, &path, TOP_KEYS).ok_or_else(|| w.diagnostics.clone())?;
    }
    let config = match f.get("version").and_then(|(v, p)| w.u32(v, &p)) {
        Some(1) => Some(v1(&mut w, &f, v, &path)),
        Some(2) => Some(v2(&mut w, &f)),
        Some(n) => {
            let (at, p) = f.get("version").map(|(v, p)| (v.at, p)).unwrap_or((v.at, path.clone()));
            w.error(at, &p, format!("version {n}: cloud-init's network config is version 1 or 2"));
            None
        }
        None => {
            w.error(v.at, &path, "needs a version (1 or 2)");
            None
        }
    };
    let mut diagnostics = w.diagnostics;
    diag::sort(&mut diagnostics);
    match config {
        Some(c) if !diag::has_errors(&diagnostics) => Ok((c, diagnostics)),
        _ => Err(diagnostics),
    }
}

fn v1(w: &mut Walker, f: &Fields, v: Value, path: &str) -> NetworkConfig {
    let mut config = NetworkConfig::default();
    let Some((list, p)) = f.get("config") else {
        w.error(v.at, path, "version 1 needs config (a list)");
        return config;
    };
    let mut routes: Vec<(Route, At, String)> = Vec::new();
    for (item, ip) in w.list(list, &p).unwrap_or_default() {
        let Some(e) = w.mapping(item, &ip, V1_ENTRY_KEYS) else { continue };
        let kind = e.get("type").and_then(|(v, p)| w.text(v, &p)).unwrap_or_default();
        match kind.as_str() {
            "physical" => {
                if let Some(i) = v1_physical(w, &e, item, &ip, &mut config.dns) {
                    config.interfaces.push(i);
                }
            }
            "nameserver" => {
                config
                    .dns
                    .servers
                    .extend(e.get("address").map(|(v, p)| scalars(w, v, &p, super::cairn::ip)).unwrap_or_default());
                config
                    .dns
                    .search
                    .extend(e.get("search").map(|(v, p)| scalars(w, v, &p, super::domain)).unwrap_or_default());
            }
            "route" => {
                if let Some(r) = v1_route(w, &e, item, &ip) {
                    routes.push((r, item.at, ip));
                }
            }
            "bond" | "bridge" | "vlan" | "loopback" => {
                w.warn(item.at, &ip, format!("type {kind}: not supported by Cairn; left out"));
            }
            "" => w.error(item.at, &ip, "needs a type (physical, nameserver, route)"),
            other => w.error(item.at, &ip, format!("type {other:?} is not physical, nameserver or route")),
        }
    }
    // A route of its own goes with the interface whose subnet holds its gateway.
    for (r, at, p) in routes {
        match config.interfaces.iter_mut().find(|i| i.addresses.iter().any(|a| same_subnet(a, r.via))) {
            Some(i) if r.to.prefix == 0 => i.gateways.push(r.via),
            Some(i) => i.routes.push(r),
            None => w.error(at, &p, format!("no interface has an address on the subnet of gateway {}", r.via)),
        }
    }
    config
}

/// Whether `ip` is on `a`'s subnet.
fn same_subnet(a: &Address, ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (a.ip, ip) {
        (V4(x), V4(y)) => {
            let mask = u32::MAX.checked_shl(32 - a.prefix as u32).unwrap_or(0);
            u32::from(x) & mask == u32::from(y) & mask
        }
        (V6(x), V6(y)) => {
            let mask = u128::MAX.checked_shl(128 - a.prefix as u32).unwrap_or(0);
            u128::from(x) & mask == u128::from(y) & mask
        }
        _ => false,
    }
}

fn v1_physical(w: &mut Walker, e: &Fields, item: Value, path: &str, dns_out: &mut Dns) -> Option<Interface> {
    let name = e.get("name").and_then(|(v, p)| scalar(w, v, &p, super::interface_name));
    let mac = e.get("mac_address").and_then(|(v, p)| scalar(w, v, &p, super::mac));
    if name.is_none() && mac.is_none() {
        w.error(item.at, path, "a physical interface needs a name or a mac_address");
        return None;
    }
    // cloud-init finds the device by its MAC and would rename it; Cairn matches it by MAC.
    let matching = if mac.is_some() { Match { mac, name: None } } else { Match { mac: None, name } };
    let mut i = Interface { matching, accept_ra: true, ..Default::default() };
    i.mtu = e.get("mtu").and_then(|(v, p)| mtu(w, v, &p));
    if let Some((v, p)) = e.get("accept_ra") {
        i.accept_ra = w.bool(v, &p).unwrap_or(true);
    }
    let Some((subnets, p)) = e.get("subnets") else { return Some(i) };
    for (s, sp) in w.list(subnets, &p).unwrap_or_default() {
        let Some(sf) = w.mapping(s, &sp, V1_SUBNET_KEYS) else { continue };
        let kind = sf.get("type").and_then(|(v, p)| w.text(v, &p)).unwrap_or_default();
        match kind.as_str() {
            "dhcp" | "dhcp4" => i.dhcp4 = true,
            "ipv6_slaac" | "ipv6_dhcpv6-stateless" | "dhcp6" | "ipv6_dhcpv6-stateful" => i.accept_ra = true,
            "manual" => {}
            "static" | "static6" => {
                let address = match (sf.get("address"), sf.get("netmask")) {
                    (Some((v, p)), Some((m, mp))) => {
                        let mask = w.text(m, &mp);
                        let a = w.text(v, &p);
                        match (a, mask) {
                            (Some(a), Some(m)) if !a.contains('/') => {
                                Address::with_netmask(&a, &m).map_err(|e| w.error(v.at, &p, e)).ok()
                            }
                            (Some(a), _) => Address::parse(&a).map_err(|e| w.error(v.at, &p, e)).ok(),
                            _ => None,
                        }
                    }
                    (Some((v, p)), None) => scalar(w, v, &p, Address::parse),
                    (None, _) => {
                        w.error(s.at, &sp, "a static subnet needs an address");
                        None
                    }
                };
                i.addresses.extend(address);
                i.gateways.extend(sf.get("gateway").and_then(|(v, p)| scalar(w, v, &p, ip)));
                if let Some((v, p)) = sf.get("dns_nameservers") {
                    dns_out.servers.extend(scalars(w, v, &p, ip));
                }
                if let Some((v, p)) = sf.get("dns_search") {
                    dns_out.search.extend(scalars(w, v, &p, super::domain));
                }
                if let Some((v, p)) = sf.get("routes") {
                    for (r, rp) in w.list(v, &p).unwrap_or_default() {
                        if let Some(rf) = w.mapping(r, &rp, V1_ROUTE_KEYS)
                            && let Some(route) = v1_route(w, &rf, r, &rp)
                        {
                            if route.to.prefix == 0 { i.gateways.push(route.via) } else { i.routes.push(route) }
                        }
                    }
                }
            }
            "" => w.error(s.at, &sp, "needs a type (static, static6, dhcp, dhcp6, ipv6_slaac, manual)"),
            other => w.error(s.at, &sp, format!("subnet type {other:?} is not supported")),
        }
    }
    Some(i)
}

/// A v1 route: `destination: 10.9.0.0/16` or `network` with `netmask`, and `gateway`.
fn v1_route(w: &mut Walker, f: &Fields, item: Value, path: &str) -> Option<Route> {
    let to = match (f.get("destination").or_else(|| f.get("network")), f.get("netmask")) {
        (Some((v, p)), Some((m, mp))) => {
            let (a, m) = (w.text(v, &p)?, w.text(m, &mp)?);
            Address::with_netmask(&a, &m).map_err(|e| w.error(v.at, &p, e)).ok()
        }
        (Some((v, p)), None) => scalar(w, v, &p, |s| match s {
            "default" | "0.0.0.0/0" => Ok(Address::parse("0.0.0.0/0").expect("valid")),
            "::/0" => Ok(Address::parse("::/0").expect("valid")),
            s => Address::parse(s),
        }),
        (None, _) => {
            w.error(item.at, path, "a route needs a destination (or network and netmask)");
            None
        }
    };
    let via = match f.get("gateway") {
        Some((v, p)) => scalar(w, v, &p, ip),
        None => {
            w.error(item.at, path, "a route needs a gateway");
            None
        }
    };
    let metric = f.get("metric").and_then(|(v, p)| w.u32(v, &p));
    Some(Route { to: to?, via: via?, metric })
}

fn v2(w: &mut Walker, f: &Fields) -> NetworkConfig {
    let mut config = NetworkConfig::default();
    for key in ["bonds", "bridges", "vlans", "wifis"] {
        if let Some((v, p)) = f.get(key) {
            w.warn(v.at, &p, format!("{key}: not supported by Cairn; left out"));
        }
    }
    let Some((eths, p)) = f.get("ethernets") else { return config };
    for (id, v, ep) in w.entries(eths, &p).unwrap_or_default() {
        let Some(e) = w.mapping(v, &ep, V2_ETHERNET_KEYS) else { continue };
        let matching = match e.get("match") {
            Some((mv, mp)) => match w.mapping(mv, &mp, V2_MATCH_KEYS) {
                Some(m) => Match {
                    mac: m.get("macaddress").and_then(|(v, p)| scalar(w, v, &p, super::mac)),
                    name: m.get("name").and_then(|(v, p)| scalar(w, v, &p, super::interface_name)),
                },
                None => continue,
            },
            None => match super::interface_name(&id) {
                Ok(name) => Match { mac: None, name: Some(name) },
                Err(msg) => {
                    w.error(v.at, &ep, msg);
                    continue;
                }
            },
        };
        if matching.mac.is_none() && matching.name.is_none() {
            w.error(v.at, &ep, "its match needs a macaddress or a name");
        }
        let mut i = Interface { matching, accept_ra: true, ..Default::default() };
        i.dhcp4 = e.get("dhcp4").and_then(|(v, p)| w.bool(v, &p)).unwrap_or(false);
        i.addresses = e.get("addresses").map(|(v, p)| scalars(w, v, &p, Address::parse)).unwrap_or_default();
        for key in ["gateway4", "gateway6"] {
            i.gateways.extend(e.get(key).and_then(|(v, p)| scalar(w, v, &p, ip)));
        }
        if let Some((rv, rp)) = e.get("routes") {
            for (r, p) in w.list(rv, &rp).unwrap_or_default() {
                let Some(rf) = w.mapping(r, &p, V2_ROUTE_KEYS) else { continue };
                let to = rf.get("to").and_then(|(v, p)| {
                    scalar(w, v, &p, |s| match s {
                        "default" => Ok(None),
                        s => Address::parse(s).map(|a| (a.prefix > 0).then_some(a)),
                    })
                });
                let via = rf.get("via").and_then(|(v, p)| scalar(w, v, &p, ip));
                let metric = rf.get("metric").and_then(|(v, p)| w.u32(v, &p));
                match (to, via) {
                    (Some(None), Some(via)) => i.gateways.push(via),
                    (Some(Some(to)), Some(via)) => i.routes.push(Route { to, via, metric }),
                    _ => w.error(r.at, &p, "a route needs to and via"),
                }
            }
        }
        if let Some((nv, np)) = e.get("nameservers")
            && let Some(nf) = w.mapping(nv, &np, V2_NAMESERVER_KEYS)
        {
            let d = dns(w, &renamed(nf));
            config.dns.servers.extend(d.servers);
            config.dns.search.extend(d.search);
        }
        i.mtu = e.get("mtu").and_then(|(v, p)| mtu(w, v, &p));
        if let Some((v, p)) = e.get("accept_ra") {
            i.accept_ra = w.bool(v, &p).unwrap_or(true);
        }
        config.interfaces.push(i);
    }
    config
}

/// netplan's `nameservers: {addresses, search}` read as `cairn.network.dns`'s `{servers, search}`.
fn renamed(f: Fields) -> Fields {
    f.renamed("addresses", "servers")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> NetworkConfig {
        match parse(text.as_bytes()) {
            Ok((c, _)) => c,
            Err(d) => panic!("{d:?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text.as_bytes()).unwrap_err().iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn version_1_static_with_netmask_gateway_and_nameservers() {
        let c = ok(
            "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: \"52:54:00:12:34:56\"\n    \
                    subnets:\n      - type: static\n        address: 10.0.2.15\n        netmask: 255.255.255.0\n        \
                    gateway: 10.0.2.2\n        dns_nameservers: [10.0.2.2]\n        dns_search: [example.com]\n  \
                    - type: route\n    destination: 10.9.0.0/16\n    gateway: 10.0.2.3\n",
        );
        let i = &c.interfaces[0];
        assert_eq!(i.matching.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert!(!i.dhcp4);
        assert_eq!(i.addresses[0].to_string(), "10.0.2.15/24");
        assert_eq!(i.gateways, ["10.0.2.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(i.routes[0].to.to_string(), "10.9.0.0/16");
        assert_eq!(c.dns.servers[0].to_string(), "10.0.2.2");
        assert_eq!(c.dns.search, ["example.com"]);
    }

    #[test]
    fn version_2_under_a_network_key() {
        let c = ok("network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: false\n      \
                    addresses: [10.0.2.15/24, \"fd00::5/64\"]\n      gateway4: 10.0.2.2\n      \
                    routes: [{to: default, via: \"fd00::1\"}, {to: 10.9.0.0/16, via: 10.0.2.3, metric: 5}]\n      \
                    nameservers: {addresses: [10.0.2.2], search: [lab]}\n      mtu: 1400\n");
        let i = &c.interfaces[0];
        assert_eq!(i.matching.name.as_deref(), Some("eth0"));
        assert_eq!(i.addresses.len(), 2);
        assert_eq!(i.gateways.len(), 2);
        assert_eq!(i.routes[0].metric, Some(5));
        assert_eq!(i.mtu, Some(1400));
        assert_eq!(c.dns.search, ["lab"]);
    }

    #[test]
    fn problems_are_named_where_they_are() {
        let e = errors(
            "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n      - type: static\n        \
                        address: 10.0.2.300/24\n",
        );
        assert_eq!(
            e,
            [
                "7:18: error: network-config.config[0].subnets[0].address: \"10.0.2.300/24\": \"10.0.2.300\" is not an IP address"
            ]
        );
        let e = errors("version: 3\n");
        assert!(e[0].contains("version 1 or 2"), "{e:?}");
        let e = errors("version: 2\nethernets:\n  eth0: {addresses: [10.0.2.15], mtu: 9}\n");
        assert!(e.iter().any(|e| e.contains("needs a prefix length")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("not an MTU")), "{e:?}");
        // Bonds are left out with a warning, not refused.
        let (c, warnings) = parse(b"version: 2\nbonds: {bond0: {}}\nethernets: {eth0: {dhcp4: true}}\n").unwrap();
        assert!(c.interfaces[0].dhcp4);
        assert!(warnings[0].to_string().contains("not supported"));
    }
}
