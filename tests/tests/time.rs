//! VM test of time synchronisation (issue 18): an NTP server on the test machine's loopback
//! (the image's own chronyd, serving its local clock at stratum 8), reached by the guest as
//! 10.0.2.2 through QEMU's user network, named by cloud-config's `cairn.ntp`. The guest's
//! clock starts an hour ahead (its RTC), chronyd steps it, and `cairnctl status` says so.

use anyhow::{Context, Result, bail};
use cairn_qemu::{Vm, VmConfig};
use cairn_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const SYNC: Duration = Duration::from_secs(180);
/// How far ahead the guest's clock starts.
const OFFSET_S: u64 = 3600;

/// chronyd from the image's `/usr` (run with the image's own loader and libraries, so the test
/// machine needs no NTP package that would replace its own time service), as a server on
/// 127.0.0.1:`port` that leaves this machine's clock alone (-x).
struct NtpServer {
    child: Child,
    log: PathBuf,
}

impl NtpServer {
    fn start(usr_img: &Path, dir: &Path, port: u16) -> Result<NtpServer> {
        let usr = dir.join("usr");
        let out = Command::new("fsck.erofs").arg(format!("--extract={}", usr.display())).arg(usr_img).output()?;
        if !out.status.success() {
            bail!("fsck.erofs --extract: {}", String::from_utf8_lossy(&out.stderr));
        }
        let conf = dir.join("chrony-server.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
                 pidfile {}\n",
                dir.join("chronyd.pid").display()
            ),
        )?;
        let log = dir.join("chronyd.log");
        let user: &[&str] = if nix::unistd::geteuid().is_root() { &["-u", "root"] } else { &["-U"] };
        let child = Command::new(usr.join("lib64/ld-linux-x86-64.so.2"))
            .arg("--library-path")
            .arg(usr.join("lib/x86_64-linux-gnu"))
            .arg(usr.join("sbin/chronyd"))
            .args(["-d", "-x"])
            .args(user)
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the image's chronyd as the test's NTP server")?;
        let mut server = NtpServer { child, log };
        // Serving once it says it started; a failure shows in its log.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&server.log)?.contains("starting") {
            if let Some(status) = server.child.try_wait()? {
                bail!("chronyd exited ({status}): {}", std::fs::read_to_string(&server.log)?);
            }
            if std::time::Instant::now() > deadline {
                bail!("chronyd did not start: {}", std::fs::read_to_string(&server.log)?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

/// How far ahead of `now` the guest's RTC was at boot, from the kernel's `rtc_cmos ...: setting
/// system clock to ... UTC (EPOCH)` line followed by the guest's uptime.
fn boot_skew(out: &str, now: u64) -> Result<i64> {
    let mut lines = out.lines();
    let note = lines.next().context("no kernel line")?.trim();
    let epoch: i64 = note.rsplit_once('(').and_then(|(_, e)| e.strip_suffix(')')).context("no epoch")?.parse()?;
    let uptime: f64 = lines.next().context("no uptime")?.trim().parse()?;
    Ok(epoch - (now as i64 - uptime as i64))
}

impl Drop for NtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_host_synchronises_time_from_the_configured_ntp_server() -> Result<()> {
    let img = dev_image()?;
    let dir = tempfile::tempdir()?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = NtpServer::start(&img.dir.join("usr.img"), dir.path(), port)?;

    let config = dir.path().join("user-data");
    std::fs::write(&config, format!("#cloud-config\ncairn:\n  ntp:\n    servers: [\"10.0.2.2:{port}\"]\n"))?;
    let mut cfg = VmConfig::uefi(img.raw());
    cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), config));
    let ahead = unix_now() + OFFSET_S;
    let out = Command::new("date").args(["-u", "-d", &format!("@{ahead}"), "+%Y-%m-%dT%H:%M:%S"]).output()?;
    cfg.extra_args.extend(["-rtc".to_string(), format!("base={}", String::from_utf8(out.stdout)?.trim())]);
    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;

    let skew = |vm: &mut Vm| -> Result<i64> {
        let guest: i64 = vm.run_ok("date +%s", CMD)?.trim().parse()?;
        Ok(guest - unix_now() as i64)
    };
    // Where the guest's clock started: the kernel's own note of the RTC it read at boot. By the
    // time the console answers chronyd may have stepped the clock, and with `rtcsync` the kernel
    // writes the synchronised time back to the RTC soon after, so neither can be read now.
    let boot = vm.run_ok("dmesg | grep -m1 'setting system clock to'; cut -d' ' -f1 /proc/uptime", CMD)?;
    let before = boot_skew(&boot, unix_now()).with_context(|| format!("the kernel's boot note: {boot}"))?;
    assert!(before > (OFFSET_S as i64) / 2, "the guest's clock should start ahead, its RTC was {before} s off at boot");
    assert_eq!(
        vm.run_ok("cat /etc/cairn/chrony/ntp.sources | grep -v '^#'", CMD)?.trim(),
        format!("server 10.0.2.2 iburst port {port}")
    );
    // The guest waits for synchronisation itself, so the figure has no polling in it.
    let synced_at = vm.run_ok(
        "until cairnctl status | grep -q '^time: synchronised'; do sleep 0.2; done; cut -d' ' -f1 /proc/uptime",
        SYNC,
    );
    let chrony_log = vm.run("cairnctl log chronyd -n 30", CMD).map(|o| o.output).unwrap_or_default();
    let synced_at: f64 = synced_at
        .with_context(|| {
            format!("never synchronised; chronyd's log:\n{chrony_log}\nserver's log:\n{}", server_log(&server))
        })?
        .trim()
        .parse()?;
    let after = skew(&mut vm)?;
    assert!(after.abs() <= 3, "synchronised, but the guest's clock is {after} s off (it was {before} s)");
    let status = vm.run_ok("cairnctl status", CMD)?;
    assert!(status.lines().any(|l| l.starts_with("time: synchronised (estimated error")), "{status}");
    assert!(chrony_log.contains("10.0.2.2"), "{chrony_log}");
    assert!(status.lines().any(|l| l.starts_with("chronyd") && l.contains("running")), "{status}");

    // Network up: the DHCP lease, as the lease script stamped it with the uptime.
    let dhcp = vm.run_ok("cairnctl log dhcp-eth0 -n 50", CMD)?;
    let bound_at: f64 = dhcp
        .lines()
        .find(|l| l.contains(" bound:"))
        .and_then(|l| l.split('[').nth(1)?.split(' ').next()?.parse().ok())
        .with_context(|| format!("no lease in the DHCP log:\n{dhcp}"))?;
    println!(
        "time: network up at {bound_at:.1} s, synchronised at {synced_at:.1} s of uptime: {:.1} s from network up \
         to synchronised; the clock was {before} s off and is {after} s off",
        synced_at - bound_at
    );
    vm.shutdown(CMD)?;
    Ok(())
}

fn server_log(server: &NtpServer) -> String {
    std::fs::read_to_string(&server.log).unwrap_or_default()
}
