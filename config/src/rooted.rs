//! File system access under a root that nobody can turn elsewhere. Cloud-config apply runs as
//! root and writes into directories users own (`~/.ssh`), so every path is resolved beneath
//! the root's directory descriptor with no symbolic link followed (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), new files are created exclusively under a fresh
//! name, owner and mode are set on the open file, and renames happen inside a held directory.
//! A link a user planted makes the write fail with a clear error; it is never followed.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The root every path is resolved beneath (`/` on a host, a scratch directory in tests).
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

/// An open directory under the root, and the path it was reached by (for messages).
#[derive(Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    pub path: String,
}

/// An existing regular file: its contents and metadata.
pub struct Existing {
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// An error naming the path, and saying so plainly when a link was refused.
fn with_path(path: &str) -> impl FnOnce(rustix::io::Errno) -> io::Error + '_ {
    move |errno| {
        let why = match errno {
            rustix::io::Errno::LOOP => "a symbolic link is in the way; refusing to follow it".to_string(),
            rustix::io::Errno::XDEV => "leads outside the root; refusing to follow it".to_string(),
            other => io::Error::from(other).to_string(),
        };
        io::Error::new(io::Error::from(errno).kind(), format!("{path}: {why}"))
    }
}

/// `a/b/c` from `/a/b/c`; `..` and `.` are refused before any I/O.
fn relative(path: &str) -> io::Result<&str> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: contains \".\" or \"..\"")));
    }
    Ok(rel)
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display())))?;
        Ok(Root { dir, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_beneath(&self, rel: &str, flags: OFlags, mode: Mode) -> rustix::io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        // No O_NOFOLLOW: RESOLVE_NO_SYMLINKS refuses a final link too, and says so (ELOOP),
        // where O_NOFOLLOW with O_DIRECTORY would only say "not a directory".
        rustix::fs::openat2(&self.dir, rel, flags | OFlags::CLOEXEC, mode, RESOLVE)
    }

    /// The directory at `path`, if it exists (`None` when it does not).
    pub fn dir(&self, path: &str) -> io::Result<Option<Dir>> {
        let rel = relative(path)?;
        match self.open_beneath(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir { fd: Arc::new(fd), path: path.to_string() })),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(with_path(path)(e)),
        }
    }

    /// The directory at `path`, creating missing ones (root's, `mode`) one component at a
    /// time, each reached through the one before it.
    pub fn create_dirs(&self, path: &str, mode: u32) -> io::Result<Dir> {
        let rel = relative(path)?;
        let top = self.open_beneath("", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).map_err(with_path("/"))?;
        let mut dir = Dir { fd: Arc::new(top), path: "/".into() };
        for name in rel.split('/').filter(|c| !c.is_empty()) {
            dir = dir.create_dir(name, mode)?.0;
        }
        Ok(Dir { path: path.to_string(), ..dir })
    }

    /// A regular file's contents and metadata; `None` when nothing is there. Anything else
    /// there (a link, a FIFO, a directory) reads as "not this file", so it gets replaced.
    pub fn read(&self, path: &str) -> io::Result<Option<Existing>> {
        read_file(self.open_beneath(relative(path)?, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty()), path)
    }

    /// `read`, as text; empty when missing or unreadable as text.
    pub fn read_text(&self, path: &str) -> String {
        match self.read(path) {
            Ok(Some(e)) => String::from_utf8(e.content).unwrap_or_default(),
            _ => String::new(),
        }
    }
}

fn read_file(opened: rustix::io::Result<OwnedFd>, path: &str) -> io::Result<Option<Existing>> {
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::NXIO) => return Ok(None),
        Err(e) => return Err(with_path(path)(e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(with_path(path))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    let mut content = Vec::with_capacity(stat.st_size as usize);
    std::fs::File::from(fd).read_to_end(&mut content).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    Ok(Some(Existing { content, mode: stat.st_mode & 0o7777, uid: stat.st_uid, gid: stat.st_gid }))
}

impl Dir {
    fn child(&self, name: &str) -> String {
        format!("{}/{name}", self.path.trim_end_matches('/'))
    }

    /// The subdirectory `name`, created with `mode` when missing; `true` when it was created.
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<(Dir, bool)> {
        let path = self.child(name);
        let created = match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(with_path(&path)(e)),
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat2(&*self.fd, name, flags, Mode::empty(), RESOLVE).map_err(with_path(&path))?;
        Ok((Dir { fd: Arc::new(fd), path }, created))
    }

    /// Sets owner, then mode (chown clears set-id bits), on the open directory.
    pub fn set_owner_and_mode(&self, uid: u32, gid: u32, mode: u32, chown: bool) -> io::Result<()> {
        if chown {
            rustix::fs::fchown(&*self.fd, Some(uid_of(uid)), Some(gid_of(gid))).map_err(with_path(&self.path))?;
        }
        rustix::fs::fchmod(&*self.fd, Mode::from_raw_mode(mode)).map_err(with_path(&self.path))
    }

    /// Writes `content` to a new file in this directory under a fresh name, created
    /// exclusively (a planted name fails, and another is tried), owner and mode set on the
    /// open file. `rename` then puts it in place.
    pub fn create_temp(&self, content: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<Temp> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut attempt = 0;
        let (fd, name) = loop {
            let name = format!(".cairn-tmp.{:016x}", fresh());
            match rustix::fs::openat2(&*self.fd, name.as_str(), flags, Mode::from_raw_mode(0o600), RESOLVE) {
                Ok(fd) => break (fd, name),
                Err(rustix::io::Errno::EXIST) if attempt < 16 => attempt += 1,
                Err(e) => return Err(with_path(&self.child(&name))(e)),
            }
        };
        let temp = Temp { dir: self.clone(), name };
        let what = temp.dir.child(&temp.name);
        let mut file = std::fs::File::from(fd);
        file.write_all(content).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&file, Some(uid_of(uid)), Some(gid_of(gid))).map_err(with_path(&what))?;
        }
        // After chown (which clears set-id bits), and exact: no umask.
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(with_path(&what))?;
        Ok(temp)
    }

    /// The names of the entries in this directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let fd =
            rustix::fs::openat(&*self.fd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(with_path(&self.path))?;
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd).map_err(with_path(&self.path))? {
            let entry = entry.map_err(with_path(&self.path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The regular file `name` in this directory, like `Root::read`.
    pub fn read(&self, name: &str) -> io::Result<Option<Existing>> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        read_file(rustix::fs::openat2(&*self.fd, name, flags, Mode::empty(), RESOLVE), &self.child(name))
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()).map_err(with_path(&self.child(name)))
    }

    /// Makes everything written to this directory's file system durable (one `syncfs`).
    pub fn sync_fs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&*self.fd).map_err(with_path(&self.path))
    }

    /// The file system this directory is on.
    pub fn device(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&*self.fd).map_err(with_path(&self.path))?.st_dev)
    }
}

/// A file created by `Dir::create_temp`, removed when dropped unless renamed into place.
pub struct Temp {
    dir: Dir,
    name: String,
}

impl Temp {
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Replaces the directory entry `name` with this file, inside the held directory: a link
    /// at `name` is replaced, never followed.
    pub fn rename(mut self, name: &str) -> io::Result<()> {
        let what = self.dir.child(name);
        rustix::fs::renameat(&*self.dir.fd, self.name.as_str(), &*self.dir.fd, name).map_err(with_path(&what))?;
        self.name.clear();
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = rustix::fs::unlinkat(&*self.dir.fd, self.name.as_str(), AtFlags::empty());
        }
    }
}

fn uid_of(uid: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

/// A name nobody can guess ahead: the standard library's per-process random hash keys over a
/// counter. Guessing only makes a creation fail and retry; it never redirects one.
fn fresh() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
