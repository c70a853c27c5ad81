//! Where a host's user data and instance metadata come from: one module per datasource, each
//! implementing [`Datasource`]. Which of them a platform tries, and in which order, is decided
//! in one place: `crate::platform::datasources`.

pub mod azure;
pub mod ec2;
pub mod fw_cfg;
pub mod gce;
mod http;
pub mod openstack;
pub mod url;
pub mod volume;

use crate::instance::InstanceMetadata;
use std::time::Instant;

/// User data (possibly empty) and instance metadata, and where they were found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// `fw_cfg opt/cairn/user-data`, `config-2 /dev/vdb`, `ec2 http://169.254.169.254`, ...
    pub source: String,
    pub data: Vec<u8>,
    /// The platform's hostname and launch SSH keys, added to whatever config is applied.
    pub instance: InstanceMetadata,
    /// Problems with the metadata beside the user data (the user data is used regardless).
    pub warnings: Vec<String>,
    /// The platform's network configuration, read with the user data: a document is refused
    /// whole when either is invalid.
    pub network: Option<NetworkData>,
}

/// A network configuration file as a datasource found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkData {
    pub format: NetworkFormat,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkFormat {
    /// A NoCloud seed's `network-config` (cloud-init's v1 or v2).
    NoCloud,
    /// OpenStack's `network_data.json`.
    OpenStack,
}

impl NetworkFormat {
    pub fn name(self) -> &'static str {
        match self {
            NetworkFormat::NoCloud => "network-config",
            NetworkFormat::OpenStack => "network_data.json",
        }
    }

    pub fn from_name(name: &str) -> Option<NetworkFormat> {
        [NetworkFormat::NoCloud, NetworkFormat::OpenStack].into_iter().find(|f| f.name() == name)
    }
}

impl NetworkData {
    /// The configuration, with warnings; or every problem.
    pub fn parse(
        &self,
    ) -> Result<(crate::network::NetworkConfig, Vec<crate::diag::Diagnostic>), Vec<crate::diag::Diagnostic>> {
        match self.format {
            NetworkFormat::NoCloud => crate::network::nocloud::parse(&self.data),
            NetworkFormat::OpenStack => crate::network::openstack::parse(&self.data),
        }
    }
}

impl Found {
    pub fn user_data(source: String, data: Vec<u8>) -> Found {
        Found { source, data, ..Default::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("{what}: no answer before the deadline")]
    Deadline { what: String },
    /// No connection, a reset: the service may not exist here.
    #[error("{what}: {message}")]
    Unreachable { what: String, message: String },
    #[error("{what}: HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("{what}: user data over {} MiB", max >> 20)]
    TooLarge { what: String, max: u64 },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The source answered, but not in its format.
    #[error("{what}: {message}")]
    Malformed { what: String, message: String },
    #[error("no network: {0}")]
    NoNetwork(String),
}

pub trait Datasource {
    /// `fw_cfg`, `config-2`, `cidata`, `ec2`, `gce`, `openstack`, `azure`, `url`.
    fn name(&self) -> &'static str;

    /// Reading it needs the network up.
    fn needs_network(&self) -> bool {
        false
    }

    /// User data and instance metadata, before `until`; `Ok(None)` when this source has
    /// neither.
    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError>;

    /// After the config step: tells the platform the host is provisioned, for clouds that
    /// wait for it (Azure's wire server); what it did, for the console. Most need nothing.
    fn report_ready(&self, _until: Instant) -> Result<Option<String>, DatasourceError> {
        Ok(None)
    }
}

/// What a network source found: `None` when it has neither user data nor instance metadata.
fn network_found(
    source: String,
    user_data: Option<Vec<u8>>,
    instance: Result<InstanceMetadata, DatasourceError>,
) -> Option<Found> {
    let has_user_data = user_data.is_some();
    let mut found = Found::user_data(source, user_data.unwrap_or_default());
    match instance {
        Ok(i) => found.instance = i,
        Err(e) => found.warnings.push(format!("instance metadata: {e}")),
    }
    (has_user_data || !found.instance.is_empty()).then_some(found)
}
