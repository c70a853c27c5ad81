//! Azure: the provisioning media's `ovf-env.xml` (custom data, host name, launch SSH keys), the
//! instance metadata service (IMDS) for user data, the computer name and the launch SSH keys,
//! and the wire server, which must hear that the VM is ready or Azure counts the deployment as
//! failed.
//!
//! - Provisioning media (`media`, `ovf`): the custom data is the user data; IMDS's `userData`
//!   is used when there is none. The host name is the media's, else IMDS's; keys are both's.
//! - IMDS: `GET /metadata/instance/compute?api-version=2021-02-01` with `Metadata: true`:
//!   `userData` (base64), `osProfile.computerName`, `publicKeys[].keyData`.
//! - Wire server (`168.63.129.16`): `GET /machine/?comp=goalstate` (`x-ms-version:
//!   2012-11-30`) gives the goal state's incarnation, container id and role instance id;
//!   `POST /machine/?comp=health` reports that role instance `Ready` for that incarnation.

pub mod media;
pub mod ovf;

use super::http::Client;
use super::{Datasource, DatasourceError, Found, network_found};
use crate::instance::{self, InstanceMetadata};
use base64::Engine;
use std::path::PathBuf;
use std::time::Instant;

/// The wire server's fixed address on Azure.
pub const WIRE_SERVER: &str = "http://168.63.129.16";
/// The protocol version every wire server request names.
const WIRE_VERSION: &str = "2012-11-30";
const IMDS_VERSION: &str = "2021-02-01";

pub struct Azure {
    /// IMDS: `http://169.254.169.254`.
    pub base: String,
    pub wire_server: String,
    /// Where the provisioning media is looked for: `/sys/class/block` and `/dev`...
    pub sys_block: PathBuf,
    pub dev: PathBuf,
    /// ...and mounted: a directory that must not exist yet.
    pub mount_dir: PathBuf,
}

/// What the goal state says the ready report must name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoalState {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
}

impl Datasource for Azure {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn needs_network(&self) -> bool {
        true
    }

    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError> {
        let media = self.provisioning_media()?;
        let imds = self.imds(until);
        let Some((dev, p)) = media else {
            let (user_data, instance) = match imds? {
                Some(found) => found,
                None => return Ok(None),
            };
            return Ok(network_found(format!("azure {}", self.base), user_data, Ok(instance)));
        };
        let mut warnings = Vec::new();
        let (imds_data, imds_instance) = match imds {
            Ok(found) => found.unwrap_or_default(),
            Err(e) => {
                warnings.push(format!("{e} (the provisioning media's data is used alone)"));
                Default::default()
            }
        };
        let keys: Vec<String> = p.ssh_keys.iter().chain(&imds_instance.ssh_keys).cloned().collect();
        let instance = instance::from_parts(p.hostname.as_deref().or(imds_instance.hostname.as_deref()), &keys);
        let (source, data) = match (p.custom_data, imds_data) {
            (Some(custom), _) => (format!("azure {} {}", dev.display(), media::OVF_ENV), custom),
            (None, Some(user_data)) => (format!("azure {}", self.base), user_data),
            (None, None) => (format!("azure {} {}", dev.display(), media::OVF_ENV), Vec::new()),
        };
        let mut found = Found::user_data(source, data);
        found.instance = instance;
        found.warnings = warnings;
        Ok(Some(found))
    }

    fn report_ready(&self, until: Instant) -> Result<Option<String>, DatasourceError> {
        let c = Client::new(until)?;
        let base = self.wire_server.trim_end_matches('/');
        let what = "Azure wire server goal state";
        let req = c.http.get(format!("{base}/machine/?comp=goalstate")).header("x-ms-version", WIRE_VERSION);
        let xml = c.text(req, what)?.ok_or_else(|| DatasourceError::Status { what: what.into(), status: 404 })?;
        let goal = goal_state(&xml).map_err(|message| DatasourceError::Malformed { what: what.into(), message })?;
        let what = "Azure wire server health report";
        let req = c
            .http
            .post(format!("{base}/machine/?comp=health"))
            .header("x-ms-version", WIRE_VERSION)
            .header("x-ms-agent-name", "cairn")
            .header("Content-Type", "text/xml; charset=utf-8")
            .body(ready_report(&goal));
        let resp = c.send(req, what)?;
        match resp.status().as_u16() {
            200..=299 => Ok(Some(format!("reported ready to {base} (incarnation {})", goal.incarnation))),
            status => Err(DatasourceError::Status { what: what.into(), status }),
        }
    }
}

impl Azure {
    /// The provisioning media's document, if a DVD has one.
    fn provisioning_media(&self) -> Result<Option<(PathBuf, ovf::Provisioning)>, DatasourceError> {
        let devices = crate::local::block_devices(&self.sys_block, &self.dev);
        let what = || format!("Azure provisioning media ({})", media::OVF_ENV);
        let Some((dev, xml)) = media::read_ovf_env(&devices, &self.mount_dir)
            .map_err(|source| DatasourceError::Io { what: what(), source })?
        else {
            return Ok(None);
        };
        let malformed =
            |message| DatasourceError::Malformed { what: format!("{} on {}", media::OVF_ENV, dev.display()), message };
        let text = String::from_utf8(xml).map_err(|_| malformed("not UTF-8".to_string()))?;
        Ok(Some((dev.clone(), ovf::parse(&text).map_err(malformed)?)))
    }

    /// IMDS's user data and instance metadata; `None` if it has neither.
    fn imds(&self, until: Instant) -> Result<Option<Compute>, DatasourceError> {
        let c = Client::new(until)?;
        let base = self.base.trim_end_matches('/');
        let what = "Azure IMDS compute";
        let req = c
            .http
            .get(format!("{base}/metadata/instance/compute?api-version={IMDS_VERSION}"))
            .header("Metadata", "true");
        let Some(body) = c.body(c.send(req, what)?, what)? else { return Ok(None) };
        compute(&body).map(Some).map_err(|message| DatasourceError::Malformed { what: what.into(), message })
    }
}

/// What IMDS's compute document gives: the user data (absent when empty) and the instance
/// metadata.
pub type Compute = (Option<Vec<u8>>, InstanceMetadata);

pub fn compute(body: &[u8]) -> Result<Compute, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let user_data = match v["userData"].as_str().unwrap_or_default() {
        "" => None,
        b64 => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("userData is not base64: {e}"))?,
        ),
    };
    let hostname = v["osProfile"]["computerName"].as_str().filter(|h| !h.is_empty());
    let keys: Vec<String> = v["publicKeys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["keyData"].as_str().map(str::to_string))
        .collect();
    Ok((user_data, instance::from_parts(hostname, &keys)))
}

/// The text of the first `<tag>...</tag>` in `xml`, entities decoded; the goal state is flat
/// enough that a reader of the elements it needs does.
fn element<'x>(xml: &'x str, tag: &str) -> Option<&'x str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

pub fn goal_state(xml: &str) -> Result<GoalState, String> {
    let need = |scope: &str, tag: &str| {
        element(scope, tag)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("the goal state has no {tag}"))
    };
    let container = element(xml, "Container").ok_or("the goal state has no Container")?;
    let goal = GoalState {
        incarnation: need(xml, "Incarnation")?,
        container_id: need(container, "ContainerId")?,
        instance_id: need(
            element(container, "RoleInstance").ok_or("the goal state has no RoleInstance")?,
            "InstanceId",
        )?,
    };
    // Echoed into our XML: only what ids and numbers are made of.
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if ![&goal.incarnation, &goal.container_id, &goal.instance_id].iter().all(|s| plain(s)) {
        return Err("the goal state's ids have unexpected characters".into());
    }
    Ok(goal)
}

/// The health report that tells the wire server this role instance is ready.
pub fn ready_report(g: &GoalState) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n\
         \x20 <GoalStateIncarnation>{}</GoalStateIncarnation>\n\
         \x20 <Container>\n\
         \x20   <ContainerId>{}</ContainerId>\n\
         \x20   <RoleInstanceList>\n\
         \x20     <Role>\n\
         \x20       <InstanceId>{}</InstanceId>\n\
         \x20       <Health>\n\
         \x20         <State>Ready</State>\n\
         \x20       </Health>\n\
         \x20     </Role>\n\
         \x20   </RoleInstanceList>\n\
         \x20 </Container>\n\
         </Health>\n",
        g.incarnation, g.container_id, g.instance_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOAL: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState><Version>2012-11-30</Version>\
        <Incarnation>7</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine><Container>\
        <ContainerId>8ee0f2ef-0f6c-4e1e-a0c4-6c9b9f4cb2c3</ContainerId><RoleInstanceList><RoleInstance>\
        <InstanceId>b8a1e9c0.cairn-vm</InstanceId><State>Started</State></RoleInstance></RoleInstanceList>\
        </Container></GoalState>";

    #[test]
    fn the_ready_report_names_the_goal_states_incarnation_container_and_instance() {
        let g = goal_state(GOAL).unwrap();
        assert_eq!(g.incarnation, "7");
        assert_eq!(g.instance_id, "b8a1e9c0.cairn-vm");
        let report = ready_report(&g);
        assert!(report.contains("<GoalStateIncarnation>7</GoalStateIncarnation>"), "{report}");
        assert!(report.contains("<ContainerId>8ee0f2ef-0f6c-4e1e-a0c4-6c9b9f4cb2c3</ContainerId>"));
        assert!(report.contains("<State>Ready</State>"));
        assert!(goal_state("<GoalState><Incarnation>1</Incarnation></GoalState>").unwrap_err().contains("Container"));
        let evil = GOAL.replace("b8a1e9c0.cairn-vm", "x&lt;/InstanceId&gt;");
        assert!(goal_state(&evil).is_err());
    }

    #[test]
    fn imds_compute_gives_user_data_hostname_and_keys() {
        let body = br#"{"osProfile": {"computerName": "cairn-az"}, "userData": "I2Nsb3VkLWNvbmZpZwo=",
                        "publicKeys": [{"keyData": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 az", "path": "/home/x/.ssh/authorized_keys"}]}"#;
        let (data, m) = compute(body).unwrap();
        assert_eq!(data.unwrap(), b"#cloud-config\n");
        assert_eq!(m.hostname.as_deref(), Some("cairn-az"));
        assert_eq!(m.ssh_keys.len(), 1);
        let (data, _) = compute(br#"{"userData": ""}"#).unwrap();
        assert!(data.is_none());
        assert!(compute(br#"{"userData": "!!"}"#).unwrap_err().contains("base64"));
    }
}
