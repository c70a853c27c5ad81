//! Stage 1, PID 1 in the initramfs: load modules, find the `/usr` partition by the root hash on
//! the command line, set up dm-verity, mount `/usr` (erofs, read-only) and ROOT, switch root.

use crate::{disks, dm, modules, mounts, say};
use cairn_release::cmdline;
use cairn_release::verity::{self, VerityParams};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

const SYSROOT: &str = "/sysroot";
const DISK_DEADLINE: Duration = Duration::from_secs(30);
pub use cairn_release::layout::BOOT_ENV;

pub fn run() -> Result<std::convert::Infallible, String> {
    let init_start_ms = crate::console::boot_ms();
    mounts::mount_api_filesystems()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let root_hash = parse_root_hash(&cmdline)?;
    let hash_offset: u64 = cmdline::value(&cmdline, cmdline::USR_HASH_OFFSET)
        .ok_or("the kernel command line has no cairn.usr_hash_offset=")?
        .parse()
        .map_err(|_| "cairn.usr_hash_offset= is not a number")?;

    modules::load_list(Path::new("/").join(crate::MODULES_LOAD).as_path())?;
    let release =
        nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?.release().to_string_lossy().into_owned();
    let mut coldplug = modules::Coldplug::new(&Path::new("/lib/modules").join(release), None)?;
    let modules_ms = crate::console::boot_ms();

    let found = wait_for_partitions(&root_hash, &mut coldplug)?;
    let disk_ms = crate::console::boot_ms();
    say!(
        "stage 1: /usr is {} (slot {}), ROOT is {}",
        found.usr.device.display(),
        found.slot.letter(),
        found.root.device.display()
    );

    let params = read_verity_params(&found.usr.device, root_hash, hash_offset)?;
    let dev = found.usr.device.to_string_lossy().into_owned();
    let table = params.dm_table(&dev);
    let minor = dm::create_readonly(
        "usr",
        &format!("CAIRN-USR-{}", hex::encode(&root_hash[..16])),
        &dm::Target { start: 0, sectors: params.data_sectors(), kind: "verity", params: &table },
    )
    .map_err(|e| format!("setting up dm-verity for {dev}: {e}"))?;
    let verity_dev = format!("/dev/dm-{minor}");
    let verity_ms = crate::console::boot_ms();

    mounts::mount_root(&found.root.device, SYSROOT)?;
    mounts::prepare_root(SYSROOT)?;
    mounts::mount_usr(&verity_dev, &format!("{SYSROOT}/usr"))?;
    // Reading the init we are about to run proves /usr verifies before we leave the initramfs.
    check_readable(&format!("{SYSROOT}{}", crate::STAGE2_PATH))?;
    mounts::seed_etc(SYSROOT)?;
    if let Err(e) = crate::sysusers::merge(std::path::Path::new(SYSROOT)) {
        say!("the image's system accounts: {e}");
    }

    std::fs::create_dir_all("/run/cairn").map_err(|e| format!("creating /run/cairn: {e}"))?;
    let env = format!(
        "SLOT={}\nUSR_PARTITION={}\nUSR_DEVICE={verity_dev}\nROOT_PARTITION={}\n\
         INIT_START_MS={init_start_ms}\nMODULES_MS={modules_ms}\nDISK_MS={disk_ms}\nVERITY_MS={verity_ms}\nSTAGE1_MS={}\n",
        found.slot.letter(),
        found.usr.device.display(),
        found.root.device.display(),
        crate::console::boot_ms()
    );
    std::fs::write(BOOT_ENV, env).map_err(|e| format!("writing {BOOT_ENV}: {e}"))?;
    mounts::switch_root(SYSROOT, crate::STAGE2_PATH)
}

fn parse_root_hash(cmdline: &str) -> Result<[u8; 32], String> {
    let hex_hash = cmdline::value(cmdline, cmdline::USR_HASH).ok_or("the kernel command line has no usrhash=")?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut h).map_err(|_| format!("usrhash={hex_hash} is not 64 hex digits"))?;
    Ok(h)
}

/// Loads the drivers of the devices that appear (a bus driver makes more devices; SCSI disks
/// are found asynchronously) until the `/usr` partition is there.
fn wait_for_partitions(root_hash: &[u8; 32], coldplug: &mut modules::Coldplug) -> Result<disks::Found, String> {
    let start = Instant::now();
    loop {
        let (loaded, errors) = coldplug.step();
        for e in errors {
            say!("stage 1: {e}");
        }
        if !loaded.is_empty() {
            say!("stage 1: drivers for the devices present: {}", loaded.join(" "));
        }
        if let Some(found) = disks::find_boot_partitions(root_hash)? {
            return Ok(found);
        }
        if start.elapsed() > DISK_DEADLINE {
            return Err(format!(
                "no /usr partition with UUID {} after {}s (disks: {:?})",
                cairn_release::gpt::usr_partition_uuid(root_hash),
                DISK_DEADLINE.as_secs(),
                disks::whole_disks()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Salt and size come from the superblock on disk; the root hash from the command line. A
/// forged superblock cannot help: the tree it describes would not hash to the root.
fn read_verity_params(dev: &Path, root_hash: [u8; 32], hash_offset: u64) -> Result<VerityParams, String> {
    let mut f = std::fs::File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let mut block = vec![0u8; verity::BLOCK_SIZE];
    f.seek(SeekFrom::Start(hash_offset))
        .and_then(|_| f.read_exact(&mut block))
        .map_err(|e| format!("reading the verity superblock of {}: {e}", dev.display()))?;
    let sb = verity::Superblock::parse(&block).map_err(|e| format!("{}: {e}", dev.display()))?;
    if sb.data_blocks * verity::BLOCK_SIZE as u64 > hash_offset {
        return Err(format!("{}: verity data ({} blocks) overlaps the hash area", dev.display(), sb.data_blocks));
    }
    Ok(VerityParams { root_hash, salt: sb.salt, data_blocks: sb.data_blocks, hash_offset })
}

fn check_readable(path: &str) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    std::io::copy(&mut f, &mut std::io::sink()).map_err(|e| format!("reading {path} from /usr: {e}"))?;
    Ok(())
}
