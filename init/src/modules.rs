//! Loading kernel modules with finit_module: from an ordered list (stage 1) or by name with
//! their dependencies from `modules.dep` (stage 2).

use std::collections::HashMap;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depmod_format() {
        let m = parse_modules_dep("kernel/a/dm-verity.ko: kernel/a/dm-bufio.ko kernel/a/dm-mod.ko\nkernel/b.ko:\n");
        let (p, d) = &m["dm_verity"];
        assert_eq!(p, Path::new("kernel/a/dm-verity.ko"));
        assert_eq!(d.len(), 2);
        assert!(m["b"].1.is_empty());
    }
}
