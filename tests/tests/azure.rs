//! VM test of Azure provisioning (issue 18): the firmware says Azure (its chassis asset tag),
//! the host reads the provisioning DVD's `ovf-env.xml` (a UDF image made by genisoimage, in a
//! SATA drive): its custom data is the user data and its host name wins over IMDS's; launch keys
//! come from both the DVD and IMDS at 169.254.169.254; and the host tells the wire server at
//! 168.63.129.16 it is ready, naming the goal state's incarnation, container and role instance. Both services run on the test machine's loopback;
//! QEMU's user network is 168.0.0.0/6, which holds both addresses, and forwards each to its
//! service (through busybox nc, one process per connection).

use anyhow::{Context, Result};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use base64::Engine;
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::server::free_port;
use cairn_tests::ssh::{key, ssh};
use cairn_tests::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const INCARNATION: &str = "42";
const CONTAINER_ID: &str = "5b7e8d6c-1f2a-4c3b-9e8d-7a6b5c4d3e2f";
const INSTANCE_ID: &str = "f1e2d3c4.cairn-az";

/// IMDS's compute document with `user_data` and `key`; answers only with `Metadata: true`.
fn imds(user_data: &str, key: &str) -> Router {
    let compute = serde_json::json!({
        "osProfile": {"computerName": "cairn-az"},
        "publicKeys": [{"keyData": key, "path": "/home/azureuser/.ssh/authorized_keys"}],
        "userData": base64::engine::general_purpose::STANDARD.encode(user_data),
    })
    .to_string();
    Router::new().route(
        "/metadata/instance/compute",
        get(move |h: HeaderMap| async move {
            match h.get("metadata").is_some_and(|v| v == "true") {
                true => (StatusCode::OK, compute.clone()),
                false => (StatusCode::BAD_REQUEST, String::new()),
            }
        }),
    )
}

/// The wire server: the goal state, and the health reports it receives (with their
/// `x-ms-version`).
fn wire_server(reports: Arc<Mutex<Vec<(String, String)>>>) -> Router {
    let goal = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState><Version>2012-11-30</Version>\
         <Incarnation>{INCARNATION}</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine>\
         <Container><ContainerId>{CONTAINER_ID}</ContainerId><RoleInstanceList><RoleInstance>\
         <InstanceId>{INSTANCE_ID}</InstanceId><State>Started</State></RoleInstance></RoleInstanceList>\
         </Container></GoalState>"
    );
    let version = |h: &HeaderMap| h.get("x-ms-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Router::new().route(
        "/machine/",
        get(move |h: HeaderMap| async move {
            match version(&h).as_str() {
                "2012-11-30" => (StatusCode::OK, goal.clone()),
                _ => (StatusCode::BAD_REQUEST, String::new()),
            }
        })
        .post(move |h: HeaderMap, body: String| async move {
            reports.lock().unwrap().push((version(&h), body));
            StatusCode::OK
        }),
    )
}

/// The provisioning DVD: `ovf-env.xml` as Azure writes it, on a UDF (and ISO 9660) image.
fn provisioning_media(dir: &Path, hostname: &str, key: &str, custom_data: &str) -> Result<PathBuf> {
    let tree = dir.join("media");
    std::fs::create_dir_all(&tree)?;
    let custom = base64::engine::general_purpose::STANDARD.encode(custom_data);
    let ovf = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns1="http://schemas.microsoft.com/windowsazure">
 <ns1:ProvisioningSection><ns1:Version>1.0</ns1:Version>
  <ns1:LinuxProvisioningConfigurationSet>
   <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
   <ns1:HostName>{hostname}</ns1:HostName><ns1:UserName>azureuser</ns1:UserName>
   <ns1:DisableSshPasswordAuthentication>true</ns1:DisableSshPasswordAuthentication>
   <ns1:SSH><ns1:PublicKeys><ns1:PublicKey><ns1:Fingerprint>0</ns1:Fingerprint>
    <ns1:Path>/home/azureuser/.ssh/authorized_keys</ns1:Path><ns1:Value>{key}</ns1:Value>
   </ns1:PublicKey></ns1:PublicKeys></ns1:SSH>
   <ns1:CustomData>{custom}</ns1:CustomData>
  </ns1:LinuxProvisioningConfigurationSet>
 </ns1:ProvisioningSection>
</ns0:Environment>
"#
    );
    std::fs::write(tree.join("ovf-env.xml"), ovf)?;
    let iso = dir.join("ovf-env.iso");
    let out = std::process::Command::new("genisoimage")
        .args(["-quiet", "-udf", "-V", "rd_rdfe_stable.cloudapp.net", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .context("genisoimage (./scripts/setup.sh installs it)")?;
    anyhow::ensure!(out.status.success(), "genisoimage: {}", String::from_utf8_lossy(&out.stderr));
    Ok(iso)
}

#[test]
fn on_azure_the_host_reads_the_provisioning_media_and_imds_and_reports_ready() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let (launch_key, launch_pub) = key(dir.path(), "launch")?;
    let (imds_key, imds_pub) = key(dir.path(), "imds")?;
    let custom = "#cloud-config\nwrite_files:\n  - {path: /etc/from-azure, content: \"custom data from the DVD\\n\"}\n";
    let media = provisioning_media(dir.path(), "cairn-az-ovf", &launch_pub, custom)?;
    // IMDS's user data loses to the custom data; its key is added to the DVD's.
    let doc = "#cloud-config\nwrite_files:\n  - {path: /etc/from-azure, content: \"user data from IMDS\\n\"}\n";
    let imds_port = cairn_tests::http::serve_router(imds(doc, &imds_pub))?;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let wire_port = cairn_tests::http::serve_router(wire_server(reports.clone()))?;
    let ssh_port = free_port()?;
    let mut cfg = VmConfig { ssh_port: Some(ssh_port), ..VmConfig::uefi(img.raw()) };
    cfg.cdroms = vec![media];
    cfg.net_options = vec![
        "net=168.0.0.0/6".into(),
        format!("guestfwd=tcp:169.254.169.254:80-cmd:/bin/busybox nc 127.0.0.1 {imds_port}"),
        format!("guestfwd=tcp:168.63.129.16:80-cmd:/bin/busybox nc 127.0.0.1 {wire_port}"),
    ];
    cfg.extra_args.extend([
        "-smbios".into(),
        "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine".into(),
        "-smbios".into(),
        format!("type=3,asset={}", cairn_config::platform::AZURE_ASSET_TAG),
    ]);

    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    let console = vm.console().text();
    assert!(console.contains("platform=azure source=azure outcome=applied"), "{console}");
    assert!(
        console.contains(&format!(
            "cairn: cloud-config: azure: reported ready to http://168.63.129.16 (incarnation {INCARNATION})"
        )),
        "{console}"
    );
    let report = reports.lock().unwrap().first().cloned().context("the wire server got no health report")?;
    assert_eq!(report.0, "2012-11-30");
    for part in [
        format!("<GoalStateIncarnation>{INCARNATION}</GoalStateIncarnation>"),
        format!("<ContainerId>{CONTAINER_ID}</ContainerId>"),
        format!("<InstanceId>{INSTANCE_ID}</InstanceId>"),
        "<State>Ready</State>".to_string(),
    ] {
        assert!(report.1.contains(&part), "{part} missing from the report:\n{}", report.1);
    }
    assert_eq!(vm.run_ok("cat /etc/from-azure", CMD)?.trim(), "custom data from the DVD");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "cairn-az-ovf", "the DVD's host name");
    // Read and unmounted: nothing of the DVD stays mounted.
    let mounts = vm.run_ok("cat /proc/mounts", CMD)?;
    assert!(!mounts.contains("azure-media") && !mounts.contains("/dev/sr0"), "{mounts}");
    for (name, k) in [("the DVD's", &launch_key), ("IMDS's", &imds_key)] {
        let (ok, out, err) = ssh(ssh_port, "core", k, "id -un")?;
        assert!(ok && out.trim() == "core", "{name} launch key does not log in as core: {err}");
    }
    Ok(())
}
