//! What a platform says about the instance besides user data: its hostname and the SSH keys
//! it was launched with (an EC2 key pair, GCE `ssh-keys`, OpenStack `public_keys`, NoCloud
//! `public-keys`). As CoreOS and afterburn did, the keys go to `core` and the hostname is used
//! when the user data names none: a host launched with a key pair is reachable whatever its
//! user data says, even when that is refused.

use crate::document::CloudConfig;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub hostname: Option<String>,
    pub ssh_keys: Vec<String>,
}

impl InstanceMetadata {
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none() && self.ssh_keys.is_empty()
    }

    /// Adds to `c` what its user data did not say: the hostname when it names none, and the
    /// keys (for `core`) it does not already list.
    pub fn merge_into(&self, c: &mut CloudConfig) {
        if c.hostname.is_none() {
            c.hostname = self.hostname.clone();
        }
        for k in &self.ssh_keys {
            if !c.ssh_authorized_keys.contains(k) {
                c.ssh_authorized_keys.push(k.clone());
            }
        }
    }

    /// Keeps `name` as the hostname if it is one; a fully qualified name too long for the
    /// kernel (64) is cut to its first label, as EC2's `ip-10-0-0-1.ec2.internal` style allows.
    fn set_hostname(&mut self, name: &str) {
        let name = name.trim();
        let candidate = if name.len() > 64 { name.split('.').next().unwrap_or("") } else { name };
        if crate::document::is_hostname(candidate) {
            self.hostname = Some(candidate.to_string());
        }
    }

    /// Adds the lines of `text` that are SSH public keys (others, like comments, are skipped).
    fn add_keys<'a>(&mut self, lines: impl IntoIterator<Item = &'a str>) {
        for line in lines {
            let line = line.trim();
            if crate::users::looks_like_key(line) && !self.ssh_keys.iter().any(|k| k == line) {
                self.ssh_keys.push(line.to_string());
            }
        }
    }
}

/// A metadata document that is not in its format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct MetadataError {
    pub file: &'static str,
    pub message: String,
}

/// OpenStack's `meta_data.json` (config drive and metadata service): `hostname`, and
/// `public_keys` as a map of key name to key.
pub fn from_openstack_json(data: &[u8]) -> Result<InstanceMetadata, MetadataError> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| MetadataError { file: "meta_data.json", message: e.to_string() })?;
    let mut m = InstanceMetadata::default();
    if let Some(h) = v.get("hostname").and_then(|h| h.as_str()) {
        m.set_hostname(h);
    }
    if let Some(keys) = v.get("public_keys").and_then(|k| k.as_object()) {
        m.add_keys(keys.values().filter_map(|k| k.as_str()));
    }
    Ok(m)
}

/// NoCloud's `meta-data` (YAML): `local-hostname`, and `public-keys` as a list or one string.
pub fn from_nocloud_yaml(data: &[u8]) -> Result<InstanceMetadata, MetadataError> {
    use marked_yaml::Node;
    let bad = |message: String| MetadataError { file: "meta-data", message };
    let text = std::str::from_utf8(data).map_err(|_| bad("not UTF-8".into()))?;
    let mut m = InstanceMetadata::default();
    if text.trim().is_empty() {
        return Ok(m);
    }
    let root = marked_yaml::parse_yaml(0, text).map_err(|e| bad(e.to_string()))?;
    let Node::Mapping(map) = root else { return Err(bad("not a mapping".into())) };
    for (k, v) in map.iter() {
        match (k.as_str().replace('_', "-").as_str(), v) {
            ("local-hostname" | "hostname", Node::Scalar(s)) => m.set_hostname(s.as_str()),
            ("public-keys", Node::Scalar(s)) => m.add_keys(s.as_str().lines()),
            ("public-keys", Node::Sequence(items)) => {
                m.add_keys(items.iter().filter_map(|i| i.as_scalar()).map(|s| s.as_str()))
            }
            _ => {}
        }
    }
    Ok(m)
}

/// GCE's `ssh-keys` attribute: one `user:key` per line; the keys go to `core` whatever user
/// they name, as afterburn does.
pub fn gce_keys(text: &str) -> Vec<String> {
    let mut m = InstanceMetadata::default();
    m.add_keys(text.lines().map(|l| l.split_once(':').map_or(l, |(_, key)| key)));
    m.ssh_keys
}

/// Builds metadata from a hostname and key lines (EC2, GCE).
pub fn from_parts(hostname: Option<&str>, keys: &[String]) -> InstanceMetadata {
    let mut m = InstanceMetadata::default();
    if let Some(h) = hostname {
        m.set_hostname(h);
    }
    m.add_keys(keys.iter().map(String::as_str));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 me@laptop";

    #[test]
    fn openstack_meta_data_json() {
        let json = format!(r#"{{"uuid": "x", "hostname": "web-1.novalocal", "public_keys": {{"mykey": "{KEY}\n"}}}}"#);
        let m = from_openstack_json(json.as_bytes()).unwrap();
        assert_eq!(m, InstanceMetadata { hostname: Some("web-1.novalocal".into()), ssh_keys: vec![KEY.into()] });
        assert!(from_openstack_json(b"{").unwrap_err().to_string().starts_with("meta_data.json: "));
    }

    #[test]
    fn nocloud_meta_data_yaml() {
        let yaml = format!("instance-id: i-1\nlocal-hostname: seed-1\npublic-keys:\n  - {KEY}\n  - not a key\n");
        let m = from_nocloud_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(m, InstanceMetadata { hostname: Some("seed-1".into()), ssh_keys: vec![KEY.into()] });
        assert!(from_nocloud_yaml(b"instance-id: i-1\n").unwrap().is_empty());
        assert!(from_nocloud_yaml(b"").unwrap().is_empty());
    }

    #[test]
    fn gce_keys_drop_the_user_and_a_long_fqdn_keeps_its_first_label() {
        assert_eq!(gce_keys(&format!("alice:{KEY}\nbob:garbage\n")), [KEY]);
        let long = format!("{}.c.project.internal", "a".repeat(60));
        assert_eq!(from_parts(Some(&long), &[]).hostname, Some("a".repeat(60)));
        assert_eq!(from_parts(Some("bad_name!"), &[]).hostname, None);
    }

    #[test]
    fn user_data_wins_and_keys_add_up() {
        let mut c =
            CloudConfig { hostname: Some("mine".into()), ssh_authorized_keys: vec![KEY.into()], ..Default::default() };
        let other = KEY.replace("me@laptop", "ci@cloud");
        from_parts(Some("cloud-name"), &[KEY.into(), other.clone()]).merge_into(&mut c);
        assert_eq!(c.hostname.as_deref(), Some("mine"));
        assert_eq!(c.ssh_authorized_keys, [KEY.to_string(), other]);
    }
}
