//! The partition a release's `/usr` is written to: a block device, or a window of a disk image
//! in tests. Written front to back, it is handed to the disk as it is written rather than all at
//! the final sync, so that the disk works while the CPU decodes and hashes what comes next.

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// How much is written before it is handed to the disk.
const WRITEBACK: u64 = 8 << 20;

pub struct Partition {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
    /// Where the bytes not yet handed to the disk begin.
    unsent: u64,
}

impl Partition {
    /// The `len` bytes of `path` from `start`.
    pub fn open(path: &Path, start: u64, len: u64) -> std::io::Result<Partition> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Partition { file, start, len, pos: 0, unsent: 0 })
    }

    /// Starts writing `unsent..pos` out, without waiting. `POSIX_FADV_DONTNEED` does this on
    /// Linux (and drops the pages once clean, so a 150 MB image does not push the host's useful
    /// pages out of the cache); the final `flush` waits for it all.
    fn send(&mut self) {
        let (from, len) = (self.start + self.unsent, self.pos.saturating_sub(self.unsent));
        if let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) {
            // Only advice: what it does not start, the sync does.
            let _ = posix_fadvise(self.file.as_raw_fd(), from, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
        self.unsent = self.pos;
    }
}

impl Write for Partition {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::other("write past the end of the partition"));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        if self.pos.saturating_sub(self.unsent) >= WRITEBACK {
            self.send();
        }
        Ok(n)
    }

    /// Everything written is on the disk.
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Partition {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::End(o) => self.len.saturating_add_signed(o),
            SeekFrom::Current(o) => self.pos.saturating_add_signed(o),
        };
        self.unsent = self.pos;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_land_inside_the_window_and_never_past_it() {
        let t = tempfile::tempdir().unwrap();
        let disk = t.path().join("disk.img");
        std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
        let mut p = Partition::open(&disk, 1 << 20, 40 << 20).unwrap();
        let data: Vec<u8> = (0..(20 << 20)).map(|i: u32| (i % 251) as u8).collect();
        p.write_all(&data).unwrap();
        p.write_all(&data).unwrap();
        assert!(p.write_all(b"one byte too many").is_err());
        p.flush().unwrap();
        let on_disk = std::fs::read(&disk).unwrap();
        assert!(on_disk[..1 << 20].iter().all(|b| *b == 0), "before the window");
        assert!(on_disk[1 << 20..(21 << 20)] == data[..] && on_disk[21 << 20..(41 << 20)] == data[..]);
        assert!(on_disk[41 << 20..].iter().all(|b| *b == 0), "after the window");
    }
}
