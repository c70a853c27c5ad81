//! GPT disk assembly: partition images copied (sparsely) into place, a protective MBR, primary
//! and backup GPT headers. Every GUID is given by the caller, derived from the build inputs.

use anyhow::{Context, Result, bail};
use cairn_release::gpt::Guid;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionSpec {
    /// GPT entry number (1-based).
    pub number: u32,
    pub label: String,
    #[serde(serialize_with = "guid_str")]
    pub type_guid: Guid,
    #[serde(serialize_with = "guid_str")]
    pub uuid: Guid,
    pub size_bytes: u64,
    /// Filled in by [`layout`].
    pub offset_bytes: u64,
    /// Content written at the start of the partition (the rest stays zero).
    #[serde(skip)]
    pub content: Option<PathBuf>,
}

fn guid_str<S: serde::Serializer>(g: &Guid, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&g.to_string())
}

/// Places partitions one after another from 1 MiB, each MiB-aligned, and returns the disk size
/// (with 1 MiB at the end for the backup GPT).
pub fn layout(parts: &mut [PartitionSpec]) -> Result<u64> {
    let mut offset = MIB;
    for p in parts.iter_mut() {
        if p.size_bytes == 0 || p.size_bytes % MIB != 0 {
            bail!("partition {} size must be a positive number of MiB", p.label);
        }
        p.offset_bytes = offset;
        offset += p.size_bytes;
    }
    Ok(offset + MIB)
}

pub fn write(out: &Path, disk_guid: Guid, size: u64, parts: &[PartitionSpec]) -> Result<()> {
    let tmp = out.with_extension("raw.tmp");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.set_len(size)?;
    for p in parts {
        if let Some(src) = &p.content {
            let len = std::fs::metadata(src)?.len();
            if len > p.size_bytes {
                bail!("{} holds {len} bytes, more than partition {} ({} bytes)", src.display(), p.label, p.size_bytes);
            }
            copy_sparse(src, &mut f, p.offset_bytes).with_context(|| format!("writing partition {}", p.label))?;
        }
    }
    let mut gpt = gptman::GPT::new_from(&mut f, SECTOR, disk_guid.to_gpt_bytes()).context("creating the GPT")?;
    for p in parts {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid.to_gpt_bytes(),
            unique_partition_guid: p.uuid.to_gpt_bytes(),
            starting_lba: p.offset_bytes / SECTOR,
            ending_lba: (p.offset_bytes + p.size_bytes) / SECTOR - 1,
            attribute_bits: 0,
            partition_name: p.label.as_str().into(),
        };
    }
    gpt.write_into(&mut f).context("writing the GPT")?;
    gptman::GPT::write_protective_mbr_into(&mut f, SECTOR).context("writing the protective MBR")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// Copies `src` into `dst` at `offset`, seeking over all-zero chunks so the disk stays sparse.
pub fn copy_sparse(src: &Path, dst: &mut std::fs::File, offset: u64) -> Result<()> {
    let mut input = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_release::gpt::{TYPE_ESP, TYPE_LINUX_DATA};

    #[test]
    fn layout_is_mib_aligned_and_gpt_reads_back() {
        let t = tempfile::tempdir().unwrap();
        let content = t.path().join("p1");
        std::fs::write(&content, b"hello").unwrap();
        let mut parts = vec![
            PartitionSpec {
                number: 1,
                label: "EFI-SYSTEM".into(),
                type_guid: TYPE_ESP,
                uuid: Guid([1; 16]),
                size_bytes: 2 * MIB,
                offset_bytes: 0,
                content: Some(content),
            },
            PartitionSpec {
                number: 5,
                label: "ROOT".into(),
                type_guid: TYPE_LINUX_DATA,
                uuid: Guid([5; 16]),
                size_bytes: MIB,
                offset_bytes: 0,
                content: None,
            },
        ];
        let size = layout(&mut parts).unwrap();
        assert_eq!(size, 5 * MIB);
        assert_eq!(parts[1].offset_bytes, 3 * MIB);
        let disk = t.path().join("disk.raw");
        write(&disk, Guid([9; 16]), size, &parts).unwrap();

        let mut f = std::fs::File::open(&disk).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        assert_eq!(Guid::from_gpt_bytes(gpt.header.disk_guid), Guid([9; 16]));
        assert_eq!(gpt[5].partition_name.as_str(), "ROOT");
        assert_eq!(Guid::from_gpt_bytes(gpt[1].partition_type_guid), TYPE_ESP);
        assert_eq!(gpt[1].starting_lba, 2048);
        let mut b = [0u8; 5];
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
    }

    #[test]
    fn oversized_content_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let content = t.path().join("big");
        std::fs::write(&content, vec![1u8; (MIB + 1) as usize]).unwrap();
        let mut parts = vec![PartitionSpec {
            number: 1,
            label: "USR-A".into(),
            type_guid: TYPE_LINUX_DATA,
            uuid: Guid([1; 16]),
            size_bytes: MIB,
            offset_bytes: 0,
            content: Some(content),
        }];
        let size = layout(&mut parts).unwrap();
        let err = write(&t.path().join("d"), Guid([0; 16]), size, &parts).unwrap_err().to_string();
        assert!(err.contains("USR-A"), "{err}");
    }
}
