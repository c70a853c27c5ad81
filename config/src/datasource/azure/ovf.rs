//! `ovf-env.xml`, the provisioning document Azure puts on the VM's DVD: its
//! `LinuxProvisioningConfigurationSet` holds the host name, the admin user, the launch SSH keys
//! and the *custom data* (base64), which is where Azure users pass a `#cloud-config` (IMDS's
//! `userData` is a separate, later feature). Elements are matched by local name: the document
//! uses the `http://schemas.microsoft.com/windowsazure` namespace under varying prefixes.

use base64::Engine;

/// What Cairn takes from the provisioning document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    pub hostname: Option<String>,
    pub user_name: Option<String>,
    /// Decoded; `None` when absent or empty.
    pub custom_data: Option<Vec<u8>>,
    /// The keys given inline (`Value`); keys given only by certificate fingerprint come from
    /// IMDS instead.
    pub ssh_keys: Vec<String>,
}

/// The most of the document read: a provisioning document is a few KiB plus the custom data,
/// which Azure caps at 64 KiB before base64.
pub const MAX_BYTES: u64 = 1 << 20;

pub fn parse(xml: &str) -> Result<Provisioning, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("ovf-env.xml is not XML: {e}"))?;
    let set = doc
        .descendants()
        .find(|n| n.tag_name().name() == "LinuxProvisioningConfigurationSet")
        .ok_or("ovf-env.xml has no LinuxProvisioningConfigurationSet")?;
    let text = |name: &str| {
        set.children()
            .find(|n| n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    };
    let custom_data = match text("CustomData") {
        None => None,
        Some(b64) => {
            let compact: String = b64.split_whitespace().collect();
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|e| format!("ovf-env.xml: CustomData is not base64: {e}"))?,
            )
        }
    };
    let ssh_keys = set
        .descendants()
        .filter(|n| n.tag_name().name() == "PublicKey")
        .filter_map(|k| k.children().find(|n| n.tag_name().name() == "Value").and_then(|v| v.text()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Provisioning { hostname: text("HostName"), user_name: text("UserName"), custom_data, ssh_keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Azure writes it (cloud-init's and WALinuxAgent's test data have the same shape).
    const OVF: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns1="http://schemas.microsoft.com/windowsazure" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <ns1:ProvisioningSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:LinuxProvisioningConfigurationSet>
      <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
      <ns1:HostName>cairn-az</ns1:HostName>
      <ns1:UserName>azureuser</ns1:UserName>
      <ns1:DisableSshPasswordAuthentication>true</ns1:DisableSshPasswordAuthentication>
      <ns1:SSH>
        <ns1:PublicKeys>
          <ns1:PublicKey>
            <ns1:Fingerprint>EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62</ns1:Fingerprint>
            <ns1:Path>/home/azureuser/.ssh/authorized_keys</ns1:Path>
            <ns1:Value>ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 az</ns1:Value>
          </ns1:PublicKey>
          <ns1:PublicKey>
            <ns1:Fingerprint>0123456789ABCDEF0123456789ABCDEF01234567</ns1:Fingerprint>
            <ns1:Path>/home/azureuser/.ssh/authorized_keys</ns1:Path>
          </ns1:PublicKey>
        </ns1:PublicKeys>
      </ns1:SSH>
      <ns1:CustomData>I2Nsb3VkLWNv
        bmZpZwo=</ns1:CustomData>
    </ns1:LinuxProvisioningConfigurationSet>
  </ns1:ProvisioningSection>
  <ns1:PlatformSettingsSection>
    <ns1:PlatformSettings><ns1:ProvisionGuestAgent>false</ns1:ProvisionGuestAgent></ns1:PlatformSettings>
  </ns1:PlatformSettingsSection>
</ns0:Environment>"#;

    #[test]
    fn reads_host_name_user_keys_and_custom_data() {
        let p = parse(OVF).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("cairn-az"));
        assert_eq!(p.user_name.as_deref(), Some("azureuser"));
        assert_eq!(p.custom_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        // The key given only by fingerprint is not invented.
        assert_eq!(p.ssh_keys, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 az"]);
    }

    #[test]
    fn a_default_namespace_and_no_custom_data_read_too() {
        let (head, tail) = OVF.split_once("<ns1:CustomData>").unwrap();
        let without_custom_data = format!("{head}{}", tail.split_once("</ns1:CustomData>").unwrap().1);
        let p = parse(&without_custom_data.replace("ns1:", "")).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("cairn-az"));
        assert_eq!(p.custom_data, None);
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        assert!(parse("<Environment>").unwrap_err().contains("not XML"));
        assert!(parse("<Environment/>").unwrap_err().contains("LinuxProvisioningConfigurationSet"));
        let bad = OVF.replace("I2Nsb3VkLWNv", "!!!");
        assert!(parse(&bad).unwrap_err().contains("CustomData is not base64"));
    }
}
