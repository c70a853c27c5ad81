//! VM tests of containers from registries (issue 17): Debian's `docker-registry` on the test
//! machine's loopback (10.0.2.2 inside QEMU), an image made by the test pushed to it with skopeo,
//! and a host whose cloud-config names the registry (plain HTTP: `insecure`), a mirror for a
//! registry that does not exist, and a registry whose credentials are wrong. containerd pulls
//! by tag, by digest and through the mirror; each container runs on the host's bridge and
//! answers on its published port, forwarded from the test machine; one reaches another by its
//! address, one runs as another user, one keeps a named volume across a reboot; the bad ones say
//! why, and the host stays ready.

use anyhow::{Context, Result};
use cairn_qemu::{Forward, Vm, VmConfig};
use cairn_tests::registry::Registry;
use cairn_tests::*;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(120);
const PULL: Duration = Duration::from_secs(300);

/// A container entry serving `text` with busybox's httpd on its port 80, published on the
/// guest's `port`.
fn web(name: &str, image: &str, text: &str, port: u16) -> String {
    format!(
        "    - name: {name}\n      image: {image}\n      ports: [\"{port}:80\"]\n      command: [/bin/busybox, sh, -c, \
         \"mkdir -p /www && echo {text} > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www\"]\n"
    )
}

/// The entry of container "web": it also counts its starts in a named volume it serves.
fn counting_web(image: &str, port: u16) -> String {
    format!(
        "    - name: web\n      image: {image}\n      ports: [\"{port}:80\"]\n      volumes: [\"site:/www/data\"]\n      \
         command: [/bin/busybox, sh, -c, \"mkdir -p /www && echo tagged > /www/index.html && \
         echo start >> /www/data/starts && exec /bin/busybox httpd -f -p 80 -h /www\"]\n"
    )
}

/// The entry of container "mirrored": run as uid 1000 in /dev/shm, it says who it is, on its
/// (unprivileged) port 8000.
fn user_web(image: &str, port: u16) -> String {
    format!(
        "    - name: mirrored\n      image: {image}\n      ports: [\"{port}:8000\"]\n      user: \"1000:1000\"\n      \
         working_dir: /dev/shm\n      command: [/bin/busybox, sh, -c, \
         \"echo mirrored uid $(/bin/busybox id -u) in $(/bin/busybox pwd) > index.html && \
         exec /bin/busybox httpd -f -p 8000 -h /dev/shm\"]\n"
    )
}

/// A shell word that is the containerd id of container `name`'s run, found by its label.
fn container_id(name: &str) -> String {
    format!("$(ctr -n k8s.io containers ls -q 'labels.\"io.cairn.container\"=={name}')")
}

/// The last lines of container `name`'s log.
fn log(vm: &mut Vm, name: &str) -> String {
    vm.run(&format!("cairnctl log container-{name} -n 40"), CMD).map(|o| o.output).unwrap_or_default()
}

/// Polls container `name`'s log until it contains `what`.
fn log_until(vm: &mut Vm, name: &str, what: &str) -> Result<String> {
    let deadline = Instant::now() + PULL;
    loop {
        let text = log(vm, name);
        if text.contains(what) {
            return Ok(text);
        }
        anyhow::ensure!(Instant::now() < deadline, "container-{name}'s log never said {what:?}:\n{text}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn containers_are_pulled_by_tag_digest_and_mirror_and_bad_pulls_say_why() -> Result<()> {
    let img = dev_image()?;
    let work = tempfile::tempdir()?;
    let open = Registry::start(None)?;
    let locked = Registry::start(Some(("bot", "right-password")))?;
    let archive = oci_archive(work.path(), "cairn.test/web:1")?;
    let digest = open.push(&archive, "web", "1")?;
    let (o, l) = (open.port, locked.port);
    let user_data = format!(
        "#cloud-config\ncairn:\n  registries:\n    \"10.0.2.2:{o}\": {{insecure: true}}\n    \
         \"registry.invalid:5000\": {{mirrors: [\"http://10.0.2.2:{o}\"], insecure: true}}\n    \
         \"10.0.2.2:{l}\": {{insecure: true, username: bot, password: wrong-password}}\n  containers:\n{}{}{}{}{}",
        counting_web(&format!("10.0.2.2:{o}/web:1"), 8080),
        web("pinned", &format!("10.0.2.2:{o}/web@{digest}"), "pinned", 8081)
            + "      health: {command: [/bin/busybox, test, -f, /www/index.html], interval: 1s, retries: 2}\n",
        user_web("registry.invalid:5000/web:1", 8082),
        web("denied", &format!("10.0.2.2:{l}/web:1"), "denied", 8083),
        web("missing", &format!("10.0.2.2:{o}/web:nope"), "missing", 8084),
    );
    let config = work.path().join("user-data");
    std::fs::write(&config, &user_data)?;
    let disk = disk_over(&img.raw(), work.path(), None)?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let mut cfg = VmConfig { persistent: true, ..VmConfig::uefi(&disk) };
    for (host, guest) in ports.iter().zip([8080, 8081, 8082]) {
        cfg.forwards.push(Forward::tcp(*host, guest));
    }
    cfg.fw_cfg.push((cairn_config::local::FW_CFG_NAME.to_string(), config));

    let powered_on = Instant::now();
    let mut vm = Vm::start(&cfg)?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    // pinned's health command holds "ready" back until its pull is done and it answers.
    println!("from power-on to ready: {:.1} s", powered_on.elapsed().as_secs_f64());
    let ready = Instant::now();
    let pinned = log(&mut vm, "pinned");
    assert!(pinned.contains("container pinned: healthy"), "ready before pinned was healthy:\n{pinned}");
    for (port, text, name) in
        [(ports[0], "tagged", "web"), (ports[1], "pinned", "pinned"), (ports[2], "mirrored", "mirrored")]
    {
        let page = cairn_tests::http::get_until(port, PULL).with_context(|| log(&mut vm, name))?;
        assert!(page.contains(text), "{name}: {page}");
    }
    println!(
        "from ready to three containers pulled and answering: {:.1} s ({:.1} s from power-on)",
        ready.elapsed().as_secs_f64(),
        powered_on.elapsed().as_secs_f64()
    );
    let page = cairn_tests::http::get_until_path(ports[2], "/", CMD)?;
    assert_eq!(page.trim(), "mirrored uid 1000 in /dev/shm", "user and working_dir");

    // On the bridge, each in its own namespace: pinned reaches web by its address, and the test
    // machine (10.0.2.2) through the host's masquerade.
    let web_log = log(&mut vm, "web");
    let address = web_log
        .lines()
        .filter(|l| l.contains("container web: running "))
        .find_map(|l| l.split_once(" at ").map(|(_, a)| a.split_whitespace().next().unwrap_or("").to_string()))
        .with_context(|| format!("web's address in its log:\n{web_log}"))?;
    assert!(address.starts_with("10.88."), "{address}:\n{web_log}");
    println!("web's log:\n{web_log}");
    let exec =
        |what: &str| format!("ctr -n k8s.io tasks exec --exec-id probe {} /bin/busybox {what}", container_id("pinned"));
    let peer = vm.run_ok(&exec(&format!("wget -q -O - http://{address}/")), CMD)?;
    assert_eq!(peer.trim(), "tagged", "pinned reaching web at {address}");
    // (The answer has no newline of its own: one is added so the console shows it on a line.)
    let out = vm.run_ok(&exec(&format!("sh -c 'wget -q -O - http://10.0.2.2:{o}/v2/ 2>&1; echo'")), CMD)?;
    if out.trim() != "{}" {
        let state = vm.run("iptables -t nat -S; iptables -S; cat /proc/sys/net/ipv4/ip_forward; ip route; lsmod", CMD);
        panic!(
            "the registry's API root, from inside a container: {out:?}\n{}",
            state.map(|o| o.output).unwrap_or_default()
        );
    }
    let resolv = vm.run_ok(&exec("cat /etc/resolv.conf"), CMD)?;
    let host_resolv = vm.run_ok("cat /etc/resolv.conf", CMD)?;
    assert_eq!(resolv.trim(), host_resolv.trim(), "the container resolves names with the host's servers");
    let own = vm.run_ok(&exec("hostname"), CMD)?;
    assert_eq!(own.trim(), "pinned");
    // Confined as Docker confines a container: its capabilities, no new privileges, and a
    // seccomp filter (Docker's profile, `container::seccomp`'s unit tests show what it refuses).
    let status = vm.run_ok(&exec("cat /proc/self/status"), CMD)?;
    assert!(status.contains("CapEff:\t00000000a80425fb"), "Docker's default capabilities:\n{status}");
    assert!(status.contains("NoNewPrivs:\t1") && status.contains("Seccomp:\t2"), "{status}");

    // pinned's health command counts for the host's readiness (it passed before "ready"); two
    // failures in a row (its page removed) restart it, and the new one serves again.
    vm.run_ok(
        &format!("ctr -n k8s.io tasks exec --exec-id spoil {} /bin/busybox rm /www/index.html", container_id("pinned")),
        CMD,
    )?;
    let unhealthy = log_until(&mut vm, "pinned", "unhealthy")?;
    assert!(unhealthy.contains("health check failed (1)"), "{unhealthy}");
    let page = cairn_tests::http::get_until(ports[1], PULL).with_context(|| log(&mut vm, "pinned"))?;
    assert!(page.contains("pinned"), "{page}");

    // The bad pulls name the image and the problem; the host is up all the same.
    let denied = log_until(&mut vm, "denied", "refused the credentials")?;
    assert!(denied.contains(&format!("10.0.2.2:{l}/web:1")), "{denied}");
    let missing = log_until(&mut vm, "missing", "no such image or tag")?;
    assert!(missing.contains(&format!("10.0.2.2:{o}/web:nope")), "{missing}");
    // updatectl status says which containers failed and why (a runner retrying is "pulling"
    // for a moment: asked again until both show failed).
    let deadline = Instant::now() + PULL;
    loop {
        let status = vm.run_ok("updatectl status", CMD)?;
        let line = status.lines().find(|l| l.starts_with("Containers:")).unwrap_or_default().to_string();
        if line.contains("denied failed:") && line.contains("missing failed:") {
            assert!(line.contains("refused the credentials") && line.contains("no such image or tag"), "{line}");
            assert!(line.contains("web running ("), "{line}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "updatectl status never showed both failures:\n{status}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // The password is root's alone and in no log or status.
    let auth = vm.run_ok("stat -c '%a %U' /etc/cairn/registry-auth.toml", CMD)?;
    assert_eq!(auth.trim(), "600 root");
    let leaks = vm.run(
        "grep -rl wrong-password /var/log /run/cairn 2>/dev/null; cairnctl status | grep -c wrong-password",
        CMD,
    )?;
    assert_eq!(leaks.output.trim(), "0", "the password leaked: {}", leaks.output);
    let hosts = vm.run_ok("cat /etc/containerd/certs.d/registry.invalid:5000/hosts.toml", CMD)?;
    assert!(hosts.contains(&format!("[host.\"http://10.0.2.2:{o}\"]")), "{hosts}");

    // The tag was resolved once: a restart runs the pinned image without asking the registry.
    let count = |vm: &mut Vm, what: &str| -> usize {
        let out = vm.run(&format!("grep -c '{what}' /var/log/cairn/container-web.log"), CMD);
        out.ok().and_then(|o| o.output.trim().parse().ok()).unwrap_or(usize::MAX)
    };
    // Waits until web's log says `what` once more than `before` times.
    let once_more = |vm: &mut Vm, what: &str, before: usize| -> Result<()> {
        let deadline = Instant::now() + PULL;
        while count(vm, what) <= before {
            anyhow::ensure!(Instant::now() < deadline, "web's log never said {what:?} again:\n{}", log(vm, "web"));
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    };
    let (pulling, running) = ("pulling 10.0.2.2", "container web: running");
    assert_eq!(count(&mut vm, pulling), 1);
    let runs = count(&mut vm, running);
    vm.run_ok("cairnctl restart container-web", CMD)?;
    once_more(&mut vm, running, runs)?;
    cairn_tests::http::get_until(ports[0], PULL)?;
    assert_eq!(count(&mut vm, pulling), 1, "a restart pulled again:\n{}", log(&mut vm, "web"));
    // SIGTERM ended it at once: tini, its PID 1, passed it on to httpd (which, as PID 1 itself,
    // would ignore it and be killed only when its 10 s grace ran out).
    let stopped = count(&mut vm, "container web: stopped: exited with code 143");
    assert_eq!(stopped, 1, "web's stop, by SIGTERM:\n{}", log(&mut vm, "web"));

    // Its process killed, the container is restarted per its policy (always); its runner
    // killed (a crash: the container lives on under its shim), the next start clears what was
    // left: one container of web's, one network namespace, one published port.
    let runs = count(&mut vm, running);
    vm.run_ok(&format!("ctr -n k8s.io tasks kill -s SIGKILL {}", container_id("web")), CMD)?;
    once_more(&mut vm, "exited with code 137", 0)?;
    once_more(&mut vm, running, runs)?;
    cairn_tests::http::get_until(ports[0], PULL).with_context(|| log(&mut vm, "web"))?;
    // The runner's pid from init's last note in web's log (a scan of /proc with a `tr` and a
    // `grep` per process outlasted CMD under TCG on a busy machine), checked to be the runner.
    let killed = vm.run_ok(
        "pid=$(grep -o 'container web (pid [0-9]*)' /var/log/cairn/container-web.log | tail -1 | tr -dc 0-9); \
         tr '\\0' ' ' < /proc/$pid/cmdline | grep -q '^/usr/sbin/cairn-cloud-config container web $' \
         && kill -9 $pid && echo killed",
        CMD,
    )?;
    assert_eq!(killed.trim(), "killed", "the runner of web, killed");
    log_until(&mut vm, "web", "removed what an earlier run left")?;
    once_more(&mut vm, running, runs + 1)?;
    cairn_tests::http::get_until(ports[0], PULL).with_context(|| log(&mut vm, "web"))?;
    let left = vm.run_ok("ctr -n k8s.io containers ls -q 'labels.\"io.cairn.container\"==web' | wc -l", CMD)?;
    assert_eq!(left.trim(), "1", "web's container, once");
    let namespaces = vm.run_ok("ls /run/cairn/netns | grep -c '^web-'", CMD)?;
    assert_eq!(namespaces.trim(), "1", "web's network namespace, once");
    let rules = vm.run_ok("iptables -t nat -S | grep -c -- '--dport 8080 -j DNAT'", CMD)?;
    assert_eq!(rules.trim(), "1", "one DNAT rule for web's port");
    // The shared NAT chains are the image's (cni/bridge.rules), loaded once; the runners fill
    // CAIRN-PORTS, and no container has a chain of its own (no CNI plugin touches the filter).
    let nat = vm.run_ok("iptables -t nat -S", CMD)?;
    let entries = nat.lines().filter(|l| l.ends_with("--dst-type LOCAL -j CAIRN-PORTS")).count();
    assert_eq!(entries, 2, "PREROUTING's and OUTPUT's jumps to the published ports, once each:\n{nat}");
    let own_chains: Vec<&str> = nat.lines().filter(|l| l.starts_with("-N CNI-")).collect();
    assert!(own_chains.is_empty(), "chains the image's NAT base should have made needless: {own_chains:?}\n{nat}");
    // The base's masquerades carry the published port from the host itself (127.0.0.1) and
    // from web back to its own port through the host's address (hairpin).
    let local = vm.run_ok("wget -q -O - http://127.0.0.1:8080/", CMD)?;
    assert!(local.contains("tagged"), "web's published port from the host's 127.0.0.1: {local:?}");
    let hairpin = vm.run_ok(
        &format!(
            "ctr -n k8s.io tasks exec --exec-id hairpin {} /bin/busybox wget -q -O - http://10.0.2.15:8080/",
            container_id("web")
        ),
        CMD,
    )?;
    assert!(hairpin.contains("tagged"), "web reaching its own published port through the host: {hairpin:?}");
    localnet_is_guarded(&mut vm)?;
    neighbours_reach_only_published_ports(&mut vm)?;
    // No CNI firewall plugin: the image's rules forward the bridge's traffic.
    let firewall = vm.run_ok("iptables -S | grep -c CNI-FORWARD || true", CMD)?;
    assert_eq!(firewall.trim(), "0", "the firewall plugin's chain on the default image");
    let starts = vm.run_ok("wc -l < /var/lib/cairn/volumes/site/starts", CMD)?;
    let starts: usize = starts.trim().parse()?;

    // Booted again with web alone (the failing ones would keep the CPU busy retrying, and
    // pinned's health command would hold "ready" back) on 2 vCPUs: from ready to answering with
    // the image cached, nothing pulled.
    let mark = vm.console().mark();
    vm.send(b"poweroff\n")?;
    vm.wait_for_line("cairn: powering off", mark, CMD)?;
    vm.wait_exit(Duration::from_secs(60))?;
    drop(vm);
    let good_only = user_data.split("    - name: pinned").next().context("web's entry")?;
    std::fs::write(work.path().join("user-data"), good_only)?;
    let mut vm = Vm::start(&VmConfig { cpus: 2, ..cfg })?;
    vm.wait_for_line("cairn: ready", 0, READY)?;
    let ready = Instant::now();
    let why = |vm: &mut Vm| {
        let state = vm.run("cairnctl status; ip addr; ctr -n k8s.io tasks ls; ctr -n k8s.io containers ls", CMD);
        format!("{}\n{}", log(vm, "web"), state.map(|o| o.output).unwrap_or_default())
    };
    cairn_tests::http::get_until(ports[0], PULL).with_context(|| why(&mut vm))?;
    let cached = ready.elapsed();
    let started = vm.run_ok("grep 'container web: running' /var/log/cairn/container-web.log | tail -1", CMD)?;
    println!("{}", started.trim());
    println!(
        "second boot, 2 vCPUs: from ready to the container answering (image cached): {:.2} s",
        cached.as_secs_f64()
    );
    assert_eq!(count(&mut vm, pulling), 1, "a reboot pulled again:\n{}", log(&mut vm, "web"));
    let record = vm.run_ok("cat /var/lib/cairn/containers/web.toml", CMD)?;
    assert!(record.contains(&format!("@{digest}")), "the tag is pinned to what was pulled: {record}");
    let kept = cairn_tests::http::get_until_path(ports[0], "/data/starts", CMD)?;
    assert_eq!(kept.lines().count(), starts + 1, "the named volume kept its content across the reboot: {kept}");
    Ok(())
}

/// route_localnet on the bridge (for the host's own connections to published ports) would let
/// a container reach what the host serves on 127.0.0.1 only (CVE-2020-8558). The test plays
/// such a container: in web's network namespace, 127.0.0.1 is routed to the host over the
/// bridge, as a container with raw sockets could send it. The image's rules drop it; without
/// them (the jump to their chain taken out) the same request reaches the host's loopback
/// server, which shows the attack is real; with the jump back it is dropped again.
fn localnet_is_guarded(vm: &mut Vm) -> Result<()> {
    let serve = "busybox httpd -p 127.0.0.1:18080 -h /run/lo-www";
    vm.run_ok(&format!("mkdir -p /run/lo-www && echo host-only > /run/lo-www/index.html && {serve}"), CMD)?;
    let pid =
        vm.run_ok(&format!("ctr -n k8s.io tasks ls | awk -v id={} '$1 == id {{print $2}}'", container_id("web")), CMD)?;
    let pid: u32 = pid.trim().parse().with_context(|| format!("web's pid: {pid:?}"))?;
    let in_web = |script: &str| format!("busybox nsenter -t {pid} -n sh -c '{script}'");
    vm.run_ok(
        &in_web(
            "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet && ip addr del 127.0.0.1/8 dev lo \
             && ip route add 127.0.0.1/32 via 10.88.0.1 dev eth0",
        ),
        CMD,
    )?;
    let attack = in_web("timeout 10 wget -q -O - http://127.0.0.1:18080/ 2>&1; echo exit $?");
    let [guarded, open, again] = with_without_and_again(vm, "INPUT", "CAIRN-INPUT", &attack)?;
    assert!(!guarded.contains("host-only"), "a container reached the host's 127.0.0.1 through the bridge: {guarded}");
    assert!(open.contains("host-only"), "without the guard the attack should work (else this shows nothing): {open}");
    assert!(!again.contains("host-only"), "the guard back, a container still reached 127.0.0.1: {again}");
    vm.run_ok(&in_web("ip route del 127.0.0.1/32 && ip addr add 127.0.0.1/8 dev lo"), CMD)?;
    Ok(())
}

/// A neighbour that routes the containers' subnet through this host reaches web on its
/// published port and on nothing else (as with Docker): the bridge rules forward to the bridge
/// only replies and published ports. The test plays the neighbour from a network namespace on a
/// veth pair; without the rules' jump the same neighbour reaches web's unpublished address,
/// which shows the test can see the difference.
fn neighbours_reach_only_published_ports(vm: &mut Vm) -> Result<()> {
    let address = container_address(vm, "web")?;
    let made = vm.run_ok(
        "busybox unshare -n sleep 600 >/dev/null 2>&1 & p=$!; ip link add nb0 type veth \\
         && peer=$(ip -o link show nb0 | sed -n 's/.*nb0@\\([^:]*\\):.*/\\1/p') \\
         && ip addr add 192.168.77.1/24 dev nb0 && ip link set nb0 up && ip link set $peer netns $p && echo $p $peer",
        CMD,
    )?;
    let (pid, peer) = made.trim().split_once(' ').with_context(|| format!("the neighbour's pid and link: {made:?}"))?;
    let in_neighbour = |script: &str| format!("busybox nsenter -t {pid} -n sh -c '{script}'");
    vm.run_ok(
        &in_neighbour(&format!(
            "ip addr add 192.168.77.2/24 dev {peer} && ip link set {peer} up && ip route add default via 192.168.77.1"
        )),
        CMD,
    )?;
    let fetch = |url: &str| in_neighbour(&format!("timeout 10 wget -q -O - {url} 2>&1; echo exit $?"));
    let published = vm.run_ok(&fetch("http://192.168.77.1:8080/"), CMD)?;
    assert!(published.contains("tagged"), "web's published port from a neighbour: {published}");
    let direct = fetch(&format!("http://{address}/"));
    let [refused, open, again] = with_without_and_again(vm, "FORWARD", "CAIRN-FORWARD", &direct)?;
    assert!(!refused.contains("tagged"), "a neighbour reached web's unpublished {address}:80: {refused}");
    assert!(
        open.contains("tagged"),
        "without the rules a neighbour should reach web (else this shows nothing): {open}"
    );
    assert!(!again.contains("tagged"), "the rules back, a neighbour still reached {address}:80: {again}");
    // The pair goes with the namespace (nb0 may already be gone).
    vm.run_ok(&format!("kill {pid}; ip link del nb0 2>/dev/null; true"), CMD)?;
    Ok(())
}

/// What `probe` printed with the bridge rules' jump from `chain` to `rules` in place, taken out,
/// and put back first in `chain` (as loaded).
fn with_without_and_again(vm: &mut Vm, chain: &str, rules: &str, probe: &str) -> Result<[String; 3]> {
    let with = vm.run_ok(probe, CMD)?;
    vm.run_ok(&format!("iptables -D {chain} -j {rules}"), CMD)?;
    let without = vm.run_ok(probe, CMD);
    vm.run_ok(&format!("iptables -I {chain} -j {rules}"), CMD)?;
    Ok([with, without?, vm.run_ok(probe, CMD)?])
}
