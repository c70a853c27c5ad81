//! Volumes found by their label, FAT or ISO 9660, read in user space: an OpenStack config
//! drive (`config-2`: `openstack/latest/user_data`, `meta_data.json`, `network_data.json`)
//! and a NoCloud seed (`cidata`: `user-data`, `meta-data`, `network-config`).

use super::{Datasource, DatasourceError, Found, NetworkData, NetworkFormat};
use crate::instance::{self, InstanceMetadata};
use crate::local;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ConfigDrive,
    NoCloud,
}

pub struct Volume {
    pub kind: Kind,
    /// `/sys/class/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ConfigDrive => local::CONFIG_DRIVE_LABEL,
            Kind::NoCloud => local::NOCLOUD_LABEL,
        }
    }

    fn files(self) -> (&'static str, &'static str) {
        match self {
            Kind::ConfigDrive => (local::CONFIG_DRIVE_USER_DATA, local::CONFIG_DRIVE_META_DATA),
            Kind::NoCloud => (local::NOCLOUD_USER_DATA, local::NOCLOUD_META_DATA),
        }
    }

    fn network(self) -> (&'static str, NetworkFormat) {
        match self {
            Kind::ConfigDrive => (local::CONFIG_DRIVE_NETWORK_DATA, NetworkFormat::OpenStack),
            Kind::NoCloud => (local::NOCLOUD_NETWORK_CONFIG, NetworkFormat::NoCloud),
        }
    }

    fn instance(self, meta: &[u8]) -> Result<InstanceMetadata, instance::MetadataError> {
        match self {
            Kind::ConfigDrive => instance::from_openstack_json(meta),
            Kind::NoCloud => instance::from_nocloud_yaml(meta),
        }
    }
}

impl Datasource for Volume {
    fn name(&self) -> &'static str {
        self.kind.label()
    }

    fn fetch(&self, _until: Instant) -> Result<Option<Found>, DatasourceError> {
        let (label, (user_data, meta_data)) = (self.kind.label(), self.kind.files());
        let (network, format) = self.kind.network();
        let devices = local::block_devices(&self.sys_block, &self.dev);
        let Some((dev, mut files)) = local::labelled_volume(&devices, label, &[user_data, meta_data, network])
            .map_err(|source| DatasourceError::Io { what: format!("a volume labelled {label}"), source })?
        else {
            return Ok(None);
        };
        let network = files.pop().flatten().map(|data| NetworkData { format, data });
        let (meta, data) = (files.pop().flatten(), files.pop().flatten());
        if data.is_none() && meta.is_none() {
            return Err(DatasourceError::Malformed {
                what: format!("{} (labelled {label})", dev.display()),
                message: format!("has neither {user_data} nor {meta_data}"),
            });
        }
        let mut found = Found::user_data(format!("{label} {}", dev.display()), data.unwrap_or_default());
        found.network = network;
        if let Some(meta) = meta {
            match self.kind.instance(&meta) {
                Ok(i) => found.instance = i,
                Err(e) => found.warnings.push(format!("{}: {e}", dev.display())),
            }
        }
        Ok(Some(found))
    }
}
