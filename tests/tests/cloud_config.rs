//! VM tests of cloud-config at boot: a document through QEMU's fw_cfg, on a `config-2` config
//! drive (ISO 9660, with the instance's launch key in its metadata) and from an EC2 metadata
//! service (DHCP first; IMDSv2) configures the host (hostname, a user who logs in over ssh with
//! the given key, a file with its mode and owner, a container from an OCI archive answering on
//! a forwarded port, update settings in `updatectl status`; passwords never log in, even with
//! a hash set); a document with a type error
//! changes nothing, the console names the error by line and column, and the last good config
//! (and its ssh key) stays in effect.

use anyhow::{Context, Result};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::http::FileServer;
use cairn_tests::server::free_port;
use cairn_tests::ssh::{key, ssh, ssh_client};
use cairn_tests::*;
use std::process::Command;
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(120);
/// Importing and starting a container under TCG takes a while.
const CONTAINER: Duration = Duration::from_secs(240);
const WEB_PORT: u16 = 8080;

/// A web server container on the host's network: busybox httpd serving a page made from its
/// environment. `image` is a path, or a plain-http URL with the archive's digest after a space.
fn web_container(image: &str) -> String {
    let image = match image.split_once(' ') {
        Some((url, digest)) => format!("{url}\n      sha256: {digest}"),
        None => image.to_string(),
    };
    format!(
        r#"  containers:
    - name: web
      image: {image}
      network: host
      command: [/bin/busybox, sh, -c, "mkdir -p /www && echo \"$GREETING\" > /www/index.html && exec /bin/busybox httpd -f -p {WEB_PORT} -h /www"]
      environment:
        GREETING: hello from a cairn container
      restart: always
"#
    )
}

fn start(cfg: &VmConfig) -> Result<Vm> {
    let mut vm = Vm::start(cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    Ok(vm)
}

#[test]
fn fw_cfg_configures_the_host_and_a_bad_config_leaves_the_last_good_one_in_effect() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let (alice_key, alice_pub) = key(dir.path(), "alice")?;
    let (mallory_key, mallory_pub) = key(dir.path(), "mallory")?;
    let hash = Command::new("openssl").args(["passwd", "-6", "hunter2"]).output()?;
    let hash = String::from_utf8(hash.stdout)?.trim().to_string();
    let images = dir.path().join("served");
    std::fs::create_dir_all(&images)?;
    let archive = oci_archive(&dir.path().join("oci"), "docker.io/library/web:1")?;
    std::fs::copy(&archive, images.join("web.tar"))?;
    let server = FileServer::start(&images)?;

    let good = format!(
        r#"#cloud-config
hostname: cc-fwcfg
manage_etc_hosts: localhost
users:
  - name: alice
    groups: [wheel]
    passwd: "{hash}"
    ssh_authorized_keys:
      - {alice_pub}
write_files:
  - path: /etc/app/settings.conf
    permissions: "0640"
    owner: alice:wheel
    content: |
      written by cloud-config
cairn:
  update:
    server: http://10.0.2.2:9
    insecure: true
    group: canary
    strategy: "off"
{}"#,
        web_container(&format!("http://10.0.2.2:{}/web.tar {}", server.port, cairn_image::apt::sha256_file(&archive)?))
    );
    let config = dir.path().join("user-data");
    std::fs::write(&config, &good)?;
    let disk = disk_over(&img.raw(), dir.path(), None)?;
    let (ssh_port, web_port) = (free_port()?, free_port()?);
    let mut cfg = VmConfig { persistent: true, ssh_port: Some(ssh_port), ..VmConfig::uefi(&disk) };
    cfg.forwards.push(cairn_qemu::Forward::tcp(web_port, WEB_PORT));
    cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), config.clone()));

    let mut vm = start(&cfg)?;
    let console = vm.console().text();
    assert!(console.contains("cairn: cloud-config: fw_cfg: user data"), "{console}");
    assert!(console.contains("cairn: cloud-config: fw_cfg opt/cairn/user-data: applied"), "{console}");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "cc-fwcfg");
    assert!(vm.run_ok("cat /etc/hosts", CMD)?.contains("127.0.0.1 localhost cc-fwcfg"));

    let (ok, out, err) = ssh(
        ssh_port,
        "alice",
        &alice_key,
        "id -un; id -Gn; stat -c '%a %U %G' /etc/app/settings.conf; cat /etc/app/settings.conf",
    )?;
    assert!(ok, "alice's key login failed: {err}\n{}", vm.console().text());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "alice");
    assert!(lines[1].split_whitespace().any(|g| g == "wheel"), "{out}");
    assert_eq!(lines[2], "640 alice wheel");
    assert_eq!(lines[3], "written by cloud-config");

    // The password hash is set, and still no password gets anyone in: keys only.
    assert!(vm.run_ok("grep ^alice: /etc/shadow", CMD)?.contains(&hash));
    let pw = ssh_client(ssh_port)
        .args(["-v", "-o", "PubkeyAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password,keyboard-interactive", "alice@127.0.0.1", "true"])
        .output()?;
    let err = String::from_utf8_lossy(&pw.stderr);
    assert!(!pw.status.success(), "a password-only login succeeded");
    assert!(
        err.contains("Authentications that can continue: publickey\n")
            || err.contains("Authentications that can continue: publickey\r"),
        "the server offers more than keys:\n{err}"
    );

    let status = vm.run_ok("updatectl status", CMD)?;
    assert!(status.contains("Strategy:        off"), "{status}");
    assert!(status.contains("http://10.0.2.2:9 (group canary)"), "{status}");
    assert!(status.contains("Cloud-config:    applied from fw_cfg opt/cairn/user-data"), "{status}");

    let page = cairn_tests::http::get_until(web_port, CONTAINER)
        .with_context(|| vm.run("cairnctl log container-web -n 50", CMD).map(|o| o.output).unwrap_or_default())?;
    assert!(page.contains("hello from a cairn container"), "{page}");

    // The host is hardened before any user runs: protected links, a tmpfs /tmp.
    let hardening = vm.run_ok(
        "cat /proc/sys/fs/protected_symlinks /proc/sys/fs/protected_hardlinks /proc/sys/fs/protected_fifos \
         /proc/sys/fs/protected_regular; stat -f -c %T /tmp",
        CMD,
    )?;
    assert_eq!(hardening.split_whitespace().collect::<Vec<_>>(), ["1", "1", "1", "2", "tmpfs"], "{hardening}");
    // alice, unprivileged, lays links where the next boot's apply (as root) writes her keys:
    // her keys file and the temporary name the old apply used both point at root's services.
    let plant = "cd ~/.ssh && rm authorized_keys && ln -s /etc/cairn/services/evil.toml authorized_keys \
                 && ln -s /etc/cairn/services/evil2.toml .authorized_keys.cairn-tmp && ls -la";
    let (ok, out, err) = ssh(ssh_port, "alice", &alice_key, plant)?;
    assert!(ok, "planting the links as alice: {out}{err}");

    // Second boot, same disk, a document with a type error (and another key): refused whole.
    vm.run_ok("sync", CMD)?;
    vm.send(b"poweroff\n")?;
    vm.wait_exit(Duration::from_secs(120))?;
    drop(vm);
    let bad = format!("#cloud-config\nhostname: {{name: cc-bad}}\nssh_authorized_keys: [{mallory_pub}]\n");
    std::fs::write(&config, bad)?;
    let mut vm = start(&cfg)?;
    let console = vm.console().text();
    assert!(
        console.contains(
            "cairn: cloud-config: fw_cfg opt/cairn/user-data: 2:11: error: hostname: expected a string, found a mapping"
        ),
        "the console names the error by line and column:\n{console}"
    );
    assert!(console.contains("the last good config (from fw_cfg opt/cairn/user-data) stays in effect"), "{console}");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "cc-fwcfg");
    assert!(!vm.run_ok("cat /etc/passwd", CMD)?.contains("core:"), "nothing of the refused document applied");
    let (ok, out, err) = ssh(ssh_port, "alice", &alice_key, "id -un; stat -c '%F %U' ~/.ssh/authorized_keys")?;
    assert!(ok && out.starts_with("alice\n"), "the previous key no longer works: {err}");
    // The last good document was applied again as root: her links were replaced, not followed.
    assert_eq!(out.lines().nth(1), Some("regular file alice"), "{out}");
    let services = vm.run_ok("ls -a /etc/cairn/services", CMD)?;
    assert!(!services.contains("evil"), "apply followed a user's link into root's services: {services}");
    // The refused document's key gets nobody in.
    for user in ["core", "alice", "root"] {
        let (ok, out, _) = ssh(ssh_port, user, &mallory_key, "id -un")?;
        assert!(!ok, "the refused document's key logged in as {user}: {out}");
    }
    let status = vm.run_ok("updatectl status", CMD)?;
    assert!(
        status.contains("Cloud-config:    refused from fw_cfg opt/cairn/user-data (2:11: error: hostname:"),
        "{status}"
    );
    assert!(status.contains("http://10.0.2.2:9 (group canary)"), "the previous update settings stay: {status}");
    // Each boot's config and its source are logged on ROOT too.
    let log = vm.run_ok("cat /var/log/cairn/cloud-config.log", CMD)?;
    assert_eq!(log.matches("== boot at unix ").count(), 2, "{log}");
    assert!(log.contains("fw_cfg opt/cairn/user-data: applied") && log.contains("2:11: error: hostname:"), "{log}");
    Ok(())
}

#[test]
fn a_config_drive_configures_the_host_with_its_instance_metadata() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let (core_key, core_pub) = key(dir.path(), "core")?;
    let (launch_key, launch_pub) = key(dir.path(), "launch")?;
    let archive = oci_archive(&dir.path().join("oci"), "docker.io/library/web:1")?;
    let doc = format!(
        r#"#cloud-config
hostname: cc-drive
ssh_authorized_keys:
  - {core_pub}
write_files:
  - path: /home/core/notes.txt
    permissions: "0600"
    owner: core
    encoding: b64
    content: {}
cairn:
  update:
    strategy: immediate
    source: http://10.0.2.2:9/stable/
    insecure: true
{}"#,
        base64_of("from the config drive\n"),
        web_container("/dev/vdc")
    );
    let meta = serde_json::json!({
        "uuid": "0b6f5b4e-1d3c-4d4e-9a55-3f2f0c6b7a10",
        "hostname": "nova-name",
        "public_keys": { "launch": launch_pub },
    });
    let meta = meta.to_string();
    let drive = nova_config_drive(dir.path(), &[("user_data", doc.as_bytes()), ("meta_data.json", meta.as_bytes())])?;
    let (ssh_port, web_port) = (free_port()?, free_port()?);
    let mut cfg = VmConfig { ssh_port: Some(ssh_port), ..VmConfig::uefi(img.raw()) };
    cfg.forwards.push(cairn_qemu::Forward::tcp(web_port, WEB_PORT));
    // vdb: the config drive; vdc: the container's OCI archive.
    cfg.extra_disks = vec![drive, archive];

    let mut vm = start(&cfg)?;
    let console = vm.console().text();
    assert!(console.contains("cairn: cloud-config: config-2 /dev/vdb: applied"), "{console}");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "cc-drive", "the user data's hostname wins");
    let (ok, out, err) =
        ssh(ssh_port, "core", &core_key, "id -un; stat -c '%a %U' /home/core/notes.txt; cat /home/core/notes.txt")?;
    assert!(ok, "core's key login failed: {err}\n{}", vm.console().text());
    assert_eq!(out, "core\n600 core\nfrom the config drive\n");
    let (ok, out, err) = ssh(ssh_port, "core", &launch_key, "id -un")?;
    assert!(ok && out.trim() == "core", "the instance's launch key (meta_data.json) does not log in: {err}");
    let status = vm.run_ok("updatectl status", CMD)?;
    assert!(status.contains("Strategy:        immediate"), "{status}");
    assert!(status.contains("Source:          http://10.0.2.2:9/stable/"), "{status}");
    assert!(status.contains("Cloud-config:    applied from config-2 /dev/vdb"), "{status}");
    let page = cairn_tests::http::get_until(web_port, CONTAINER)
        .with_context(|| vm.run("cairnctl log container-web -n 50", CMD).map(|o| o.output).unwrap_or_default())?;
    assert!(page.contains("hello from a cairn container"), "{page}");
    Ok(())
}

/// An EC2 instance metadata service (IMDSv2: a token from PUT, required on every GET) on
/// loopback with `user_data` and one launch key; returns its port. Serves until the process ends.
fn imds(user_data: String, launch_key: String) -> Result<u16> {
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};
    let authorized = |h: &HeaderMap| h.get("x-aws-ec2-metadata-token").is_some_and(|t| t == "cairn-test-token");
    let answer = move |h: HeaderMap, body: String| async move {
        if authorized(&h) { (StatusCode::OK, body) } else { (StatusCode::UNAUTHORIZED, String::new()) }
    };
    let app = Router::new()
        .route(
            "/latest/api/token",
            put(|h: HeaderMap| async move {
                match h.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => (StatusCode::OK, "cairn-test-token"),
                    None => (StatusCode::BAD_REQUEST, ""),
                }
            }),
        )
        .route("/latest/user-data", get(move |h| answer(h, user_data.clone())))
        .route("/latest/meta-data/hostname", get(move |h| answer(h, "ip-169-254-0-15.ec2.internal".into())))
        .route("/latest/meta-data/public-keys/", get(move |h| answer(h, "0=launch".into())))
        .route("/latest/meta-data/public-keys/0/openssh-key", get(move |h| answer(h, launch_key.clone())));
    Ok(cairn_tests::http::serve_router(app)?)
}

/// On EC2 (as the firmware's DMI strings say), the host brings the network up with DHCP, asks
/// the metadata service at 169.254.169.254 (IMDSv2) for its user data and its launch key, and
/// applies both. QEMU's user network is set to 169.254.0.0/16 and forwards the metadata address
/// to the loopback service above (through busybox nc, one process per connection).
#[test]
fn on_ec2_the_metadata_service_configures_the_host() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let (launch_key, launch_pub) = key(dir.path(), "launch")?;
    let doc = "#cloud-config\nwrite_files:\n  - {path: /etc/from-imds, content: \"user data from IMDS\\n\"}\n";
    let port = imds(doc.to_string(), launch_pub)?;
    let ssh_port = free_port()?;
    let mut cfg = VmConfig { ssh_port: Some(ssh_port), ..VmConfig::uefi(img.raw()) };
    cfg.net_options = vec![
        "net=169.254.0.0/16".into(),
        format!("guestfwd=tcp:169.254.169.254:80-cmd:/bin/busybox nc 127.0.0.1 {port}"),
    ];
    cfg.extra_args.extend(["-smbios".into(), "type=1,manufacturer=Amazon EC2,product=t3.micro".into()]);

    let mut vm = start(&cfg)?;
    let console = vm.console().text();
    assert!(console.contains("cairn: cloud-config: ec2: user data"), "{console}");
    assert!(console.contains("platform=ec2 source=ec2 outcome=applied"), "{console}");
    assert_eq!(vm.run_ok("cat /etc/from-imds", CMD)?.trim(), "user data from IMDS");
    assert_eq!(vm.run_ok("hostname", CMD)?.trim(), "ip-169-254-0-15.ec2.internal", "the metadata's hostname");
    let (ok, out, err) = ssh(ssh_port, "core", &launch_key, "id -un")?;
    assert!(ok && out.trim() == "core", "the EC2 launch key does not log in as core: {err}");
    Ok(())
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
