//! The declarative image spec (`images/*.toml`). Unknown keys are errors that name the key.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Another spec (relative path) this one starts from; its keys are overridden here.
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    pub os: Os,
    pub kernel: Kernel,
    #[serde(default)]
    pub packages: Packages,
    pub initramfs: Initramfs,
    #[serde(default)]
    pub cairn: CairnBinaries,
    pub partitions: Partitions,
    #[serde(default)]
    pub boot: Boot,
    /// The update agent's settings, installed as /usr/lib/cairn/update.toml (docs/releases.md).
    #[serde(default)]
    pub update: cairn_release::update_config::UpdateSettings,
    /// Directory trees (relative to the spec) copied into the image; only `usr/` may appear.
    #[serde(default)]
    pub overlay: Vec<String>,
    #[serde(default)]
    pub output: Output,
    /// The directory the spec was read from, for its relative paths.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

/// What the build writes besides the release's parts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The disk's formats (`crate::formats`); `cairn build --format` overrides them. The raw
    /// disk is always made.
    #[serde(default = "Output::default_formats")]
    pub formats: Vec<String>,
}

impl Output {
    fn default_formats() -> Vec<String> {
        vec!["raw".into(), "qcow2".into()]
    }

    pub fn formats(&self) -> Result<Vec<crate::formats::Format>> {
        crate::formats::parse_list(&self.formats.join(",")).context("output.formats")
    }
}

impl Default for Output {
    fn default() -> Output {
        Output { formats: Output::default_formats() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    /// `ID=` of os-release, also the UKI file name prefix.
    pub id: String,
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// A Debian meta package (`linux-image-cloud-amd64`) or a versioned kernel package.
    pub package: String,
    #[serde(default)]
    pub cmdline: String,
    /// Module directories (or files) under the kernel's `kernel/` left out of `/usr`
    /// (`drivers/gpu`): a generic kernel's drivers for hardware no server has. Each must
    /// exist, and no module kept may depend on one left out.
    #[serde(default)]
    pub exclude_modules: Vec<String>,
    /// Modules kept (with what they depend on) although `exclude_modules` names their
    /// directory: the few drivers a cloud has among a vendor tree no cloud has.
    #[serde(default)]
    pub keep_modules: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default)]
    pub install: Vec<String>,
    /// Installed on top of `install`: a spec that `extends` another adds packages here.
    #[serde(default)]
    pub extra: Vec<String>,
    /// Paths of the merged `/usr` tree left out of the image (a package's parts the image has
    /// no use for, as dpkg's `path-exclude`): each must exist, so a typo is an error.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Dependencies left out: packages that only the maintainer scripts of what is installed
    /// use (Cairn runs none), which apt is told are installed already.
    #[serde(default)]
    pub without: Vec<String>,
}

impl Packages {
    pub fn all(&self) -> Vec<String> {
        self.install.iter().chain(&self.extra).cloned().collect()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    pub modules: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CairnBinaries {
    pub binaries: Vec<String>,
}

impl Default for CairnBinaries {
    fn default() -> Self {
        CairnBinaries { binaries: vec!["cairn-init".into()] }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub esp_mib: u64,
    pub usr_mib: u64,
    pub root_mib: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FirstEntry {
    /// `NAME.efi`: no counter, the only entry is trusted.
    #[default]
    Blessed,
    /// `NAME+3.efi`: systemd-boot counts tries; for testing boot assessment.
    Counted,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default)]
    pub first_entry: FirstEntry,
    /// A host not ready this many seconds after the kernel started reboots (costing a try).
    #[serde(default = "default_deadline")]
    pub deadline_s: u32,
    /// A root shell on the serial console (`cairn.autologin`): development and test images only.
    #[serde(default)]
    pub autologin: bool,
}

impl Default for Boot {
    fn default() -> Self {
        Boot { first_entry: FirstEntry::default(), deadline_s: default_deadline(), autologin: false }
    }
}

fn default_deadline() -> u32 {
    120
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let value = load_value(path, 0)?;
        let mut spec: Spec = value.try_into().map_err(|e| anyhow::anyhow!("invalid spec {}: {e}", path.display()))?;
        spec.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        spec.validate().with_context(|| format!("invalid spec {}", path.display()))?;
        Ok(spec)
    }

    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if spec.extends.is_some() {
            bail!("extends needs a spec file (use Spec::load)");
        }
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        let ok_id = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        };
        if !ok_id(&self.os.id) {
            bail!("os.id {:?} must be lower-case letters, digits, '.', '_' or '-'", self.os.id);
        }
        validate_version(&self.os.version).context("os.version")?;
        if self.partitions.esp_mib < 64 {
            bail!("partitions.esp_mib must be at least 64 (FAT32 needs 65525 clusters)");
        }
        if self.partitions.usr_mib < 16 || self.partitions.root_mib < 16 {
            bail!("partitions.usr_mib and partitions.root_mib must be at least 16");
        }
        if self.initramfs.modules.is_empty() {
            bail!("initramfs.modules must name the modules stage 1 needs (at least the disk driver)");
        }
        if !self.cairn.binaries.iter().any(|b| b == "cairn-init") {
            bail!("cairn.binaries must include cairn-init");
        }
        if self.kernel.cmdline.contains("usrhash=") {
            bail!("kernel.cmdline must not set usrhash=: the builder adds it");
        }
        Ok(())
    }
}

/// A spec file as TOML, with what it `extends` merged underneath (tables merge, other values
/// are replaced). Syntax errors keep their line and column.
fn load_value(path: &Path, depth: usize) -> Result<toml::Value> {
    if depth > 8 {
        bail!("{}: extends nests more than 8 deep", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading spec {}", path.display()))?;
    let mut value: toml::Value =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid spec {}: {e}", path.display()))?;
    let parent = match value.as_table_mut().and_then(|t| t.remove("extends")) {
        None => return Ok(value),
        Some(toml::Value::String(p)) => path.parent().unwrap_or(Path::new(".")).join(p),
        Some(_) => bail!("{}: extends must be a path", path.display()),
    };
    let mut base = load_value(&parent, depth + 1)?;
    merge(&mut base, value);
    Ok(base)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// See [`cairn_release::version::validate`].
pub fn validate_version(v: &str) -> Result<()> {
    cairn_release::version::validate(v).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../images/default.toml");

    #[test]
    fn default_spec_parses() {
        let s = Spec::parse(DEFAULT).unwrap();
        assert_eq!(s.os.id, "cairn");
        assert!(s.initramfs.modules.contains(&"dm-verity".to_string()));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT.replace("[partitions]", "[partitions]\nesp_size = 3");
        let err = format!("{:#}", Spec::parse(&text).unwrap_err());
        assert!(err.contains("esp_size"), "{err}");
        let text = DEFAULT.replace("[os]", "[os]\ncodename = \"x\"");
        let err = format!("{:#}", Spec::parse(&text).unwrap_err());
        assert!(err.contains("codename"), "{err}");
    }

    #[test]
    fn extends_merges_tables_and_names_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("cairn-spec-extends-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("base.toml"), DEFAULT).unwrap();
        std::fs::write(dir.join("dev.toml"), "extends = \"base.toml\"\n[boot]\nautologin = true\n").unwrap();
        std::fs::write(dir.join("bad.toml"), "extends = \"base.toml\"\n[boot]\nautologon = true\n").unwrap();
        let s = Spec::load(&dir.join("dev.toml")).unwrap();
        assert!(s.boot.autologin);
        assert_eq!(s.boot.deadline_s, 120);
        assert_eq!(s.os.id, "cairn", "inherited");
        let e = format!("{:#}", Spec::load(&dir.join("bad.toml")).unwrap_err());
        assert!(e.contains("autologon"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn maintenance_windows_go_into_the_images_update_toml() {
        let window = "\n[update.maintenance]\ntime_zone = \"Europe/Berlin\"\n[[update.maintenance.window]]\n\
                      days = [\"Sat\"]\nstart_time = \"22:30\"\nlength_minutes = 60\n";
        let s = Spec::parse(&format!("{DEFAULT}{window}")).unwrap();
        let written = toml::to_string(&s.update).unwrap();
        let read: cairn_release::update_config::UpdateSettings = toml::from_str(&written).unwrap();
        assert_eq!(read, s.update, "{written}");
        let maintenance = read.resolve().unwrap().maintenance.unwrap();
        assert_eq!((maintenance.time_zone_name.as_str(), maintenance.windows[0].hour), ("Europe/Berlin", 22));
        let typo = window.replace("start_time", "start");
        let e = format!("{:#}", Spec::parse(&format!("{DEFAULT}{typo}")).unwrap_err());
        assert!(e.contains("start"), "{e}");
    }

    #[test]
    fn versions_with_plus_are_refused() {
        assert!(validate_version("1.0.0").is_ok());
        assert!(validate_version("1.0+3").is_err());
        assert!(validate_version("v1").is_err());
    }
}
