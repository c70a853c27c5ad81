//! VM test of Azure provisioning (issue 18): the firmware says Azure (its chassis asset tag),
//! the host takes its user data, computer name and launch key from IMDS at 169.254.169.254,
//! and tells the wire server at 168.63.129.16 it is ready, naming the goal state's
//! incarnation, container and role instance. Both services run on the test machine's loopback;
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

#[test]
fn on_azure_the_host_reads_imds_and_reports_ready_to_the_wire_server() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let (launch_key, launch_pub) = key(dir.path(), "launch")?;
    let doc = "#cloud-config\nwrite_files:\n  - {path: /etc/from-azure, content: \"user data from IMDS\\n\"}\n";
    let imds_port = cairn_tests::http::serve_router(imds(doc, &launch_pub))?;
    let reports = Arc::new(Mutex::new(Vec::new()));
    let wire_port = cairn_tests::http::serve_router(wire_server(reports.clone()))?;
    let ssh_port = free_port()?;
    let mut cfg = VmConfig { ssh_port: Some(ssh_port), ..VmConfig::uefi(img.raw()) };
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
    assert_eq!(vm.run_ok("cat /etc/from-azure", CMD)?.trim(), "user data from IMDS");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "cairn-az", "IMDS's computer name");
    let (ok, out, err) = ssh(ssh_port, "core", &launch_key, "id -un")?;
    assert!(ok && out.trim() == "core", "the Azure launch key does not log in as core: {err}");
    Ok(())
}
