//! The initramfs: `cairn-init` as `/init`, the kernel modules stage 1 loads (with the order to
//! load them in), and the few nodes the kernel needs before devtmpfs is mounted. A newc cpio
//! archive with fixed owners, times and inode numbers, so the same inputs give the same bytes.

use anyhow::{Context, Result};
use std::io::Write;

/// Where stage 1 finds the list of modules to load, one path per line, in order.
pub const MODULES_LOAD: &str = "etc/cairn/modules.load";

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    CharDev { major: u32, minor: u32 },
    Symlink(String),
}

pub struct Initramfs {
    entries: std::collections::BTreeMap<String, Entry>,
    mtime: u32,
}

impl Initramfs {
    pub fn new(mtime: u64) -> Initramfs {
        let mut i = Initramfs { entries: Default::default(), mtime: mtime.min(u32::MAX as u64) as u32 };
        for d in ["dev", "proc", "sys", "run", "sysroot", "etc", "tmp"] {
            i.dir(d);
        }
        // The kernel opens /dev/console for init's stdio before anything is mounted.
        i.entries.insert("dev/console".into(), Entry::CharDev { major: 5, minor: 1 });
        i.entries.insert("dev/null".into(), Entry::CharDev { major: 1, minor: 3 });
        i
    }

    /// Adds a directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let mut acc = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries.entry(acc.clone()).or_insert(Entry::Dir);
        }
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path.to_string(), Entry::File { data, mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    /// The archive, entries in path order (parents before children).
    pub fn to_cpio(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let b = cpio::newc::Builder::new(path).ino(ino as u32 + 1).uid(0).gid(0).mtime(self.mtime);
            let (b, data): (_, &[u8]) = match entry {
                Entry::Dir => (b.mode(0o040755).nlink(2), &[]),
                Entry::File { data, mode } => (b.mode(0o100000 | mode).nlink(1), data),
                Entry::CharDev { major, minor } => {
                    (b.mode(0o020600).nlink(1).rdev_major(*major).rdev_minor(*minor), &[])
                }
                Entry::Symlink(t) => (b.mode(0o120777).nlink(1), t.as_bytes()),
            };
            let mut w = b.write(&mut out, data.len() as u32);
            w.write_all(data).with_context(|| format!("archiving {path}"))?;
            w.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_deterministic_and_lists_parents_first() {
        let build = || {
            let mut i = Initramfs::new(1_700_000_000);
            i.file("lib/modules/6.1/kernel/b.ko", vec![2; 10], 0o644);
            i.file("init", vec![1; 100], 0o755);
            i.to_cpio().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        let text = String::from_utf8_lossy(&a);
        let lib = text.find("lib\0").unwrap();
        let ko = text.find("lib/modules/6.1/kernel/b.ko").unwrap();
        assert!(lib < ko);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("dev/console"));
    }
}
