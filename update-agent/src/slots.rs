//! The A/B slots on the disk: which `/usr` partition is running, which is the other, and
//! binding a partition to a release by setting its GPT UUID to the first 128 bits of the
//! release's verity root hash (how stage 1 finds it). The running slot is never touched.

use cairn_release::gpt::{self, Guid, Slot};
use std::io::{Read, Seek, Write};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("reading the GPT: {0}")]
    Gpt(String),
    #[error("no /usr partition labelled {0}")]
    Missing(&'static str),
    #[error("refusing to touch the running slot {0:?}")]
    Running(Slot),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsrPartition {
    pub number: u32,
    pub slot: Slot,
    pub uuid: Guid,
    pub offset: u64,
    pub size: u64,
}

/// Both `/usr` partitions of a disk, by label.
pub fn usr_partitions<D: Read + Seek>(disk: &mut D) -> Result<Vec<UsrPartition>, SlotError> {
    let table = gptman::GPT::find_from(disk).map_err(|e| SlotError::Gpt(e.to_string()))?;
    let sector = table.sector_size;
    Ok(table
        .iter()
        .filter(|(_, e)| e.is_used() && Guid::from_gpt_bytes(e.partition_type_guid) == gpt::TYPE_USR_X86_64)
        .filter_map(|(n, e)| {
            Some(UsrPartition {
                number: n,
                slot: Slot::from_label(e.partition_name.as_str())?,
                uuid: Guid::from_gpt_bytes(e.unique_partition_guid),
                offset: e.starting_lba * sector,
                size: (e.ending_lba - e.starting_lba + 1) * sector,
            })
        })
        .collect())
}

/// The partition of `slot`.
pub fn find<D: Read + Seek>(disk: &mut D, slot: Slot) -> Result<UsrPartition, SlotError> {
    usr_partitions(disk)?.into_iter().find(|p| p.slot == slot).ok_or(SlotError::Missing(slot.label()))
}

/// Sets the UUID of the `/usr` partition of `target` (never the running slot) so that stage 1
/// finds it by `root_hash`. Both GPT headers are rewritten with their checksums; the partition
/// content is untouched. On a device, the caller fsyncs it: `flush` alone does not.
pub fn bind<D: Read + Write + Seek>(
    disk: &mut D,
    target: Slot,
    running: Slot,
    root_hash: &[u8; 32],
) -> Result<Guid, SlotError> {
    if target == running {
        return Err(SlotError::Running(running));
    }
    let mut table = gptman::GPT::find_from(disk).map_err(|e| SlotError::Gpt(e.to_string()))?;
    let part = find(disk, target)?;
    let uuid = gpt::usr_partition_uuid(root_hash);
    // Another partition with this UUID (the running slot, when re-installing the running
    // release) would make the boot ambiguous.
    if table
        .iter()
        .any(|(n, e)| n != part.number && e.is_used() && Guid::from_gpt_bytes(e.unique_partition_guid) == uuid)
    {
        return Err(SlotError::Running(running));
    }
    table[part.number].unique_partition_guid = uuid.to_gpt_bytes();
    table.write_into(disk).map_err(|e| SlotError::Gpt(e.to_string()))?;
    disk.flush().map_err(|e| SlotError::Gpt(e.to_string()))?;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A 64 MiB disk with USR-A (2) and USR-B (3).
    fn disk() -> Cursor<Vec<u8>> {
        let mut d = Cursor::new(vec![0u8; 64 << 20]);
        let mut t = gptman::GPT::new_from(&mut d, 512, [1; 16]).unwrap();
        for (n, label, start, uuid) in [(2u32, "USR-A", 2048u64, [2u8; 16]), (3, "USR-B", 43008, [3; 16])] {
            t[n] = gptman::GPTPartitionEntry {
                partition_type_guid: gpt::TYPE_USR_X86_64.to_gpt_bytes(),
                unique_partition_guid: uuid,
                starting_lba: start,
                ending_lba: start + 40959,
                attribute_bits: 0,
                partition_name: label.into(),
            };
        }
        t.write_into(&mut d).unwrap();
        d
    }

    #[test]
    fn binds_the_other_slot_and_stage_1_would_find_it() {
        let mut d = disk();
        let root = [0xabu8; 32];
        let uuid = bind(&mut d, Slot::B, Slot::A, &root).unwrap();
        assert_eq!(uuid, gpt::usr_partition_uuid(&root));
        let b = find(&mut d, Slot::B).unwrap();
        assert_eq!(b.uuid, uuid);
        assert_eq!(b.offset, 43008 * 512);
        // The running slot is unchanged, and both headers verify (find_from checks CRCs).
        assert_eq!(find(&mut d, Slot::A).unwrap().uuid, Guid::from_gpt_bytes([2; 16]));
        // The backup header carries the change too: wipe the primary and read again.
        d.get_mut()[512..1024].fill(0);
        assert_eq!(find(&mut d, Slot::B).unwrap().uuid, uuid);
    }

    #[test]
    fn the_running_slot_is_never_bound() {
        let mut d = disk();
        assert_eq!(bind(&mut d, Slot::A, Slot::A, &[1; 32]), Err(SlotError::Running(Slot::A)));
        // Nor may the other slot take the running slot's identity.
        let running_uuid_hash = {
            let mut h = [0u8; 32];
            h[..16].copy_from_slice(&Guid::from_gpt_bytes([2; 16]).0);
            h
        };
        assert_eq!(bind(&mut d, Slot::B, Slot::A, &running_uuid_hash), Err(SlotError::Running(Slot::A)));
    }
}
