//! Finding Cairn's partitions: whole disks from sysfs, their GPTs read directly (no udev, no
//! blkid), partition device nodes matched through sysfs `partition` numbers.

use cairn_release::gpt::{self, Guid, Slot};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Partition {
    pub device: PathBuf,
    pub label: String,
    pub type_guid: Guid,
    pub uuid: Guid,
}

/// Whole block devices (`vda`, `nvme0n1`), skipping partitions, loop, ram and dm devices.
pub fn whole_disks() -> Vec<String> {
    let mut disks: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !Path::new("/sys/class/block").join(n).join("partition").exists())
                .filter(|n| !["loop", "ram", "dm-", "sr", "zram"].iter().any(|p| n.starts_with(p)))
                .collect()
        })
        .unwrap_or_default();
    disks.sort();
    disks
}

/// The node of partition `number` of `disk`, if the kernel has created it.
fn partition_node(disk: &str, number: u32) -> Option<PathBuf> {
    let dir = Path::new("/sys/class/block").join(disk);
    for e in std::fs::read_dir(&dir).ok()?.filter_map(|e| e.ok()) {
        let p = e.path().join("partition");
        if let Ok(n) = std::fs::read_to_string(&p)
            && n.trim().parse::<u32>().ok() == Some(number)
        {
            let node = Path::new("/dev").join(e.file_name());
            return node.exists().then_some(node);
        }
    }
    None
}

/// Every GPT partition of `disk` whose node exists.
pub fn partitions(disk: &str) -> Result<Vec<Partition>, String> {
    let dev = Path::new("/dev").join(disk);
    let mut f = std::fs::File::open(&dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let table = gptman::GPT::find_from(&mut f).map_err(|e| format!("reading the GPT of {}: {e}", dev.display()))?;
    let mut out = Vec::new();
    for (number, entry) in table.iter() {
        if !entry.is_used() {
            continue;
        }
        if let Some(device) = partition_node(disk, number) {
            out.push(Partition {
                device,
                label: entry.partition_name.as_str().to_string(),
                type_guid: Guid::from_gpt_bytes(entry.partition_type_guid),
                uuid: Guid::from_gpt_bytes(entry.unique_partition_guid),
            });
        }
    }
    Ok(out)
}

/// The `/usr` partition holding the image with this root hash, its slot, and the ROOT
/// partition of the same disk.
pub struct Found {
    pub usr: Partition,
    pub slot: Slot,
    pub root: Partition,
}

pub fn find_boot_partitions(root_hash: &[u8; 32]) -> Result<Option<Found>, String> {
    let want = gpt::usr_partition_uuid(root_hash);
    for disk in whole_disks() {
        let Ok(parts) = partitions(&disk) else { continue };
        let Some(usr) = parts.iter().find(|p| p.uuid == want && p.type_guid == gpt::TYPE_USR_X86_64) else {
            continue;
        };
        let slot = Slot::from_label(&usr.label).ok_or_else(|| {
            format!("/usr partition {} is labelled {:?}, not USR-A or USR-B", usr.device.display(), usr.label)
        })?;
        let root = parts
            .iter()
            .find(|p| p.label == gpt::LABEL_ROOT)
            .ok_or_else(|| format!("disk {disk} has the /usr partition but no partition labelled ROOT"))?;
        return Ok(Some(Found { usr: usr.clone(), slot, root: root.clone() }));
    }
    Ok(None)
}
