//! OpenStack's metadata service: `openstack/latest/user_data`, `meta_data.json` (the
//! hostname and `public_keys`) and `network_data.json`. The config drive is `volume::ConfigDrive`.

use super::http::Client;
use super::{Datasource, DatasourceError, Found, NetworkData, NetworkFormat, network_found};
use crate::instance::{self, InstanceMetadata};
use std::time::Instant;

pub struct OpenStack {
    pub base: String,
}

impl Datasource for OpenStack {
    fn name(&self) -> &'static str {
        "openstack"
    }

    fn needs_network(&self) -> bool {
        true
    }

    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError> {
        let c = Client::new(until)?;
        let base = self.base.trim_end_matches('/');
        let user_data = c.get(&format!("{base}/openstack/latest/user_data"), "OpenStack user_data")?;
        let what = "OpenStack meta_data.json";
        let instance = c.get(&format!("{base}/openstack/latest/meta_data.json"), what).and_then(|json| match json {
            Some(json) => instance::from_openstack_json(&json)
                .map_err(|e| DatasourceError::Malformed { what: what.into(), message: e.message }),
            None => Ok(InstanceMetadata::default()),
        });
        let network = c.get(&format!("{base}/openstack/latest/network_data.json"), "OpenStack network_data.json")?;
        let mut found = network_found(format!("openstack {base}"), user_data, instance);
        if let Some(f) = &mut found {
            f.network = network.map(|data| NetworkData { format: NetworkFormat::OpenStack, data });
        }
        Ok(found)
    }
}
