//! The network configuration and the interfaces present, as the steps that configure them:
//! decided here without I/O; `apply.rs` carries them out.

use super::{Interface, NetworkConfig};
use std::net::IpAddr;

/// An Ethernet interface the kernel has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Present {
    pub name: String,
    /// Lower-case, colon-separated.
    pub mac: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<InterfacePlan>,
    /// `/etc/resolv.conf` when the config names resolvers; `None`: DHCP writes it.
    pub resolv_conf: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    /// Whether init runs a DHCP client on it.
    pub dhcp4: bool,
    /// `ip` commands (their arguments), in order.
    pub commands: Vec<Vec<String>>,
    /// Files under `/proc/sys` and what to write there.
    pub sysctls: Vec<(String, String)>,
}

/// Whether `i` is the config for `p`: every criterion given matches; a name ending in `*`
/// matches by prefix.
fn matches(i: &Interface, p: &Present) -> bool {
    let m = &i.matching;
    let mac_ok = m.mac.as_ref().is_none_or(|mac| *mac == p.mac);
    let name_ok = m.name.as_ref().is_none_or(|n| match n.strip_suffix('*') {
        Some(prefix) => p.name.starts_with(prefix),
        None => *n == p.name,
    });
    (m.mac.is_some() || m.name.is_some()) && mac_ok && name_ok
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "-4" } else { "-6" }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// What each present interface gets: its config's (the first that matches), or DHCP.
pub fn plan(config: &NetworkConfig, present: &[Present]) -> Plan {
    let mut out = Plan::default();
    for p in present {
        let iface = config.interfaces.iter().find(|i| matches(i, p));
        let ra = iface.is_none_or(|i| i.accept_ra);
        let dev = p.name.as_str();
        let mut ip = InterfacePlan {
            name: p.name.clone(),
            dhcp4: iface.is_none_or(|i| i.dhcp4),
            commands: Vec::new(),
            // 2: router advertisements count even with forwarding on (containers turn it on).
            sysctls: vec![
                (format!("net/ipv6/conf/{dev}/accept_ra"), if ra { "2" } else { "0" }.into()),
                (format!("net/ipv6/conf/{dev}/autoconf"), if ra { "1" } else { "0" }.into()),
            ],
        };
        if let Some(i) = iface {
            if let Some(mtu) = i.mtu {
                ip.commands.push(words(&["link", "set", "dev", dev, "mtu", &mtu.to_string()]));
            }
            ip.commands.push(words(&["link", "set", "dev", dev, "up"]));
            if !i.dhcp4 {
                // What a DHCP lease taken to read the metadata left behind.
                ip.commands.push(words(&["-4", "addr", "flush", "dev", dev]));
            }
            for a in &i.addresses {
                ip.commands.push(words(&[family(&a.ip), "addr", "add", &a.to_string(), "dev", dev]));
            }
            for g in &i.gateways {
                let to = super::Address::default_for(*g).to_string();
                ip.commands.push(words(&[family(g), "route", "replace", &to, "via", &g.to_string(), "dev", dev]));
            }
            for r in &i.routes {
                let mut c = words(&[family(&r.via), "route", "replace", &r.to.to_string(), "via", &r.via.to_string()]);
                c.extend(words(&["dev", dev]));
                if let Some(m) = r.metric {
                    c.extend(words(&["metric", &m.to_string()]));
                }
                ip.commands.push(c);
            }
        }
        out.interfaces.push(ip);
    }
    if !config.dns.servers.is_empty() {
        let mut text = String::new();
        if !config.dns.search.is_empty() {
            text.push_str(&format!("search {}\n", config.dns.search.join(" ")));
        }
        for s in &config.dns.servers {
            text.push_str(&format!("nameserver {s}\n"));
        }
        out.resolv_conf = Some(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Address, Dns, Match, Route};

    fn present() -> Vec<Present> {
        vec![
            Present { name: "eth0".into(), mac: "52:54:00:12:34:56".into() },
            Present { name: "eth1".into(), mac: "52:54:00:12:34:57".into() },
        ]
    }

    #[test]
    fn a_static_interface_by_mac_and_dhcp_for_the_rest() {
        let config = NetworkConfig {
            interfaces: vec![Interface {
                matching: Match { mac: Some("52:54:00:12:34:56".into()), name: None },
                dhcp4: false,
                addresses: vec![Address::parse("10.0.2.15/24").unwrap(), Address::parse("fd00::5/64").unwrap()],
                gateways: vec!["10.0.2.2".parse().unwrap()],
                routes: vec![Route {
                    to: Address::parse("10.9.0.0/16").unwrap(),
                    via: "10.0.2.3".parse().unwrap(),
                    metric: Some(100),
                }],
                mtu: Some(1400),
                accept_ra: false,
            }],
            dns: Dns { servers: vec!["10.0.2.2".parse().unwrap()], search: vec!["example.com".into()] },
        };
        let p = plan(&config, &present());
        let eth0: Vec<String> = p.interfaces[0].commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            eth0,
            [
                "link set dev eth0 mtu 1400",
                "link set dev eth0 up",
                "-4 addr flush dev eth0",
                "-4 addr add 10.0.2.15/24 dev eth0",
                "-6 addr add fd00::5/64 dev eth0",
                "-4 route replace 0.0.0.0/0 via 10.0.2.2 dev eth0",
                "-4 route replace 10.9.0.0/16 via 10.0.2.3 dev eth0 metric 100",
            ]
        );
        assert!(!p.interfaces[0].dhcp4);
        assert_eq!(p.interfaces[0].sysctls[0], ("net/ipv6/conf/eth0/accept_ra".into(), "0".into()));
        // eth1 is not named: DHCP, and SLAAC.
        assert!(p.interfaces[1].dhcp4 && p.interfaces[1].commands.is_empty());
        assert_eq!(p.interfaces[1].sysctls[0], ("net/ipv6/conf/eth1/accept_ra".into(), "2".into()));
        assert_eq!(p.resolv_conf.as_deref(), Some("search example.com\nnameserver 10.0.2.2\n"));
    }

    #[test]
    fn names_match_exactly_or_by_prefix_and_every_criterion_counts() {
        let by = |mac: Option<&str>, name: Option<&str>| Interface {
            matching: Match { mac: mac.map(String::from), name: name.map(String::from) },
            dhcp4: true,
            ..Default::default()
        };
        let p = &present()[1];
        assert!(matches(&by(None, Some("eth1")), p));
        assert!(matches(&by(None, Some("eth*")), p));
        assert!(!matches(&by(None, Some("eth")), p));
        assert!(!matches(&by(Some("52:54:00:12:34:56"), Some("eth1")), p));
        assert!(!matches(&by(None, None), p), "an empty match matches nothing");
    }
}
