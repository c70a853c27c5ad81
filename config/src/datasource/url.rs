//! A URL on the kernel command line (`cairn.config_url=`, CoreOS's `cloud-config-url=`): its
//! body is the user data. No instance metadata.

use super::http::Client;
use super::{Datasource, DatasourceError, Found, network_found};
use std::time::Instant;

pub struct Url {
    pub url: String,
}

impl Datasource for Url {
    fn name(&self) -> &'static str {
        "url"
    }

    fn needs_network(&self) -> bool {
        true
    }

    fn fetch(&self, until: Instant) -> Result<Option<Found>, DatasourceError> {
        let c = Client::new(until)?;
        let user_data = c.get(&self.url, &format!("config URL {}", self.url))?;
        Ok(network_found(format!("url {}", self.url), user_data, Ok(Default::default())))
    }
}
