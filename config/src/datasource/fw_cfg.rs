//! QEMU's fw_cfg entry `opt/cairn/user-data` (`cairn run --config`, `-fw_cfg name=...`).

use super::{Datasource, DatasourceError, Found};
use crate::local;
use std::path::PathBuf;
use std::time::Instant;

pub struct FwCfg {
    /// `/sys/firmware/qemu_fw_cfg/by_name`.
    pub dir: PathBuf,
}

impl Datasource for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    fn fetch(&self, _until: Instant) -> Result<Option<Found>, DatasourceError> {
        let what = || format!("fw_cfg {}", local::FW_CFG_NAME);
        let data = local::fw_cfg(&self.dir, local::FW_CFG_NAME)
            .map_err(|source| DatasourceError::Io { what: what(), source })?;
        Ok(data.map(|data| Found::user_data(what(), data)))
    }
}
