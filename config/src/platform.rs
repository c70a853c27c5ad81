//! Which platform the host runs on (so a QEMU host never waits on a cloud's metadata
//! address), and the datasources it tries, in order: decided here and nowhere else.

use crate::datasource::azure::{Azure, WIRE_SERVER};
use crate::datasource::volume::{Kind, Volume};
use crate::datasource::{Datasource, ec2::Ec2, fw_cfg::FwCfg, gce::Gce, openstack::OpenStack, url::Url};
use std::path::{Path, PathBuf};

/// What the host looks like to the datasources.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cmdline: String,
    pub dmi: Dmi,
    /// `/sys/firmware/qemu_fw_cfg/by_name`.
    pub fw_cfg_dir: PathBuf,
    /// `/sys/class/block` and `/dev`.
    pub sys_block: PathBuf,
    pub dev: PathBuf,
    /// `http://169.254.169.254` on a cloud.
    pub metadata_base: String,
    /// Where Azure's provisioning media is mounted while it is read (must not exist).
    pub azure_media_mount: PathBuf,
}

/// The chassis asset tag of every Azure VM (what cloud-init and WALinuxAgent look for).
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Where the link-local metadata services listen.
pub const LINK_LOCAL: &str = "http://169.254.169.254";

impl Machine {
    /// The running host.
    pub fn this_host() -> Machine {
        Machine {
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            dmi: Dmi::read(Path::new("/sys/class/dmi/id")),
            fw_cfg_dir: PathBuf::from(crate::local::FW_CFG_DIR),
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            metadata_base: LINK_LOCAL.to_string(),
            azure_media_mount: PathBuf::from("/run/cairn/azure-media"),
        }
    }
}

/// The firmware's DMI strings (`/sys/class/dmi/id/*`).
#[derive(Clone, Debug, Default)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub bios_vendor: String,
    pub chassis_asset_tag: String,
}

impl Dmi {
    pub fn read(sys: &std::path::Path) -> Dmi {
        let get = |name: &str| std::fs::read_to_string(sys.join(name)).unwrap_or_default().trim().to_string();
        Dmi {
            sys_vendor: get("sys_vendor"),
            product_name: get("product_name"),
            bios_vendor: get("bios_vendor"),
            chassis_asset_tag: get("chassis_asset_tag"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Qemu,
    Ec2,
    Gce,
    OpenStack,
    Azure,
    /// Bare metal or an unknown hypervisor: only local sources.
    Other,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Ec2 => "ec2",
            Platform::Gce => "gce",
            Platform::OpenStack => "openstack",
            Platform::Azure => "azure",
            Platform::Other => "other",
        }
    }

    fn from_name(name: &str) -> Option<Platform> {
        [Platform::Qemu, Platform::Ec2, Platform::Gce, Platform::OpenStack, Platform::Azure, Platform::Other]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// `cairn.platform=NAME` on the kernel command line wins; else the DMI strings.
    pub fn detect(cmdline: &str, dmi: &Dmi) -> Platform {
        if let Some(p) =
            cmdline.split_whitespace().find_map(|w| w.strip_prefix("cairn.platform=")).and_then(Self::from_name)
        {
            return p;
        }
        let has = |s: &str, what: &str| s.to_ascii_lowercase().contains(what);
        if has(&dmi.sys_vendor, "amazon") || has(&dmi.bios_vendor, "amazon") {
            Platform::Ec2
        } else if dmi.chassis_asset_tag == AZURE_ASSET_TAG {
            Platform::Azure
        } else if has(&dmi.sys_vendor, "google") || has(&dmi.product_name, "google compute engine") {
            Platform::Gce
        } else if has(&dmi.sys_vendor, "openstack")
            || has(&dmi.product_name, "openstack")
            || has(&dmi.chassis_asset_tag, "openstack")
        {
            Platform::OpenStack
        } else if has(&dmi.sys_vendor, "qemu") {
            Platform::Qemu
        } else {
            Platform::Other
        }
    }

    /// The datasources tried, in order; the first that has user data wins. A URL on the
    /// kernel command line comes first on any platform.
    pub fn datasources(self, m: &Machine) -> Vec<Box<dyn Datasource>> {
        let mut out: Vec<Box<dyn Datasource>> = Vec::new();
        if let Some(url) = config_url(&m.cmdline) {
            out.push(Box::new(Url { url: url.to_string() }));
        }
        let volume = |kind| Box::new(Volume { kind, sys_block: m.sys_block.clone(), dev: m.dev.clone() });
        let base = m.metadata_base.clone();
        match self {
            Platform::Qemu => {
                out.push(Box::new(FwCfg { dir: m.fw_cfg_dir.clone() }));
                out.push(volume(Kind::ConfigDrive));
                out.push(volume(Kind::NoCloud));
            }
            Platform::Ec2 => out.push(Box::new(Ec2 { base })),
            Platform::Gce => out.push(Box::new(Gce { base })),
            Platform::OpenStack => {
                out.push(volume(Kind::ConfigDrive));
                out.push(Box::new(OpenStack { base }));
            }
            Platform::Azure => out.push(Box::new(Azure {
                base,
                wire_server: WIRE_SERVER.to_string(),
                sys_block: m.sys_block.clone(),
                dev: m.dev.clone(),
                mount_dir: m.azure_media_mount.clone(),
            })),
            Platform::Other => {
                out.push(volume(Kind::ConfigDrive));
                out.push(volume(Kind::NoCloud));
            }
        }
        out
    }
}

/// `cairn.config_url=URL` (CoreOS's `cloud-config-url=` is read too).
pub fn config_url(cmdline: &str) -> Option<&str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.config_url=").or_else(|| w.strip_prefix("cloud-config-url=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(sys_vendor: &str, product_name: &str, bios_vendor: &str, tag: &str) -> Dmi {
        Dmi {
            sys_vendor: sys_vendor.into(),
            product_name: product_name.into(),
            bios_vendor: bios_vendor.into(),
            chassis_asset_tag: tag.into(),
        }
    }

    #[test]
    fn detects_platforms_from_dmi_and_the_command_line() {
        let qemu = dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", "EFI Development Kit II / OVMF", "");
        assert_eq!(Platform::detect("", &qemu), Platform::Qemu);
        assert_eq!(Platform::detect("", &dmi("Amazon EC2", "m6i.large", "Amazon EC2", "")), Platform::Ec2);
        assert_eq!(Platform::detect("", &dmi("Google", "Google Compute Engine", "Google", "")), Platform::Gce);
        assert_eq!(
            Platform::detect("", &dmi("OpenStack Foundation", "OpenStack Nova", "SeaBIOS", "")),
            Platform::OpenStack
        );
        assert_eq!(Platform::detect("", &dmi("Dell Inc.", "PowerEdge R650", "Dell Inc.", "")), Platform::Other);
        assert_eq!(Platform::detect("quiet cairn.platform=ec2", &qemu), Platform::Ec2);
        assert_eq!(Platform::detect("cairn.platform=mars", &qemu), Platform::Qemu, "an unknown name is ignored");
    }

    fn names(platform: Platform, cmdline: &str) -> Vec<(&'static str, bool)> {
        let m = Machine { cmdline: cmdline.into(), ..Machine::this_host() };
        platform.datasources(&m).iter().map(|d| (d.name(), d.needs_network())).collect()
    }

    #[test]
    fn a_qemu_host_never_asks_a_metadata_service() {
        assert_eq!(names(Platform::Qemu, ""), [("fw_cfg", false), ("config-2", false), ("cidata", false)]);
        assert_eq!(names(Platform::Ec2, "cairn.config_url=http://10.0.2.2/u"), [("url", true), ("ec2", true)]);
        assert_eq!(names(Platform::OpenStack, ""), [("config-2", false), ("openstack", true)]);
        assert_eq!(config_url("a cloud-config-url=http://x/y b"), Some("http://x/y"));
    }
}
