//! VM test: the image boots to ready with its disk on the buses clouds give VMs (issue 18):
//! virtio-blk, virtio-scsi, NVMe and SATA (AHCI, with an Intel e1000e NIC), one after another in
//! the same run so their times compare; on NVMe (`nvme0n1p5`) ROOT grows to fill the disk.

use anyhow::{Context, Result};
use cairn_qemu::{DiskBus, Nic, Vm, VmConfig};
use cairn_tests::*;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);

#[test]
fn the_image_boots_on_virtio_scsi_nvme_and_ahci_with_e1000e_and_root_grows_on_nvme() -> Result<()> {
    let img = dev_image()?;
    let mut times = Vec::new();
    for bus in [DiskBus::Virtio, DiskBus::Scsi, DiskBus::Nvme, DiskBus::Ahci] {
        let mut cfg = VmConfig::uefi(img.raw());
        cfg.disk_bus = bus;
        if bus == DiskBus::Ahci {
            cfg.nic = Nic::E1000e;
        }
        cfg.disk_size = Some(4 << 30);
        let started = Instant::now();
        let mut vm = Vm::start(&cfg)?;
        vm.wait_for_line("cairn: ready", 0, READY).with_context(|| format!("booting on {bus:?}"))?;
        times.push((bus, started.elapsed()));
        let disks = vm.run_ok("ls /sys/class/block", CMD)?;
        let expected = match bus {
            DiskBus::Virtio => "vda5",
            DiskBus::Scsi => "sda5",
            DiskBus::Nvme => "nvme0n1p5",
            DiskBus::Ahci => "sda5",
        };
        assert!(disks.split_whitespace().any(|d| d == expected), "{bus:?}: {disks}");
        // The NIC's driver, loaded for its modalias, and DHCP's address on it.
        let driver = vm.run_ok("basename $(readlink /sys/class/net/eth0/device/driver)", CMD)?;
        let want = if bus == DiskBus::Ahci { "e1000e" } else { "virtio_net" };
        assert_eq!(driver.trim(), want, "{bus:?}: eth0's driver");
        let lease =
            "for i in $(seq 60); do ip -4 -o addr show eth0 | grep -q 10.0.2.15/24 && exit 0; sleep 1; done; exit 1";
        if vm.run(lease, CMD)?.status != 0 {
            let why = vm.run("ip link show eth0; ps | grep [u]dhcpc; dmesg | grep -i -e eth0 -e e1000 | tail", CMD)?;
            panic!("{bus:?}: eth0 has no DHCP lease within 60 s:\n{}", why.output);
        }
        if bus == DiskBus::Nvme {
            // ROOT filled the 4 GiB disk (the image's ROOT is 64 MiB).
            let df = vm.run_ok("df -k / | tail -1", CMD)?;
            let size_kb: u64 = df.split_whitespace().nth(1).context("df size")?.parse()?;
            assert!(size_kb > 2_500_000, "ROOT on NVMe is {size_kb} KiB after first boot");
        }
    }
    let virtio = times[0].1.as_secs_f64();
    for (bus, t) in &times {
        println!(
            "power-on to ready on {bus:?}: {:.1} s ({:+.0}% of virtio-blk)",
            t.as_secs_f64(),
            (t.as_secs_f64() / virtio - 1.0) * 100.0
        );
    }
    Ok(())
}
