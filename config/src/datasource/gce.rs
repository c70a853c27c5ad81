//! GCE's metadata server: `computeMetadata/v1/...` with `Metadata-Flavor: Google` on every
//! request. User data in the `user-data` attribute; the hostname at `instance/hostname`; the
//! instance's and (unless it blocks them) the project's `ssh-keys`.

use super::http::Client;
use super::{Datasource, DatasourceError, Found, network_found};
use crate::instance::{self, InstanceMetadata};
use std::time::Instant;

pub struct Gce {
    pub base: String,
}

impl Datasource for Gce {
    fn name(&self) -> &'static str {
        "gce"
    }

    fn needs_network(&self) -> bool {
        true
    }

    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError> {
        let c = Client::new(until)?;
        let base = self.base.trim_end_matches('/');
        let get =
            |path: &str| c.http.get(format!("{base}/computeMetadata/v1/{path}")).header("Metadata-Flavor", "Google");
        let what = "GCE user-data";
        let user_data = c.body(c.send(get("instance/attributes/user-data"), what)?, what)?;
        let text = |path: &str| c.text(get(path), &format!("GCE {path}"));
        Ok(network_found(format!("gce {base}"), user_data, instance(&text)))
    }
}

fn instance(
    text: &dyn Fn(&str) -> Result<Option<String>, DatasourceError>,
) -> Result<InstanceMetadata, DatasourceError> {
    let hostname = text("instance/hostname")?;
    let mut keys = instance::gce_keys(&text("instance/attributes/ssh-keys")?.unwrap_or_default());
    if text("instance/attributes/block-project-ssh-keys")?.is_none_or(|b| b.trim() != "true") {
        keys.extend(instance::gce_keys(&text("project/attributes/ssh-keys")?.unwrap_or_default()));
    }
    Ok(instance::from_parts(hostname.as_deref(), &keys))
}
