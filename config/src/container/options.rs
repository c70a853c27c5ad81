//! A container's settings in Docker's spelling (`ports: ["8080:80"]`, `volumes: ["name:/data:ro"]`,
//! `user: "1000:1000"`): parsed once when cloud-config is read, kept in the container's spec file in
//! the same spelling, so what an operator wrote is what they read back.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Serde reads and writes the type as its text (`FromStr` and `Display`), as cloud-config has it.
macro_rules! spelled_as_text {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<$t, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    };
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Its own network namespace on the host's container bridge (CNI), reached by published ports.
    #[default]
    Bridge,
    /// The host's network namespace: it listens on the host's addresses.
    Host,
    /// Its own network namespace with only a loopback interface.
    None,
}

impl Network {
    pub const NAMES: &[&str] = &["bridge", "host", "none"];

    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "bridge" => Some(Network::Bridge),
            "host" => Some(Network::Host),
            "none" => Some(Network::None),
            _ => None,
        }
    }

    pub fn is_bridge(&self) -> bool {
        *self == Network::Bridge
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A published port: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Port {
    /// The host address it is published on; all of the host's when `None`.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} {s:?} is not a port number (1-65535)")),
    }
}

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Port, String> {
        let (rest, protocol) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some((_, p)) => return Err(format!("{s:?}: protocol {p:?} is not tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        // An IPv6 host address is bracketed, as Docker writes it: [::1]:8080:80.
        let (host_ip, ports) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, ports) = v6.split_once("]:").ok_or_else(|| format!("{s:?}: an unclosed [address]"))?;
            (Some(ip), ports)
        } else {
            match rest.matches(':').count() {
                1 => (None, rest),
                2 => rest.split_once(':').map(|(ip, p)| (Some(ip), p)).expect("two colons"),
                _ => {
                    return Err(format!(
                        "{s:?} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp] (a published port needs its host port)"
                    ));
                }
            }
        };
        let host_ip = host_ip
            .map(|ip| ip.parse::<IpAddr>().map_err(|_| format!("{s:?}: {ip:?} is not an IP address")))
            .transpose()?;
        let (host, container) = ports.split_once(':').expect("counted above");
        if host.contains('-') || container.contains('-') {
            return Err(format!("{s:?}: port ranges are not supported; publish each port"));
        }
        Ok(Port {
            host_ip,
            host_port: port_number(host, &format!("{s:?}: host port"))?,
            container_port: port_number(container, &format!("{s:?}: container port"))?,
            protocol,
        })
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}", self.host_port, self.container_port)?;
        if self.protocol == Protocol::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

spelled_as_text!(Port);

/// Where a volume's content lives on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A host path, bind-mounted as it is.
    Path(String),
    /// A named volume: a directory Cairn keeps under `VOLUMES_DIR` on ROOT, so it outlives
    /// the container, reboots and OS updates.
    Named(String),
}

/// Named volumes, on ROOT.
pub const VOLUMES_DIR: &str = "/var/lib/cairn/volumes";

/// A volume: `SOURCE:TARGET[:ro|:rw]`, where SOURCE is an absolute host path or a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

impl Volume {
    /// The host directory the volume mounts.
    pub fn host_path(&self) -> String {
        match &self.source {
            VolumeSource::Path(p) => p.clone(),
            VolumeSource::Named(n) => format!("{VOLUMES_DIR}/{n}"),
        }
    }
}

fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.contains('\0')
}

impl FromStr for Volume {
    type Err = String;

    fn from_str(s: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts[..] {
            [source, target] => (source, target, false),
            [source, target, "ro"] => (source, target, true),
            [source, target, "rw"] => (source, target, false),
            [_, _, mode] => return Err(format!("{s:?}: mode {mode:?} is not ro or rw")),
            _ => return Err(format!("{s:?} is not SOURCE:TARGET[:ro|:rw]")),
        };
        if !clean_absolute(target) {
            return Err(format!("{s:?}: the target {target:?} must be an absolute path without \"..\""));
        }
        let source = if source.starts_with('/') {
            if !clean_absolute(source) {
                return Err(format!("{s:?}: the host path {source:?} must not contain \"..\""));
            }
            VolumeSource::Path(source.to_string())
        } else {
            let ok = !source.is_empty()
                && source.len() <= 64
                && source.starts_with(|c: char| c.is_ascii_alphanumeric())
                && source.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(format!(
                    "{s:?}: {source:?} is neither an absolute host path nor a volume name (letters, digits, '-', '_', '.')"
                ));
            }
            VolumeSource::Named(source.to_string())
        };
        Ok(Volume { source, target: target.to_string(), read_only })
    }
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let source = match &self.source {
            VolumeSource::Path(p) | VolumeSource::Named(p) => p,
        };
        write!(f, "{source}:{}{}", self.target, if self.read_only { ":ro" } else { "" })
    }
}

spelled_as_text!(Volume);

/// Who the container's process runs as: `UID[:GID]`, or a name from the image's `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum User {
    Id { uid: u32, gid: Option<u32> },
    Name(String),
}

impl FromStr for User {
    type Err = String;

    fn from_str(s: &str) -> Result<User, String> {
        let number = |n: &str| n.parse::<u32>().map_err(|_| format!("{s:?}: {n:?} is not a numeric id"));
        match s.split_once(':') {
            Some((uid, gid)) => Ok(User::Id { uid: number(uid)?, gid: Some(number(gid)?) }),
            None if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() => {
                Ok(User::Id { uid: number(s)?, gid: None })
            }
            None if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                Ok(User::Name(s.to_string()))
            }
            None => Err(format!("{s:?} is not UID, UID:GID or a user name")),
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            User::Id { uid, gid: Some(gid) } => write!(f, "{uid}:{gid}"),
            User::Id { uid, gid: None } => write!(f, "{uid}"),
            User::Name(n) => f.write_str(n),
        }
    }
}

spelled_as_text!(User);

/// A health command, run in the container (like Docker's `HEALTHCHECK`): `retries` failures in a
/// row restart the container, and a container with one is ready (for the host's readiness,
/// like a required service) once it first succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub command: Vec<String>,
    /// Between checks (a duration, default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// The longest one check may take (default: the interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures in a row that make it unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

impl Health {
    pub const KEYS: &[&str] = &["command", "interval", "timeout", "retries"];
    const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    fn duration(text: Option<&str>) -> Option<std::time::Duration> {
        text.and_then(|t| cairn_release::duration::parse(t).ok())
    }

    pub fn interval(&self) -> std::time::Duration {
        Self::duration(self.interval.as_deref()).unwrap_or(Self::DEFAULT_INTERVAL)
    }

    pub fn timeout(&self) -> std::time::Duration {
        Self::duration(self.timeout.as_deref()).unwrap_or_else(|| self.interval())
    }

    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(3).max(1)
    }
}

/// Where a container's runner listens once its health command first succeeds: init's readiness
/// check for the container's service.
pub fn ready_socket(name: &str) -> String {
    format!("/run/cairn/containers/{name}.ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_as_docker_writes_them_and_written_back_the_same() {
        let p: Port = "8080:80".parse().unwrap();
        assert_eq!((p.host_ip, p.host_port, p.container_port, p.protocol), (None, 8080, 80, Protocol::Tcp));
        let p: Port = "127.0.0.1:9000:9000/udp".parse().unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        for s in ["8080:80", "127.0.0.1:9000:9000/udp", "[::1]:53:53/udp", "1:65535"] {
            assert_eq!(s.parse::<Port>().unwrap().to_string(), s);
        }
        for (bad, says) in [
            ("80", "needs its host port"),
            ("0:80", "not a port number"),
            ("8080:80/sctp", "not tcp or udp"),
            ("1.2.3:80:80", "not an IP address"),
            ("8000-8010:80", "ranges"),
            ("70000:80", "not a port number"),
            ("[::1:80:80", "unclosed"),
        ] {
            let e = bad.parse::<Port>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn volumes_are_host_paths_or_names() {
        let v: Volume = "/var/lib/app:/data".parse().unwrap();
        assert_eq!(v.source, VolumeSource::Path("/var/lib/app".into()));
        assert_eq!((v.target.as_str(), v.read_only), ("/data", false));
        let v: Volume = "cache:/cache:ro".parse().unwrap();
        assert_eq!(v.host_path(), "/var/lib/cairn/volumes/cache");
        assert!(v.read_only);
        assert_eq!(v.to_string(), "cache:/cache:ro");
        for (bad, says) in [
            ("/a", "SOURCE:TARGET"),
            ("cache:data", "absolute"),
            ("cache:/data:rx", "not ro or rw"),
            ("../etc:/x", "volume name"),
            ("/var/../etc:/x", "must not contain"),
            ("cache:/x/../y", "without"),
        ] {
            let e = bad.parse::<Volume>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn users_are_ids_or_names() {
        assert_eq!("1000".parse::<User>().unwrap(), User::Id { uid: 1000, gid: None });
        assert_eq!("1000:50".parse::<User>().unwrap(), User::Id { uid: 1000, gid: Some(50) });
        assert_eq!("nobody".parse::<User>().unwrap(), User::Name("nobody".into()));
        for bad in ["", "a:b", "1000:", "x y"] {
            assert!(bad.parse::<User>().is_err(), "{bad}");
        }
    }
}
