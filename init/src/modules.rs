//! Loading kernel modules with finit_module: from an ordered list (stage 1), by name with
//! their dependencies from `modules.dep` (stage 2), and for the devices present: each device's
//! `modalias` matched against `modules.alias`, as udev does (both stages).

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::path::{Path, PathBuf};

pub fn load_file(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("opening module {}: {e}", path.display()))?;
    match nix::kmod::finit_module(&f, &CString::default(), nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("loading module {}: {e}", path.display())),
    }
}

/// Loads every module listed (one absolute path per line) in order.
pub fn load_list(list: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(list).map_err(|e| format!("reading {}: {e}", list.display()))?;
    let mut n = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        load_file(Path::new(line))?;
        n += 1;
    }
    Ok(n)
}

/// Loads modules by name from `dir` (`/usr/lib/modules/<release>`), dependencies first.
pub fn load_by_name(dir: &Path, names: &[&str]) -> Result<(), String> {
    let dep_file = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file).map_err(|e| format!("reading {}: {e}", dep_file.display()))?;
    let deps = parse_modules_dep(&text);
    for name in names {
        let key = name.replace('-', "_");
        if is_loaded(&key) {
            // Loading again would still make the kernel read and check the whole file.
            continue;
        }
        let Some((path, dependencies)) = deps.get(&key) else {
            return Err(format!("no module {name} in {}", dep_file.display()));
        };
        // modules.dep lists the module to load first last.
        for d in dependencies.iter().rev() {
            load_file(&dir.join(d))?;
        }
        load_file(&dir.join(path))?;
    }
    Ok(())
}

fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).join("initstate").exists()
}

/// name -> (path, dependency paths) from depmod's format.
pub fn parse_modules_dep(text: &str) -> HashMap<String, (PathBuf, Vec<PathBuf>)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            let name = Path::new(m).file_stem().map(|s| s.to_string_lossy().replace('-', "_")).unwrap_or_default();
            (name, (PathBuf::from(m), deps.split_whitespace().map(PathBuf::from).collect()))
        })
        .collect()
}

/// `modules.alias` (depmod's format: `alias PATTERN MODULE`), by the bus before the pattern's
/// first `:`, so a device is matched against its own bus's patterns only.
#[derive(Debug, Default)]
pub struct Aliases {
    by_bus: HashMap<String, Vec<(String, String)>>,
}

impl Aliases {
    pub fn parse(text: &str) -> Aliases {
        let mut a = Aliases::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) = (w.next(), w.next(), w.next())
                && let Some((bus, _)) = pattern.split_once(':')
            {
                a.by_bus.entry(bus.to_string()).or_default().push((pattern.to_string(), module.to_string()));
            }
        }
        a
    }

    /// The modules whose patterns match `modalias` (`virtio:d00000001v00001AF4`).
    pub fn matching(&self, modalias: &str) -> Vec<&str> {
        let Some((bus, _)) = modalias.split_once(':') else { return Vec::new() };
        let patterns = self.by_bus.get(bus).map(Vec::as_slice).unwrap_or_default();
        let mut out: Vec<&str> =
            patterns.iter().filter(|(p, _)| glob(p.as_bytes(), modalias.as_bytes())).map(|(_, m)| m.as_str()).collect();
        out.dedup();
        out
    }
}

/// fnmatch(3) without flags: `*`, `?` and `[...]` (ranges, `!` or `^` to negate), as
/// modules.alias patterns use them.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: its pattern index and the text it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(&pattern[p..], text[t]).map(|(ok, len)| ok.then_some(p + len)).unwrap_or(
                // An unterminated `[` is a literal.
                (text[t] == b'[').then_some(p + 1),
            ),
            Some(c) => (*c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// A bracket expression at the start of `pattern` against `c`: (matches, its length), or
/// `None` if it never closes.
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while let Some(&b) = pattern.get(i) {
        if b == b']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|e| *e != b']') {
            found |= (b..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            found |= b == c;
            i += 1;
        }
    }
    None
}

/// The `modalias` of every device on `buses` (all buses when `None`) under `sys_bus`
/// (`/sys/bus`), sorted.
pub fn device_modaliases(sys_bus: &Path, buses: Option<&[&str]>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(rd) = std::fs::read_dir(sys_bus) else { return out };
    for bus in rd.flatten() {
        let name = bus.file_name().to_string_lossy().into_owned();
        if buses.is_some_and(|b| !b.contains(&name.as_str())) {
            continue;
        }
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else { continue };
        for d in devices.flatten() {
            if let Ok(m) = std::fs::read_to_string(d.path().join("modalias")) {
                out.insert(m.trim().to_string());
            }
        }
    }
    out
}

/// Loads the drivers of devices present, as they appear: each call matches the modaliases not
/// seen before against `modules.alias` in `dir` and loads what matches (dependencies first,
/// from `modules.dep`). Loading a bus driver makes new devices, so callers call again.
pub struct Coldplug {
    dir: PathBuf,
    aliases: Aliases,
    deps: HashMap<String, (PathBuf, Vec<PathBuf>)>,
    buses: Option<&'static [&'static str]>,
    seen: BTreeSet<String>,
    tried: BTreeSet<String>,
}

impl Coldplug {
    /// `dir`: `/lib/modules/<release>` with `modules.alias` and `modules.dep`.
    pub fn new(dir: &Path, buses: Option<&'static [&'static str]>) -> Result<Coldplug, String> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))
        };
        Ok(Coldplug {
            dir: dir.to_path_buf(),
            aliases: Aliases::parse(&read("modules.alias")?),
            deps: parse_modules_dep(&read("modules.dep")?),
            buses,
            seen: BTreeSet::new(),
            tried: BTreeSet::new(),
        })
    }

    /// Loads the drivers of devices that appeared since the last call; returns the modules
    /// loaded, and the errors (a driver that fails does not stop the others).
    pub fn step(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut loaded, mut errors) = (Vec::new(), Vec::new());
        let new: Vec<String> = device_modaliases(Path::new("/sys/bus"), self.buses)
            .into_iter()
            .filter(|m| !self.seen.contains(m))
            .collect();
        for modalias in new {
            let modules: Vec<String> = self.aliases.matching(&modalias).into_iter().map(str::to_string).collect();
            self.seen.insert(modalias);
            for m in modules {
                let key = m.replace('-', "_");
                if !self.tried.insert(key.clone()) || is_loaded(&key) {
                    continue;
                }
                let Some((path, dependencies)) = self.deps.get(&key) else { continue };
                let result = dependencies
                    .iter()
                    .rev()
                    .chain(std::iter::once(path))
                    .try_for_each(|p| load_file(&self.dir.join(p)));
                match result {
                    Ok(()) => loaded.push(m),
                    Err(e) => errors.push(e),
                }
            }
        }
        (loaded, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_fnmatch_does() {
        let g = |p: &str, t: &str| glob(p.as_bytes(), t.as_bytes());
        assert!(g("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!g("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(g("pci:v00001AF4d00001000sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert!(g("pci:v00008086d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"));
        assert!(g("scsi:t-0x0[04-7]*", "scsi:t-0x05"));
        assert!(!g("scsi:t-0x0[!04-7]*", "scsi:t-0x05"));
        assert!(g("a?c", "abc") && !g("a?c", "ac"));
        assert!(g("*", "") && !g("a", ""));
        assert!(g("[", "[") && g("a*b*c", "aXXbYYc") && !g("a*b*c", "aXXbYY"));
    }

    #[test]
    fn aliases_match_by_bus() {
        let a = Aliases::parse(
            "alias virtio:d00000001v* virtio_net\nalias virtio:d00000002v* virtio_blk\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias fs-erofs erofs\n",
        );
        assert_eq!(a.matching("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert_eq!(a.matching("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), ["virtio_pci"]);
        assert!(a.matching("xen:vbd").is_empty());
        assert!(a.matching("no-bus").is_empty());
    }

    #[test]
    fn parses_depmod_format() {
        let m = parse_modules_dep("kernel/a/dm-verity.ko: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko\nkernel/b.ko:\n");
        let (p, d) = &m["dm_verity"];
        assert_eq!(p, Path::new("kernel/a/dm-verity.ko"));
        assert_eq!(d.len(), 2);
        assert!(m["b"].1.is_empty());
    }
}
