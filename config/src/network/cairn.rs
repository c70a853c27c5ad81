//! `cairn.network` in cloud-config, and the readers of typed values the other formats share.
//!
//! ```yaml
//! cairn:
//!   network:
//!     interfaces:
//!       - match: {mac: "52:54:00:12:34:56"}   # or {name: eth0}, {name: "eth*"}
//!         addresses: [10.0.2.15/24, "fd00::5/64"]
//!         gateways: [10.0.2.2]
//!         routes: [{to: 10.9.0.0/16, via: 10.0.2.3, metric: 100}]
//!         mtu: 1400
//!         dhcp4: false          # default: true without addresses
//!         accept_ra: true       # IPv6 SLAAC (default true)
//!     dns: {servers: [10.0.2.2], search: [example.com]}
//! ```

use super::{Address, Dns, Interface, Match, NetworkConfig, Route};
use crate::walk::{Fields, Value, Walker};
use std::net::IpAddr;

pub const KEYS: &[&str] = &["interfaces", "dns"];
pub const INTERFACE_KEYS: &[&str] = &["match", "addresses", "gateways", "routes", "mtu", "dhcp4", "accept_ra"];
pub const MATCH_KEYS: &[&str] = &["mac", "name"];
pub const ROUTE_KEYS: &[&str] = &["to", "via", "metric"];
pub const DNS_KEYS: &[&str] = &["servers", "search"];

/// A scalar read by `parse`, whose message says what is wrong.
pub(super) fn scalar<T>(w: &mut Walker, v: Value, path: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
    let s = w.text(v, path)?;
    parse(&s).map_err(|e| w.error(v.at, path, e)).ok()
}

/// A list of scalars, each read by `parse`; a lone scalar is a list of one (as cloud-init
/// takes it).
pub(super) fn scalars<T>(w: &mut Walker, v: Value, path: &str, parse: impl Fn(&str) -> Result<T, String>) -> Vec<T> {
    if let marked_yaml::Node::Scalar(_) = v.node {
        return scalar(w, v, path, &parse).into_iter().collect();
    }
    let items = w.list(v, path).unwrap_or_default();
    items.into_iter().filter_map(|(item, p)| scalar(w, item, &p, &parse)).collect()
}

pub(super) fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// An MTU Linux can set on Ethernet.
pub(super) fn mtu(w: &mut Walker, v: Value, path: &str) -> Option<u32> {
    let n = w.u32(v, path)?;
    if (68..=65535).contains(&n) {
        return Some(n);
    }
    w.error(v.at, path, format!("{n} is not an MTU (68-65535)"));
    None
}

/// `cairn.network`.
pub fn network(w: &mut Walker, v: Value, path: &str) -> Option<NetworkConfig> {
    let f = w.mapping(v, path, KEYS)?;
    let before = w.diagnostics.len();
    let mut config = NetworkConfig::default();
    if let Some((v, p)) = f.get("interfaces") {
        config.interfaces = w.records(v, &p, INTERFACE_KEYS, interface);
    }
    if let Some((v, p)) = f.get("dns")
        && let Some(d) = w.mapping(v, &p, DNS_KEYS)
    {
        config.dns = dns(w, &d);
    }
    (!crate::diag::has_errors(&w.diagnostics[before..])).then_some(config)
}

pub(super) fn dns(w: &mut Walker, f: &Fields) -> Dns {
    Dns {
        servers: f.get("servers").map(|(v, p)| scalars(w, v, &p, ip)).unwrap_or_default(),
        search: f.get("search").map(|(v, p)| scalars(w, v, &p, super::domain)).unwrap_or_default(),
    }
}

fn interface(w: &mut Walker, f: &Fields, item: Value, path: &str) -> Option<Interface> {
    let matching = match f.get("match") {
        Some((v, p)) => {
            let m = w.mapping(v, &p, MATCH_KEYS)?;
            let matching = Match {
                mac: m.get("mac").and_then(|(v, p)| scalar(w, v, &p, super::mac)),
                name: m.get("name").and_then(|(v, p)| scalar(w, v, &p, super::interface_name)),
            };
            if matching.mac.is_none() && matching.name.is_none() {
                w.error(v.at, &p, "needs a mac or a name");
            }
            matching
        }
        None => {
            w.error(item.at, path, "needs a match ({mac: ...} or {name: ...})");
            Match::default()
        }
    };
    let addresses = f.get("addresses").map(|(v, p)| scalars(w, v, &p, Address::parse)).unwrap_or_default();
    let gateways = f.get("gateways").map(|(v, p)| scalars(w, v, &p, ip)).unwrap_or_default();
    let routes = f.get("routes").map(|(v, p)| w.records(v, &p, ROUTE_KEYS, route)).unwrap_or_default();
    let mtu = f.get("mtu").and_then(|(v, p)| mtu(w, v, &p));
    let dhcp4 = f.get("dhcp4").and_then(|(v, p)| w.bool(v, &p)).unwrap_or(addresses.is_empty());
    let accept_ra = f.get("accept_ra").and_then(|(v, p)| w.bool(v, &p)).unwrap_or(true);
    Some(Interface { matching, dhcp4, addresses, gateways, routes, mtu, accept_ra })
}

fn route(w: &mut Walker, f: &Fields, item: Value, path: &str) -> Option<Route> {
    let to = match f.get("to") {
        Some((v, p)) => scalar(w, v, &p, |s| {
            if s == "default" { Err("use gateways for default routes".into()) } else { Address::parse(s) }
        }),
        None => {
            w.error(item.at, path, "needs to (a destination, 10.9.0.0/16)");
            None
        }
    };
    let via = match f.get("via") {
        Some((v, p)) => scalar(w, v, &p, ip),
        None => {
            w.error(item.at, path, "needs via (the gateway)");
            None
        }
    };
    let metric = f.get("metric").and_then(|(v, p)| w.u32(v, &p));
    let (to, via) = (to?, via?);
    if to.ip.is_ipv4() != via.is_ipv4() {
        w.error(item.at, path, format!("{to} and {via} are of different address families"));
        return None;
    }
    Some(Route { to, via, metric })
}
