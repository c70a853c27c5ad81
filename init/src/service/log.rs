//! Service output: each service's stdout and stderr share a pipe that init drains into
//! `/var/log/cairn/<service>.log`, renamed to `.log.1` when it passes the size limit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub const LOG_DIR: &str = "/var/log/cairn";

pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl LogFile {
    pub fn new(dir: &Path, service: &str, max: u64) -> LogFile {
        let path = dir.join(format!("{service}.log"));
        let mut lf = LogFile { path, file: None, size: 0, max };
        lf.reopen();
        lf
    }

    fn reopen(&mut self) {
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        self.size = self.file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.size + bytes.len() as u64 > self.max && self.size > 0 {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            self.reopen();
        }
        if let Some(f) = &mut self.file
            && f.write_all(bytes).is_ok()
        {
            self.size += bytes.len() as u64;
        }
    }

    /// A line written by init itself (start, exit), marked so it stands out from the output.
    pub fn note(&mut self, msg: &str) {
        self.write(format!("-- cairn-init [{} ms]: {msg}\n", crate::console::boot_ms()).as_bytes());
    }
}

/// Reads what is available on a non-blocking pipe into the log. Returns false at end of file.
pub fn drain(pipe: &OwnedFd, log: &mut LogFile) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(pipe), &mut buf) {
            Ok(0) => return false,
            Ok(n) => log.write(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The last `lines` lines of a log file (and its rotated predecessor if needed).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = read_tail(path, 256 * 1024);
    if text.lines().count() < lines {
        text = read_tail(&path.with_extension("log.1"), 256 * 1024) + &text;
    }
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_tails_across_files() {
        let dir = std::env::temp_dir().join(format!("cairn-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = LogFile::new(&dir, "svc", 4096);
        for i in 0..600 {
            log.write(format!("line {i:04}\n").as_bytes());
        }
        let cur = std::fs::metadata(dir.join("svc.log")).unwrap().len();
        let old = std::fs::metadata(dir.join("svc.log.1")).unwrap().len();
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        let t = tail(&dir.join("svc.log"), 3);
        assert_eq!(t, "line 0597\nline 0598\nline 0599\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
