//! Which platform the host runs on (so a QEMU host never waits on a cloud's metadata
//! address), and the order its user-data sources are tried in.

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
    /// Bare metal or an unknown hypervisor: only local sources.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `cairn.config_url=` on the kernel command line.
    KernelUrl,
    /// QEMU fw_cfg `opt/cairn/user-data`.
    FwCfg,
    /// A volume labelled `config-2` (`openstack/latest/user_data`).
    ConfigDrive,
    /// A volume labelled `cidata` (`user-data`).
    NoCloud,
    Ec2,
    Gce,
    OpenStackMetadata,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::KernelUrl => "url",
            Source::FwCfg => "fw_cfg",
            Source::ConfigDrive => "config-2",
            Source::NoCloud => "cidata",
            Source::Ec2 => "ec2",
            Source::Gce => "gce",
            Source::OpenStackMetadata => "openstack",
        }
    }

    /// Whether reading it needs the network up.
    pub fn needs_network(self) -> bool {
        matches!(self, Source::KernelUrl | Source::Ec2 | Source::Gce | Source::OpenStackMetadata)
    }
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Qemu => "qemu",
            Platform::Ec2 => "ec2",
            Platform::Gce => "gce",
            Platform::OpenStack => "openstack",
            Platform::Other => "other",
        }
    }

    fn from_name(name: &str) -> Option<Platform> {
        [Platform::Qemu, Platform::Ec2, Platform::Gce, Platform::OpenStack, Platform::Other]
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

    /// The sources tried, in order; the first that has user data wins.
    pub fn sources(self, cmdline: &str) -> Vec<Source> {
        let mut out = Vec::new();
        if config_url(cmdline).is_some() {
            out.push(Source::KernelUrl);
        }
        out.extend_from_slice(match self {
            Platform::Qemu => &[Source::FwCfg, Source::ConfigDrive, Source::NoCloud],
            Platform::Ec2 => &[Source::Ec2],
            Platform::Gce => &[Source::Gce],
            Platform::OpenStack => &[Source::ConfigDrive, Source::OpenStackMetadata],
            Platform::Other => &[Source::ConfigDrive, Source::NoCloud],
        });
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

    #[test]
    fn a_qemu_host_never_asks_a_metadata_service() {
        let qemu = Platform::Qemu.sources("");
        assert_eq!(qemu, [Source::FwCfg, Source::ConfigDrive, Source::NoCloud]);
        assert_eq!(Platform::Ec2.sources("cairn.config_url=http://10.0.2.2/u"), [Source::KernelUrl, Source::Ec2]);
        assert_eq!(config_url("a cloud-config-url=http://x/y b"), Some("http://x/y"));
    }
}
