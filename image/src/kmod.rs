//! Kernel modules: dependencies read from each module's `.modinfo` (what modpost recorded, the
//! same source depmod uses), closures in load order, and a `modules.dep` file.

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module names treat '-' and '_' as the same, as the kernel does.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Debug, Clone)]
pub struct Module {
    /// Path relative to `lib/modules/<kver>/`, e.g. `kernel/drivers/md/dm-verity.ko`.
    pub rel_path: String,
    pub depends: Vec<String>,
    /// The devices it drives, as modalias patterns (`pci:v00001AF4d00001000sv*sd*bc*sc*i*`),
    /// and its other names (`fs-erofs`, `devname:mapper/control`).
    pub aliases: Vec<String>,
}

/// Whether an alias names devices (`BUS:...`, matched against a device's `modalias`) rather
/// than another name of the module (`fs-erofs`, `char-major-10-236`, `devname:...`).
pub fn is_device_alias(alias: &str) -> bool {
    alias.contains(':') && !alias.starts_with("devname:")
}

/// Every module of a kernel's module tree, by normalized name.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    pub modules: BTreeMap<String, Module>,
}

impl ModuleIndex {
    /// Scans `lib/modules/<kver>` (uncompressed `.ko`, as Debian ships them).
    pub fn scan(root: &Path) -> Result<ModuleIndex> {
        let mut index = ModuleIndex::default();
        let mut softdeps = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "ko") {
                    let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                    let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    let info = modinfo(&data).with_context(|| format!("modinfo of {rel}"))?;
                    let name = normalize(&info.name);
                    softdeps.push((name.clone(), info.soft_pre));
                    index.modules.insert(name, Module { rel_path: rel, depends: info.depends, aliases: info.aliases });
                }
            }
        }
        index.add_soft_dependencies(softdeps);
        Ok(index)
    }

    /// Makes each module's `softdep` `pre:` modules (by name, or by an alias such as
    /// `crc32c`, which every implementation of the algorithm carries) dependencies of it, so
    /// they are carried and loaded first. One that no module provides (built into the
    /// kernel) is skipped.
    fn add_soft_dependencies(&mut self, softdeps: Vec<(String, Vec<String>)>) {
        for (module, pre) in softdeps {
            for want in pre {
                let provider = if self.modules.contains_key(&normalize(&want)) {
                    Some(normalize(&want))
                } else {
                    self.modules.iter().find(|(_, m)| m.aliases.contains(&want)).map(|(n, _)| n.clone())
                };
                if let Some(p) = provider
                    && p != module
                    && let Some(m) = self.modules.get_mut(&module)
                    && !m.depends.iter().any(|d| normalize(d) == p)
                {
                    m.depends.push(p);
                }
            }
        }
    }

    /// Drops the modules under `kernel/DIR` for each of `dirs` (directories or `.ko` files;
    /// each must hold at least one module), except the modules named in `keep` and what they
    /// depend on, then the modules that need one dropped.
    pub fn exclude(&mut self, dirs: &[String], keep: &[String]) -> Result<()> {
        let kept: BTreeSet<String> =
            self.closure(keep).map_err(|e| anyhow::anyhow!("kernel.keep_modules: {e}"))?.into_iter().collect();
        for d in dirs {
            if d.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
                bail!("kernel.exclude_modules: {d:?} is not a path under the kernel's modules");
            }
            let (dir, file) = (format!("kernel/{d}/"), format!("kernel/{d}"));
            let under = |m: &Module| m.rel_path.starts_with(&dir) || m.rel_path == file;
            if !self.modules.values().any(under) {
                bail!("kernel.exclude_modules: the kernel has no modules under kernel/{d}");
            }
            self.modules.retain(|name, m| kept.contains(name) || !under(m));
        }
        loop {
            let missing: Vec<String> = self
                .modules
                .iter()
                .filter(|(_, m)| m.depends.iter().any(|d| !self.modules.contains_key(&normalize(d))))
                .map(|(name, _)| name.clone())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            for name in missing {
                self.modules.remove(&name);
            }
        }
    }

    /// `wanted` and everything they depend on, dependencies before dependents.
    pub fn closure(&self, wanted: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&normalize(w), &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let Some(m) = self.modules.get(name) else {
            match path.last() {
                Some(parent) => bail!("module {parent} depends on {name}, which the kernel package lacks"),
                None => bail!("no kernel module named {name} (is it built into the kernel? see modules.builtin)"),
            }
        };
        path.push(name.to_string());
        for d in &m.depends {
            self.visit(&normalize(d), done, path, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }

    /// A `modules.alias` in depmod's format (`alias PATTERN NAME`), sorted: of `only` (every
    /// module when `None`), their device aliases, or all their aliases (`fs-udf`,
    /// `crypto-sha256`: what the kernel asks modprobe for when a mount or a socket needs a
    /// module) unless `devices_only`.
    pub fn modules_alias(&self, only: Option<&[String]>, devices_only: bool) -> String {
        let mut lines: Vec<String> = self
            .modules
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o.contains(name)))
            .flat_map(|(name, m)| {
                m.aliases
                    .iter()
                    .filter(move |a| !devices_only || is_device_alias(a))
                    .map(move |a| format!("alias {a} {name}\n"))
            })
            .collect();
        lines.sort();
        lines.concat()
    }

    /// Of `names` (a closure, in load order), those that drive no device: loaded at every
    /// boot, where the rest are loaded for the devices present.
    pub fn without_devices<'a>(&self, names: &'a [String]) -> Vec<&'a String> {
        names
            .iter()
            .filter(|n| self.modules.get(*n).is_some_and(|m| !m.aliases.iter().any(|a| is_device_alias(a))))
            .collect()
    }

    /// A `modules.dep` in depmod's format: each module, then its dependencies, the one to load
    /// first last (modprobe loads the list from the end).
    pub fn modules_dep(&self) -> Result<String> {
        self.modules_dep_of(None)
    }

    /// `modules_dep` of `only` (a closure, so every dependency is in it).
    pub fn modules_dep_of(&self, only: Option<&[String]>) -> Result<String> {
        let mut out = String::new();
        let mut by_path: Vec<(&String, &Module)> =
            self.modules.iter().filter(|(name, _)| only.is_none_or(|o| o.contains(name))).collect();
        by_path.sort_by(|a, b| a.1.rel_path.cmp(&b.1.rel_path));
        for (name, m) in by_path {
            let deps = self.closure(std::slice::from_ref(name))?;
            out.push_str(&m.rel_path);
            out.push(':');
            for d in deps.iter().rev().skip(1) {
                out.push(' ');
                out.push_str(&self.modules[d].rel_path);
            }
            out.push('\n');
        }
        Ok(out)
    }
}

/// The modules a `softdep=` value wants loaded first (`pre: a b post: c` gives a and b).
fn soft_pre(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => pre = true,
            "post:" => pre = false,
            w if pre => out.push(w.to_string()),
            _ => {}
        }
    }
    out
}

/// What a module's `.modinfo` says about it.
struct ModInfo {
    name: String,
    depends: Vec<String>,
    aliases: Vec<String>,
    /// The `pre:` part of `softdep=`.
    soft_pre: Vec<String>,
}

/// `name=`, `depends=`, `alias=` and `softdep=` of a module's `.modinfo` section.
fn modinfo(elf: &[u8]) -> Result<ModInfo> {
    let file = object::File::parse(elf)?;
    let section = file.section_by_name(".modinfo").context("no .modinfo section")?;
    let data = section.data()?;
    let mut name = None;
    let mut depends = Vec::new();
    let mut aliases = Vec::new();
    let mut softdeps = Vec::new();
    for field in data.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let field = String::from_utf8_lossy(field);
        if let Some(n) = field.strip_prefix("name=") {
            name = Some(n.to_string());
        } else if let Some(d) = field.strip_prefix("depends=") {
            depends.extend(d.split(',').filter(|s| !s.is_empty()).map(str::to_string));
        } else if let Some(a) = field.strip_prefix("alias=") {
            aliases.push(a.to_string());
        } else if let Some(s) = field.strip_prefix("softdep=") {
            // `pre: crc32c`: what must be loaded first (libcrc32c fails with ENOENT without a
            // crc32c implementation), named by module name or alias; resolved by `scan`.
            softdeps.extend(soft_pre(s));
        }
    }
    Ok(ModInfo { name: name.context("no name= in .modinfo")?, depends, aliases, soft_pre: softdeps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(mods: &[(&str, &[&str])]) -> ModuleIndex {
        let mut i = ModuleIndex::default();
        for (n, deps) in mods {
            i.modules.insert(
                normalize(n),
                Module {
                    rel_path: format!("kernel/{n}.ko"),
                    depends: deps.iter().map(|s| s.to_string()).collect(),
                    aliases: Vec::new(),
                },
            );
        }
        i
    }

    #[test]
    fn soft_dependencies_before_load_are_dependencies_found_by_name_or_alias() {
        assert_eq!(soft_pre("pre: crc32c ecb post: foo"), ["crc32c", "ecb"]);
        let mut i = index(&[("libcrc32c", &[]), ("crc32c_generic", &[]), ("erofs", &["libcrc32c"])]);
        i.modules.get_mut("crc32c_generic").unwrap().aliases = vec!["crypto-crc32c".into(), "crc32c".into()];
        i.add_soft_dependencies(vec![("libcrc32c".into(), vec!["crc32c".into(), "built_in".into()])]);
        assert_eq!(i.closure(&["erofs".into()]).unwrap(), ["crc32c_generic", "libcrc32c", "erofs"]);
    }

    #[test]
    fn excluded_directories_go_with_the_modules_that_need_them() {
        let mut i = index(&[("pcmcia", &[]), ("pata_pcmcia", &["pcmcia"]), ("ahci", &[])]);
        for m in i.modules.values_mut() {
            m.rel_path = m.rel_path.replace("kernel/pcmcia.ko", "kernel/drivers/pcmcia/pcmcia.ko");
        }
        i.exclude(&["drivers/pcmcia".into()], &[]).unwrap();
        assert_eq!(i.modules.keys().collect::<Vec<_>>(), ["ahci"]);
        assert!(i.exclude(&["drivers/gpu".into()], &[]).unwrap_err().to_string().contains("no modules under"));
        assert!(i.exclude(&["../x".into()], &[]).is_err());
    }

    #[test]
    fn kept_modules_and_their_dependencies_survive_an_excluded_directory() {
        let mut i = index(&[("scsi_mod", &[]), ("sd_mod", &["scsi_mod"]), ("lpfc", &["scsi_mod"]), ("ahci", &[])]);
        for m in i.modules.values_mut() {
            m.rel_path = format!("kernel/drivers/scsi/{}", m.rel_path.trim_start_matches("kernel/"));
        }
        i.exclude(&["drivers/scsi".into()], &["sd_mod".into()]).unwrap();
        assert_eq!(i.modules.keys().collect::<Vec<_>>(), ["scsi_mod", "sd_mod"]);
        let err = i.exclude(&[], &["no_such".into()]).unwrap_err().to_string();
        assert!(err.contains("kernel.keep_modules") && err.contains("no_such"), "{err}");
    }

    #[test]
    fn device_aliases_are_listed_and_modules_without_them_load_always() {
        let mut i = index(&[("virtio_blk", &["virtio"]), ("virtio", &[]), ("erofs", &[]), ("dm-mod", &[])]);
        let alias = |i: &mut ModuleIndex, m: &str, a: &[&str]| {
            i.modules.get_mut(m).unwrap().aliases = a.iter().map(|s| s.to_string()).collect();
        };
        alias(&mut i, "virtio_blk", &["virtio:d00000002v*"]);
        alias(&mut i, "erofs", &["fs-erofs"]);
        alias(&mut i, "dm_mod", &["devname:mapper/control", "char-major-10-236"]);
        assert_eq!(i.modules_alias(None, true), "alias virtio:d00000002v* virtio_blk\n");
        assert_eq!(i.modules_alias(Some(&["erofs".to_string()]), true), "");
        // /usr's lists every alias: a mount of erofs finds its module by `fs-erofs`.
        assert!(i.modules_alias(None, false).contains("alias fs-erofs erofs\n"));
        let all = i.closure(&["virtio_blk".into(), "erofs".into(), "dm-mod".into()]).unwrap();
        assert_eq!(i.without_devices(&all), [&"virtio".to_string(), &"erofs".to_string(), &"dm_mod".to_string()]);
        // A closure's modules.dep names only its own modules.
        let dep = i.modules_dep_of(Some(&["virtio".to_string(), "virtio_blk".to_string()])).unwrap();
        assert_eq!(dep, "kernel/virtio.ko:\nkernel/virtio_blk.ko: kernel/virtio.ko\n");
    }

    #[test]
    fn closure_puts_dependencies_first() {
        let i = index(&[("dm-verity", &["dm-bufio", "dm-mod"]), ("dm-bufio", &[]), ("dm-mod", &[]), ("erofs", &[])]);
        let c = i.closure(&["dm-verity".into(), "erofs".into(), "dm_mod".into()]).unwrap();
        assert_eq!(c, vec!["dm_bufio", "dm_mod", "dm_verity", "erofs"]);
    }

    #[test]
    fn missing_module_is_named() {
        let i = index(&[("a", &["b"])]);
        let e = i.closure(&["a".into()]).unwrap_err().to_string();
        assert!(e.contains("a depends on b"), "{e}");
        let e = i.closure(&["zz".into()]).unwrap_err().to_string();
        assert!(e.contains("no kernel module named zz"), "{e}");
    }

    #[test]
    fn modules_dep_lists_first_to_load_last() {
        let i = index(&[("c", &["b"]), ("b", &["a"]), ("a", &[])]);
        let dep = i.modules_dep().unwrap();
        assert!(dep.contains("kernel/c.ko: kernel/b.ko kernel/a.ko\n"), "{dep}");
        assert!(dep.contains("kernel/a.ko:\n"), "{dep}");
    }
}
