//! Where a host's user data and instance metadata come from: one module per datasource, each
//! implementing [`Datasource`]. Which of them a platform tries, and in which order, is decided
//! in one place: `crate::platform::datasources`.

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
    /// `fw_cfg`, `config-2`, `cidata`, `ec2`, `gce`, `openstack`, `url`.
    fn name(&self) -> &'static str;

    /// Reading it needs the network up.
    fn needs_network(&self) -> bool {
        false
    }

    /// User data and instance metadata, before `until`; `Ok(None)` when this source has
    /// neither.
    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError>;

    /// After the config applied: tells the platform the host is provisioned, for clouds that
    /// wait for it (Azure's wire server). Most need nothing.
    fn report_ready(&self, _until: Instant) -> Result<(), DatasourceError> {
        Ok(())
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
