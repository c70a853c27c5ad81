//! Time sources for chronyd: `cairn.ntp` from cloud-config, or what the platform offers.
//!
//! chronyd (`/usr/lib/cairn/chrony/chrony.conf`) reads every `*.sources` file in two
//! directories. cloud-config's `cairn.ntp` is written to `/etc/cairn/chrony/ntp.sources` and,
//! when present, is the whole list. Otherwise the boot step writes the platform's source to
//! `/run/cairn/chrony/platform.sources` (AWS's and GCE's link-local servers, or Debian's pool
//! elsewhere), and the DHCP client adds the servers a lease names (option 42) beside it.

use crate::platform::Platform;
use crate::walk::{Value, Walker};
use serde::Serialize;

pub const KEYS: &[&str] = &["servers", "pools"];

/// cloud-config's sources (`/etc/cairn/chrony/ntp.sources`).
pub const CONFIG_SOURCES: &str = "/etc/cairn/chrony/ntp.sources";
/// The platform's and DHCP's sources, made at every boot.
pub const RUNTIME_DIR: &str = "/run/cairn/chrony";
/// Used where neither the config nor the platform names a source.
pub const DEFAULT_POOL: &str = "2.debian.pool.ntp.org";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ntp {
    pub servers: Vec<Source>,
    pub pools: Vec<Source>,
}

/// A server: a host name or address, and a port when not 123.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    pub host: String,
    pub port: Option<u16>,
}

impl std::str::FromStr for Source {
    type Err = String;

    /// `time.example.com`, `10.0.2.2:1123`, `[2001:db8::1]:123`, `2001:db8::1`.
    fn from_str(s: &str) -> Result<Source, String> {
        let bad = || format!("{s:?} is not a host name or address, with an optional :port");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            addr.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            (addr.to_string(), port)
        } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
            (s.to_string(), None)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.to_string(), None),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{s:?}: the port must be 1-65535")))
            .transpose()?;
        let name_ok = host.contains(':')
            || (!host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }));
        if !name_ok {
            return Err(bad());
        }
        Ok(Source { host, port })
    }
}

impl Source {
    /// A chrony directive (`server` or `pool`) for this source.
    fn directive(&self, kind: &str) -> String {
        let port = self.port.map(|p| format!(" port {p}")).unwrap_or_default();
        format!("{kind} {} iburst{port}\n", self.host)
    }
}

/// `cairn.ntp`: `{servers: [...], pools: [...]}`, at least one source in all.
pub fn ntp(w: &mut Walker, v: Value, path: &str) -> Option<Ntp> {
    let f = w.mapping(v, path, KEYS)?;
    let before = w.diagnostics.len();
    let list = |w: &mut Walker, key: &str| -> Vec<Source> {
        let Some((v, p)) = f.get(key) else { return Vec::new() };
        let mut out = Vec::new();
        for (item, ip) in w.list(v, &p).unwrap_or_default() {
            if let Some(s) = w.text(item, &ip) {
                match s.parse() {
                    Ok(source) => out.push(source),
                    Err(e) => w.error(item.at, &ip, e),
                }
            }
        }
        out
    };
    let ntp = Ntp { servers: list(w, "servers"), pools: list(w, "pools") };
    if crate::diag::has_errors(&w.diagnostics[before..]) {
        return None;
    }
    if ntp.servers.is_empty() && ntp.pools.is_empty() {
        w.error(v.at, path, "names no time source: give servers or pools (without cairn.ntp, the platform's are used)");
        return None;
    }
    Some(ntp)
}

/// The `ntp.sources` file of a config's `cairn.ntp`.
pub fn config_sources(ntp: &Ntp, mark: &str) -> String {
    let mut out = mark.to_string();
    out.extend(ntp.servers.iter().map(|s| s.directive("server")));
    out.extend(ntp.pools.iter().map(|s| s.directive("pool")));
    out
}

/// The platform's own time source: AWS's Time Sync Service and GCE's metadata server answer
/// NTP at link-local addresses; elsewhere, Debian's pool.
pub fn platform_sources(platform: Platform) -> String {
    match platform {
        Platform::Ec2 => "server 169.254.169.123 iburst prefer\n".to_string(),
        Platform::Gce => "server 169.254.169.254 iburst prefer\n".to_string(),
        _ => format!("pool {DEFAULT_POOL} iburst\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_names_or_addresses_with_an_optional_port() {
        let s = |t: &str| t.parse::<Source>();
        assert_eq!(s("time.example.com").unwrap(), Source { host: "time.example.com".into(), port: None });
        assert_eq!(s("10.0.2.2:1123").unwrap(), Source { host: "10.0.2.2".into(), port: Some(1123) });
        assert_eq!(s("[2001:db8::1]:123").unwrap(), Source { host: "2001:db8::1".into(), port: Some(123) });
        assert_eq!(s("2001:db8::1").unwrap(), Source { host: "2001:db8::1".into(), port: None });
        assert!(s("time.example.com:0").unwrap_err().contains("1-65535"));
        assert!(s("bad host").is_err());
        assert!(s("server x\nallow all").is_err(), "no directive can be smuggled in");
        assert!(s("").is_err());
    }

    #[test]
    fn chrony_lines_for_the_config_and_each_platform() {
        let ntp = Ntp { servers: vec!["10.0.2.2:1123".parse().unwrap()], pools: vec!["pool.ntp.org".parse().unwrap()] };
        assert_eq!(
            config_sources(&ntp, "# mark\n"),
            "# mark\nserver 10.0.2.2 iburst port 1123\npool pool.ntp.org iburst\n"
        );
        assert_eq!(platform_sources(Platform::Ec2), "server 169.254.169.123 iburst prefer\n");
        assert_eq!(platform_sources(Platform::Gce), "server 169.254.169.254 iburst prefer\n");
        assert_eq!(platform_sources(Platform::Qemu), "pool 2.debian.pool.ntp.org iburst\n");
    }
}
