//! A container's output as containerd's CRI writes it (one record per line:
//! `TIME STREAM TAG MESSAGE`, where TAG `P` is part of a longer line and `F` ends one), followed
//! by the runner and written to its own stdout and stderr, which init keeps as the service's log
//! (`cairnctl log container-NAME`, bounded). The file is on tmpfs and is emptied once it is read
//! past `TRUNCATE_AT`: containerd appends, so its next record lands at the new start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// A followed log file is emptied once this much of it has been forwarded.
pub const TRUNCATE_AT: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One record: its stream, its text, and whether it ends a line.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub stream: Stream,
    pub text: &'a str,
    pub ends_line: bool,
}

/// Reads one line of a CRI log (without its newline); `None` for a line in no known form.
pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let _time = parts.next()?;
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let ends_line = match parts.next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    Some(Record { stream, text: parts.next().unwrap_or(""), ends_line })
}

/// Follows one container's log file from its start.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    /// A record read only in part (containerd was writing it).
    pending: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf) -> Follower {
        Follower { path, file: None, offset: 0, pending: Vec::new() }
    }

    /// Writes every whole record written since the last call to `out`/`err`.
    pub fn forward(&mut self, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<()> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                // containerd has not created it yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let file = self.file.as_mut().expect("opened above");
        if file.metadata()?.len() < self.offset {
            // Emptied (by an earlier call): read from its start again.
            self.offset = 0;
            self.pending.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.pending.extend_from_slice(&fresh);
        let whole = self.pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in self.pending[..whole].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = String::from_utf8_lossy(line);
            let Some(r) = parse(&line) else { continue };
            let sink: &mut dyn Write = if r.stream == Stream::Stdout { &mut *out } else { &mut *err };
            sink.write_all(r.text.as_bytes())?;
            if r.ends_line {
                sink.write_all(b"\n")?;
            }
        }
        self.pending.drain(..whole);
        out.flush()?;
        err.flush()?;
        if self.offset >= TRUNCATE_AT && self.pending.is_empty() {
            // Opened read-only: truncate through the path. A record written between the read
            // above and this is lost, a small price for a bounded tmpfs.
            std::fs::OpenOptions::new().write(true).open(&self.path)?.set_len(0)?;
            self.offset = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_by_stream_and_tag() {
        let r = parse("2024-01-01T00:00:00.000000001Z stdout F hello world").unwrap();
        assert_eq!(r, Record { stream: Stream::Stdout, text: "hello world", ends_line: true });
        let r = parse("2024-01-01T00:00:00Z stderr P part").unwrap();
        assert_eq!((r.stream, r.text, r.ends_line), (Stream::Stderr, "part", false));
        assert_eq!(parse("2024-01-01T00:00:00Z stdout F ").unwrap().text, "");
        assert!(parse("garbage").is_none());
        assert!(parse("t stdin F x").is_none());
    }

    #[test]
    fn whole_records_are_forwarded_once_and_a_big_file_is_emptied() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("container.log");
        let mut f = Follower::new(path.clone());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        f.forward(&mut out, &mut err).unwrap();
        assert!(out.is_empty(), "no file yet is no output");
        std::fs::write(&path, "t stdout F one\nt stderr F oops\nt stdout P tw").unwrap();
        f.forward(&mut out, &mut err).unwrap();
        assert_eq!((out.as_slice(), err.as_slice()), (&b"one\n"[..], &b"oops\n"[..]));
        let mut append = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        append.write_all(b"o\nt stdout F three\n").unwrap();
        // The half record was "t stdout P tw" + "o": a part of a line, then a whole one.
        f.forward(&mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "one\ntwothree\n");
        let line = format!("t stdout F {}\n", "x".repeat(1000));
        for _ in 0..(TRUNCATE_AT / 1000 + 1) {
            append.write_all(line.as_bytes()).unwrap();
        }
        f.forward(&mut out, &mut err).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied once forwarded");
        append.write_all(b"t stdout F after\n").unwrap();
        out.clear();
        f.forward(&mut out, &mut err).unwrap();
        assert_eq!(out, b"after\n");
    }
}
