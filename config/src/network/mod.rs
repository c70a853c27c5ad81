//! Network configuration: what each interface gets (DHCP stays the default), from
//! cloud-config's `cairn.network` (`cairn.rs`), a NoCloud seed's `network-config` in
//! cloud-init's v1 or v2 format (`nocloud.rs`), or OpenStack's `network_data.json`
//! (`openstack.rs`), all read into one model; `plan.rs` (pure) turns it and the interfaces
//! present into the steps `apply.rs` carries out at boot, before init starts DHCP.

pub mod apply;
pub mod cairn;
pub mod nocloud;
pub mod openstack;
pub mod plan;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The applied config's network settings, kept for every boot (and the last good config).
pub const CONFIG_FILE: &str = "/etc/cairn/network.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub interfaces: Vec<Interface>,
    /// Resolvers for `/etc/resolv.conf`; empty: DHCP's.
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Which interface: by MAC address or by name (`eth0`, or a prefix pattern `eth*`).
    #[serde(rename = "match")]
    pub matching: Match,
    /// DHCPv4 on it; off when it has static addresses unless asked for.
    pub dhcp4: bool,
    pub addresses: Vec<Address>,
    /// Default routes' gateways (IPv4 and IPv6).
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// IPv6 router advertisements accepted (SLAAC), even with forwarding on (containers).
    #[serde(default = "yes")]
    pub accept_ra: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Lower-case, colon-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An address with its prefix length (`10.0.2.15/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub to: Address,
    pub via: IpAddr,
    #[serde(default)]
    pub metric: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl Address {
    /// `10.0.2.15/24`, `fd00::5/64`; `default` is no part of it.
    pub fn parse(s: &str) -> Result<Address, String> {
        let (ip, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} needs a prefix length (10.0.2.15/24)"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max);
        let prefix = prefix.ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?;
        Ok(Address { ip, prefix })
    }

    /// An address and a dotted netmask (`255.255.255.0`), as v1 and OpenStack write them.
    pub fn with_netmask(ip: &str, netmask: &str) -> Result<Address, String> {
        let ip: IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
        let prefix = match netmask.parse::<IpAddr>() {
            Ok(IpAddr::V4(m)) if ip.is_ipv4() => {
                let bits = u32::from(m);
                (bits.leading_ones() + bits.trailing_zeros() == 32).then_some(bits.leading_ones() as u8)
            }
            Ok(IpAddr::V6(m)) if ip.is_ipv6() => {
                let bits = u128::from(m);
                (bits.leading_ones() + bits.trailing_zeros() == 128).then_some(bits.leading_ones() as u8)
            }
            // IPv6 netmasks are often a prefix length already.
            _ => netmask.parse::<u8>().ok().filter(|p| *p <= if ip.is_ipv4() { 32 } else { 128 }),
        };
        let prefix = prefix.ok_or_else(|| format!("{netmask:?} is not a netmask for {ip}"))?;
        Ok(Address { ip, prefix })
    }

    /// The default route of the address family of `via`.
    pub fn default_for(via: IpAddr) -> Address {
        match via {
            IpAddr::V4(_) => Address { ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), prefix: 0 },
            IpAddr::V6(_) => Address { ip: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), prefix: 0 },
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// A MAC address in lower case with colons, or an error naming it.
pub fn mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok { Ok(s.to_ascii_lowercase()) } else { Err(format!("{s:?} is not a MAC address (52:54:00:12:34:56)")) }
}

/// An interface name or a prefix pattern (`eth*`): what the kernel allows in a name.
pub fn interface_name(s: &str) -> Result<String, String> {
    let stem = s.strip_suffix('*').unwrap_or(s);
    let ok =
        !stem.is_empty() && stem.len() < 16 && stem.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not an interface name (eth0, or a prefix: eth*)")) }
}

/// A DNS search domain.
pub fn domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not a domain name")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_prefixes_or_netmasks() {
        assert_eq!(Address::parse("10.0.2.15/24").unwrap().to_string(), "10.0.2.15/24");
        assert_eq!(Address::parse("fd00::5/64").unwrap().to_string(), "fd00::5/64");
        assert!(Address::parse("10.0.2.15").unwrap_err().contains("prefix length"));
        assert!(Address::parse("10.0.2.15/33").unwrap_err().contains("0-32"));
        assert!(Address::parse("10.0.2/24").unwrap_err().contains("not an IP address"));
        assert_eq!(Address::with_netmask("10.0.2.15", "255.255.255.0").unwrap().to_string(), "10.0.2.15/24");
        assert_eq!(Address::with_netmask("fd00::5", "64").unwrap().to_string(), "fd00::5/64");
        assert_eq!(Address::with_netmask("fd00::5", "ffff:ffff:ffff:ffff::").unwrap().to_string(), "fd00::5/64");
        assert!(Address::with_netmask("10.0.2.15", "255.0.255.0").is_err());
    }

    #[test]
    fn macs_names_and_domains() {
        assert_eq!(mac("52:54:00:AB:cd:01").unwrap(), "52:54:00:ab:cd:01");
        assert!(mac("52:54:00:ab:cd").is_err());
        assert!(interface_name("eth*").is_ok());
        assert!(interface_name("eth0; rm").is_err());
        assert!(domain("example.com").is_ok());
        assert!(domain("bad domain").is_err());
    }
}
