//! `cairn build`: spec -> packages -> /usr tree -> erofs + dm-verity -> initramfs -> UKI -> ESP
//! -> ROOT -> GPT disk -> qcow2, with build.json describing the result.

use crate::apt::{Apt, Deb, sha256_file};
use crate::disk::{self, MIB, PartitionSpec};
use crate::esp::{EspFile, LOADER_CONF};
use crate::initramfs::{Initramfs, MODULES_LOAD};
use crate::kmod::ModuleIndex;
use crate::lock::{Lock, LockMode, Requested};
use crate::rootfs::{self, MergeStats};
use crate::spec::{FirstEntry, Spec, validate_version};
use crate::steps::{StepTime, Steps};
use crate::{binaries, deb, esp, fsimage, tools, uki};
use anyhow::{Context, Result, bail};
use cairn_release::gpt::{self, Guid};
use cairn_release::verity::{self, BLOCK_SIZE, VerityParams};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bump when the staged /usr would differ for the same inputs (cache key of the /usr image).
const USR_LAYOUT_VERSION: u32 = 4;

pub struct BuildOptions {
    pub spec_path: PathBuf,
    pub version: Option<String>,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub source_date_epoch: u64,
    pub binaries: binaries::Source,
    pub interactive: bool,
    pub quiet: bool,
    /// The disk's formats; `None`: the spec's `output.formats`.
    pub formats: Option<Vec<crate::formats::Format>>,
    /// The TUF root metadata the image trusts: its feed is a TUF repository, and a release
    /// directory (`out/release/`, for `cairn release publish --keys`) is written.
    pub trust_root: Option<PathBuf>,
    /// How the lock beside the spec (`SPEC.lock`) is used.
    pub lock: LockMode,
    /// Also write the composed OS as an OCI image to this containers-image reference.
    pub push: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct UsrReport {
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// Byte offset (from the partition start) of the verity superblock; the tree follows it.
    pub hash_offset: u64,
    pub erofs_bytes: u64,
    pub partition_uuid: String,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct KernelReport {
    pub package: String,
    pub version: String,
    /// sha256 of the .deb; its unpacked copy is `<cache>/unpacked/<sha256>`.
    pub sha256: String,
    pub release: String,
    pub meta_package: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseReport {
    pub dir: String,
    pub created: u64,
}

#[derive(Debug, Serialize)]
pub struct OciReport {
    pub reference: String,
    /// The manifest digest (`sha256:...`).
    pub digest: String,
}

#[derive(Debug, Serialize)]
pub struct LockReport {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub os_id: String,
    pub version: String,
    pub source_date_epoch: u64,
    /// The lock the packages came from: its path and sha256.
    pub lock: LockReport,
    /// The compiler of Cairn's binaries (`None`: prebuilt binaries were given).
    pub toolchain: Option<String>,
    pub kernel: KernelReport,
    pub cmdline: String,
    pub uki: String,
    pub esp_entry: String,
    pub usr: UsrReport,
    pub disk_guid: String,
    pub disk_size: u64,
    pub partitions: Vec<PartitionSpec>,
    pub packages: Vec<Deb>,
    pub initramfs_modules: Vec<String>,
    pub outputs: BTreeMap<String, Output>,
    /// The version of the TUF root metadata the image trusts, if any.
    pub tuf_root_version: Option<u64>,
    /// The release directory for `cairn release publish`, when the image trusts a root.
    pub release: Option<ReleaseReport>,
    /// The OCI image of the composed OS, when `--push` asked for one.
    pub oci: Option<OciReport>,
    pub steps: Vec<StepTime>,
    pub total_ms: u64,
}

impl BuildReport {
    pub fn load(path: &Path) -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A GUID derived from the build's identity, with RFC 4122 version 4 bits so tools show it as one.
fn derived_guid(seed: &[u8], what: &str) -> Guid {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(what.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Guid(b)
}

/// The lock of the spec at `spec_path` as a build with `mode` and `toolchain` settles it (see
/// `settle_lock`), without building anything.
pub fn lock_spec(
    spec_path: &Path,
    cache: &Path,
    mode: LockMode,
    toolchain: Option<&str>,
) -> Result<(Lock, Vec<String>)> {
    let spec = Spec::load(spec_path)?;
    let apt = Apt::new(&cache.join("apt"))?;
    let requested = Requested {
        packages: spec.packages.all(),
        kernel: spec.kernel.package.clone(),
        without: spec.packages.without.clone(),
    };
    settle_lock(&apt, &crate::lock::path_for(spec_path), requested, mode, toolchain)
}

/// The lock this build uses: the one beside the spec while it answers the spec, its packages
/// can be had and it names this build's compiler; otherwise (never with `--locked`) what apt
/// resolves now and this compiler, written there with what changed told on stderr (and
/// returned). `toolchain` is `None` for prebuilt binaries: the lock's is kept.
fn settle_lock(
    apt: &Apt,
    path: &Path,
    requested: Requested,
    mode: LockMode,
    toolchain: Option<&str>,
) -> Result<(Lock, Vec<String>)> {
    let shown = path.display();
    let existing = Lock::read(path)?;
    let mut kept = None;
    match (&existing, mode) {
        (None, LockMode::Locked) => {
            bail!("--locked: there is no lock {shown}; build once without --locked to write it")
        }
        (Some(lock), LockMode::Use | LockMode::Locked) if lock.requested == requested => {
            let mut all = lock.debs();
            all.push(Deb::from(&lock.kernel));
            let problems = apt.unobtainable(&all);
            match (problems.is_empty(), mode) {
                (true, _) => kept = Some(lock.clone()),
                (false, LockMode::Locked) => bail!(
                    "--locked: {shown}: these packages cannot be had at their locked versions (no other is taken):\n  {}",
                    problems.join("\n  ")
                ),
                (false, _) => {
                    eprintln!("cairn: {shown}: resolving again, as these cannot be had:\n  {}", problems.join("\n  "))
                }
            }
            if let (LockMode::Locked, Some(locked), Some(now)) = (mode, &lock.toolchain, toolchain)
                && locked != now
            {
                bail!("--locked: {shown} was made with {locked}, this build's compiler is {now}");
            }
        }
        (Some(lock), LockMode::Locked) => bail!(
            "--locked: {shown} was made for packages {:?} and kernel {}, the spec asks for {:?} and {}; \
             run `cairn build --update-lock`",
            lock.requested.packages,
            lock.requested.kernel,
            requested.packages,
            requested.kernel
        ),
        _ => {}
    }
    let mut lock = match kept {
        Some(lock) => lock,
        None => {
            let debs = apt.resolve_closure(&requested.packages, &requested.without)?;
            let (kernel, meta) = apt.resolve_kernel(&requested.kernel)?;
            let mut lock = Lock::new(requested, &debs, &kernel, meta.as_ref());
            lock.toolchain = existing.as_ref().and_then(|l| l.toolchain.clone());
            lock
        }
    };
    if let Some(now) = toolchain {
        lock.toolchain = Some(now.to_string());
    }
    let changes = crate::lock::changes(existing.as_ref(), &lock);
    if existing.as_ref() != Some(&lock) {
        cairn_release::durable::write_atomic(path, lock.to_text().as_bytes(), 0o644)
            .with_context(|| format!("writing {shown}"))?;
        eprintln!("cairn: wrote {shown}: {} change(s)\n  {}", changes.len(), changes.join("\n  "));
    }
    Ok((lock, changes))
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let mut spec = Spec::load(&opts.spec_path)?;
    if let Some(v) = &opts.version {
        validate_version(v).context("--version")?;
        spec.os.version = v.clone();
    }
    let version = spec.os.version.clone();
    let epoch = opts.source_date_epoch;
    let mut steps = Steps::new(opts.interactive, opts.quiet);

    tools::check(tools::BUILD_TOOLS, tools::BUILD_FILES)?;
    if matches!(opts.binaries, binaries::Source::Cargo { .. }) {
        tools::check(&[("cargo", "rustup (https://rustup.rs), or pass --binaries DIR")], &[])?;
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let work = opts.out.join(".work");
    std::fs::create_dir_all(&work)?;
    let apt = Apt::new(&opts.cache.join("apt"))?;

    // Cargo compiles Cairn's binaries while apt resolves and downloads.
    let lock_path = crate::lock::path_for(&opts.spec_path);
    let toolchain = binaries::toolchain(&opts.binaries)?;
    let requested = Requested {
        packages: spec.packages.all(),
        kernel: spec.kernel.package.clone(),
        without: spec.packages.without.clone(),
    };
    let (bins, (debs, kernel, kernel_meta, lock)) = std::thread::scope(|s| -> Result<_> {
        let cargo = s.spawn(|| binaries::obtain(&opts.binaries, &spec.cairn.binaries, opts.quiet));
        let fetched = steps.run("resolve + fetch", || {
            let (lock, _) = settle_lock(&apt, &lock_path, requested, opts.lock, toolchain.as_deref())?;
            let debs = lock.debs();
            let kernel = Deb::from(&lock.kernel);
            let meta = lock.kernel_meta.as_ref().map(Deb::from);
            let mut all = debs.clone();
            all.push(kernel.clone());
            let downloaded = apt.fetch(&all)?;
            Ok(((debs, kernel, meta, lock), downloaded == 0))
        });
        let bins = steps.run("cairn binaries", || {
            let r = cargo.join().map_err(|_| anyhow::anyhow!("building binaries panicked"))??;
            Ok((r, false))
        })?;
        Ok((bins, fetched?))
    })?;

    let unpack_cache = opts.cache.join("unpacked");
    let (kernel_dir, unpacked) = steps.run("unpack", || {
        let mut cached = true;
        let mut dirs = Vec::new();
        for d in &debs {
            cached &= unpack_cache.join(&d.sha256).is_dir();
            dirs.push(deb::unpack_cached(d, &apt.path_of(d), &unpack_cache)?);
        }
        cached &= unpack_cache.join(&kernel.sha256).is_dir();
        let k = deb::unpack_cached(&kernel, &apt.path_of(&kernel), &unpack_cache)?;
        Ok(((k, dirs), cached))
    })?;

    let kernel_release = kernel_release(&kernel_dir)?;
    let modules_dir = kernel_dir.join("lib/modules").join(&kernel_release);
    let index = steps.run("kernel modules", || {
        let mut index = ModuleIndex::scan(&modules_dir)?;
        index.exclude(&spec.kernel.exclude_modules, &spec.kernel.keep_modules)?;
        // Every module kept must have its dependencies kept.
        index.modules_dep()?;
        Ok((index, false))
    })?;
    let initrd_modules = index.closure(&spec.initramfs.modules)?;

    let os_release = rootfs::os_release(&spec.os.id, &spec.os.name, &version);
    spec.update.resolve().map_err(|e| anyhow::anyhow!("invalid spec: [update] {e}"))?;
    let update_toml = toml::to_string(&spec.update)?;
    // One salt for every release of an OS, not one per version: a salt that changed with the
    // version would change every hash of the tree, and a version bump would download it whole.
    let salt: [u8; 32] = Sha256::digest(format!("cairn verity salt {}", spec.os.id)).into();

    let tuf_root = match &opts.trust_root {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let version = cairn_tuf::client::check_root(&bytes)
                .map_err(|e| anyhow::anyhow!("--trust-root {}: {e}", path.display()))?;
            Some((bytes, version))
        }
    };
    let overlays: Vec<PathBuf> = spec.overlay.iter().map(|o| spec.base_dir.join(o)).collect();
    for dir in &overlays {
        rootfs::check_overlay(dir)?;
    }

    // The /usr image is cached by everything that goes into it.
    let usr_key = (|| -> Result<String> {
        let mut h = Sha256::new();
        h.update(format!("layout {USR_LAYOUT_VERSION} epoch {epoch} erofs {:?}\n", fsimage::EROFS_OPTIONS));
        for d in debs.iter().chain([&kernel]) {
            h.update(format!("deb {} {}\n", d.filename, d.sha256));
        }
        for b in &bins {
            h.update(format!("bin {} {}\n", b.name, b.sha256));
        }
        for x in &spec.packages.exclude {
            h.update(format!("exclude {x}\n"));
        }
        h.update(&os_release);
        h.update(&update_toml);
        h.update(spec.os.id.as_bytes());
        for dir in &overlays {
            h.update(rootfs::tree_digest(dir)?);
        }
        if let Some((root, _)) = &tuf_root {
            h.update(b"tuf root ");
            h.update(Sha256::digest(root));
        }
        h.update(salt);
        Ok(hex::encode(h.finalize()))
    })()?;
    let usr_cache = opts.cache.join("usr").join(&usr_key[..32]);
    // The composed tree: `usr/` (the factory /etc inside it) from the packages, the kernel's
    // modules, overlays, Cairn's binaries and generated files.
    let tree = work.join("tree");
    let compose = || -> Result<MergeStats> {
        if tree.exists() {
            std::fs::remove_dir_all(&tree)?;
        }
        let mut stats = MergeStats::default();
        for dir in &unpacked {
            rootfs::merge_package(dir, &tree, &mut stats)?;
        }
        rootfs::exclude(&tree, &spec.packages.exclude)?;
        let usr = tree.join("usr");
        let mods_dest = usr.join("lib/modules").join(&kernel_release);
        rootfs::link_tree(&modules_dir, &mods_dest, &mut stats)?;
        remove_modules_not_in(&mods_dest, &index)?;
        rootfs::write_file(&mods_dest.join("modules.dep"), index.modules_dep()?.as_bytes(), 0o644)?;
        rootfs::write_file(&mods_dest.join("modules.alias"), index.modules_alias(None, false).as_bytes(), 0o644)?;
        rootfs::busybox_links(&tree)?;
        for dir in &overlays {
            rootfs::link_tree(dir, &tree, &mut MergeStats::default())?;
        }
        for b in &bins {
            rootfs::write_file(&usr.join("sbin").join(&b.name), &std::fs::read(&b.path)?, 0o755)?;
        }
        // One binary, several names: PID 1, its control client, and the power commands.
        for name in ["init", "cairnctl", "reboot", "poweroff", "halt"] {
            let link = usr.join("sbin").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("cairn-init", &link)?;
        }
        rootfs::write_file(&usr.join("lib/os-release"), os_release.as_bytes(), 0o644)?;
        let update_file = cairn_release::update_config::IMAGE_FILE.trim_start_matches('/');
        rootfs::write_file(&tree.join(update_file), update_toml.as_bytes(), 0o644)?;
        if let Some((root, _)) = &tuf_root {
            rootfs::write_file(&tree.join(cairn_release::layout::TUF_ROOT), root, 0o644)?;
        }
        rootfs::write_factory_etc(&tree, &spec.os.id)?;
        Ok(stats)
    };
    // Whether `tree` holds this build's composition (a tree left by an earlier build is no
    // witness: it may be another spec's).
    let (params, usr_img, stats, composed) = steps.run("/usr erofs + verity", || {
        if let Some((params, img, stats)) = load_usr_cache(&usr_cache)? {
            return Ok(((params, img, stats, false), true));
        }
        let stats = compose()?;
        let usr = tree.join("usr");
        std::fs::create_dir_all(&usr_cache)?;
        let erofs_img = usr_cache.join("usr.img.tmp");
        fsimage::erofs(&usr, &erofs_img, derived_guid(usr_key.as_bytes(), "erofs"), epoch)?;
        let params = append_verity(&erofs_img, salt)?;
        let meta = UsrCacheMeta {
            stats,
            root_hash: hex::encode(params.root_hash),
            data_blocks: params.data_blocks,
            hash_offset: params.hash_offset,
        };
        std::fs::write(usr_cache.join("verity.json"), serde_json::to_string(&meta)?)?;
        std::fs::rename(&erofs_img, usr_cache.join("usr.img"))?;
        if opts.push.is_none() {
            std::fs::remove_dir_all(&tree)?;
        }
        Ok(((params, usr_cache.join("usr.img"), stats, opts.push.is_some()), false))
    })?;
    let oci = match &opts.push {
        None => None,
        Some(dest) => Some(steps.run("OCI image", || {
            if !composed {
                compose()?;
            }
            let mut owners = cairn_oci::owners::Owners::new();
            for (deb, dir) in debs.iter().zip(&unpacked) {
                rootfs::claim(dir, &rootfs::destination, &deb.package, &mut owners)?;
            }
            let modules = Path::new("usr/lib/modules").join(&kernel_release);
            rootfs::claim(&modules_dir, &|rel| Some(modules.join(rel)), &kernel.package, &mut owners)?;
            for dir in &overlays {
                rootfs::claim(dir, &|rel| Some(rel.to_path_buf()), "overlay", &mut owners)?;
            }
            let digest = cairn_oci::export(&cairn_oci::Export {
                tree: &tree,
                owners: &owners,
                repo: &opts.cache.join("ostree"),
                os_id: &spec.os.id,
                version: &version,
                root_hash: &hex::encode(params.root_hash),
                epoch,
                dest,
            })?;
            std::fs::remove_dir_all(&tree)?;
            Ok((OciReport { reference: dest.clone(), digest }, false))
        })?),
    };
    let usr_size = std::fs::metadata(&usr_img)?.len();
    if usr_size > spec.partitions.usr_mib * MIB {
        bail!(
            "/usr with its hash tree is {} MiB, more than partitions.usr_mib = {}",
            usr_size / MIB + 1,
            spec.partitions.usr_mib
        );
    }

    let mut cmdline = format!(
        "{} {}={} {}={} {}={}",
        spec.kernel.cmdline.trim(),
        cairn_release::cmdline::USR_HASH,
        hex::encode(params.root_hash),
        cairn_release::cmdline::USR_HASH_OFFSET,
        params.hash_offset,
        cairn_release::cmdline::BOOT_DEADLINE,
        spec.boot.deadline_s
    )
    .trim()
    .to_string();
    if spec.boot.autologin {
        cmdline.push(' ');
        cmdline.push_str(cairn_release::cmdline::AUTOLOGIN);
    }

    let initrd_path = work.join("initrd.cpio");
    steps.run("initramfs", || {
        let mut initrd = Initramfs::new(epoch);
        let init = bins.iter().find(|b| b.name == "cairn-init").context("no cairn-init binary")?;
        initrd.file("init", std::fs::read(&init.path)?, 0o755);
        // Drivers are loaded for the devices present (modules.alias); the rest (dm-verity,
        // erofs and what they need) at every boot, in order.
        let always: Vec<String> = index.without_devices(&initrd_modules).into_iter().cloned().collect();
        let mut load = String::new();
        for m in index.closure(&always)? {
            load.push_str(&format!("/lib/modules/{kernel_release}/{}\n", index.modules[&m].rel_path));
        }
        for m in &initrd_modules {
            let rel = &index.modules[m].rel_path;
            initrd.file(&format!("lib/modules/{kernel_release}/{rel}"), std::fs::read(modules_dir.join(rel))?, 0o644);
        }
        initrd.file(MODULES_LOAD, load.into_bytes(), 0o644);
        let dep = index.modules_dep_of(Some(&initrd_modules))?;
        initrd.file(&format!("lib/modules/{kernel_release}/modules.dep"), dep.into_bytes(), 0o644);
        let alias = index.modules_alias(Some(&initrd_modules), true);
        initrd.file(&format!("lib/modules/{kernel_release}/modules.alias"), alias.into_bytes(), 0o644);
        initrd.file("etc/initrd-release", os_release.clone().into_bytes(), 0o644);
        initrd.symlink("etc/os-release", "initrd-release");
        std::fs::write(&initrd_path, initrd.to_cpio()?)?;
        Ok(((), false))
    })?;

    let uki_name = format!("{}-{version}.efi", spec.os.id);
    let uki_path = opts.out.join(&uki_name);
    steps.run("uki", || {
        let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{kernel_release}"));
        uki::build(
            &uki::UkiInputs {
                stub: Path::new(uki::STUB),
                kernel: &vmlinuz,
                initrd: &initrd_path,
                cmdline: &cmdline,
                os_release: &os_release,
                uname: &kernel_release,
                epoch,
            },
            &work.join("uki"),
            &uki_path,
        )?;
        Ok(((), false))
    })?;

    let release = match &tuf_root {
        None => None,
        Some(_) => Some(steps.run("release", || {
            // The compressed /usr is derived from the cached image, so it is cached beside it.
            let zst = usr_img.with_extension("img.zst");
            let cached = zst.exists();
            if !cached {
                crate::release::zstd_file(&usr_img, &zst)?;
            }
            let created = crate::release::release_time()?;
            let inputs = crate::release::ReleaseInputs {
                os_id: &spec.os.id,
                version: &version,
                uki: &uki_path,
                usr: &usr_img,
                verity: cairn_release::manifest::VerityInfo {
                    root_hash: hex::encode(params.root_hash),
                    salt: hex::encode(params.salt),
                    data_blocks: params.data_blocks,
                    hash_offset: params.hash_offset,
                },
                created,
            };
            let dir = opts.out.join("release");
            let r = crate::release::write_release_dir(&dir, &inputs, &zst)?;
            let report = ReleaseReport { dir: "release".into(), created: r.created };
            Ok((report, cached))
        })?),
    };

    let seed = [spec.os.id.as_bytes(), version.as_bytes(), &params.root_hash].concat();
    let esp_entry = match spec.boot.first_entry {
        FirstEntry::Blessed => format!("EFI/Linux/{uki_name}"),
        FirstEntry::Counted => format!("EFI/Linux/{}-{version}+3.efi", spec.os.id),
    };
    let esp_img = work.join("esp.img");
    steps.run("esp", || {
        let volume_id = u32::from_le_bytes(derived_guid(&seed, "esp-volume").0[..4].try_into()?);
        let loader_conf = work.join("loader.conf");
        std::fs::write(&loader_conf, LOADER_CONF)?;
        fsimage::set_times(&loader_conf, epoch)?;
        fsimage::set_times(&uki_path, epoch)?;
        let sd_boot = work.join("systemd-bootx64.efi");
        std::fs::copy(tools::BUILD_FILES[0].0, &sd_boot)?;
        fsimage::set_times(&sd_boot, epoch)?;
        let files = [
            EspFile { path: "EFI/BOOT/BOOTX64.EFI", source: &sd_boot },
            EspFile { path: "loader/loader.conf", source: &loader_conf },
            EspFile { path: &esp_entry, source: &uki_path },
        ];
        esp::build(&esp_img, spec.partitions.esp_mib * MIB, volume_id, epoch, &files)?;
        Ok(((), false))
    })?;

    let root_img = work.join("root.img");
    steps.run("root ext4", || {
        // Empty: stage 1 makes ROOT's directories on first boot (mkfs.ext4 -d would copy the
        // build machine's ctimes, which no one can pin).
        fsimage::ext4(
            &root_img,
            spec.partitions.root_mib * MIB,
            gpt::LABEL_ROOT,
            derived_guid(&seed, "root-fs"),
            epoch,
        )?;
        Ok(((), false))
    })?;

    let usr_a_uuid = gpt::usr_partition_uuid(&params.root_hash);
    let mut parts = vec![
        part(
            1,
            gpt::LABEL_ESP,
            gpt::TYPE_ESP,
            derived_guid(&seed, "esp"),
            spec.partitions.esp_mib,
            Some(esp_img.clone()),
        ),
        part(2, gpt::LABEL_USR_A, gpt::TYPE_USR_X86_64, usr_a_uuid, spec.partitions.usr_mib, Some(usr_img.clone())),
        part(3, gpt::LABEL_USR_B, gpt::TYPE_USR_X86_64, derived_guid(&seed, "usr-b"), spec.partitions.usr_mib, None),
        part(
            5,
            gpt::LABEL_ROOT,
            gpt::TYPE_LINUX_DATA,
            derived_guid(&seed, "root"),
            spec.partitions.root_mib,
            Some(root_img.clone()),
        ),
    ];
    let disk_size = disk::layout(&mut parts)?;
    let disk_guid = derived_guid(&seed, "disk");
    let raw = opts.out.join("disk.raw");
    steps.run("disk.raw", || {
        disk::write(&raw, disk_guid, disk_size, &parts)?;
        Ok(((), false))
    })?;
    let formats = match &opts.formats {
        Some(f) => f.clone(),
        None => spec.output.formats()?,
    };
    // An earlier build's disk in a format not made now would pass for this one's.
    for name in crate::formats::Format::NAMES.iter().filter_map(|n| crate::formats::Format::parse(n)) {
        if !formats.contains(&name) {
            let _ = std::fs::remove_file(opts.out.join(name.file_name()));
        }
    }
    let usr_out = opts.out.join("usr.img");
    let _ = std::fs::remove_file(&usr_out);
    if std::fs::hard_link(&usr_img, &usr_out).is_err() {
        std::fs::copy(&usr_img, &usr_out)?;
    }
    // Each format is converted by its own qemu-img or tar (each compresses on one core) while
    // the outputs are hashed.
    let outputs = steps.run("disk formats + checksums", || {
        std::thread::scope(|s| -> Result<_> {
            let conversions: Vec<_> = formats
                .iter()
                .filter(|f| **f != crate::formats::Format::Raw)
                .map(|f| s.spawn(|| crate::formats::convert(&raw, *f, &opts.out, epoch).map(|path| (*f, path))))
                .collect();
            let mut outputs = BTreeMap::new();
            for (name, path) in [("disk.raw", &raw), ("uki", &uki_path), ("usr", &usr_out), ("initramfs", &initrd_path)]
            {
                outputs.insert(name.to_string(), output_of(path)?);
            }
            for conversion in conversions {
                let (format, path) = conversion.join().map_err(|_| anyhow::anyhow!("a disk conversion panicked"))??;
                outputs.insert(format.file_name().to_string(), output_of(&path)?);
            }
            Ok((outputs, false))
        })
    })?;

    let report = BuildReport {
        oci,
        os_id: spec.os.id.clone(),
        version: version.clone(),
        source_date_epoch: epoch,
        lock: LockReport { path: lock_path.display().to_string(), sha256: lock.digest() },
        toolchain,
        kernel: KernelReport {
            package: kernel.package.clone(),
            version: kernel.version.clone(),
            sha256: kernel.sha256.clone(),
            release: kernel_release.clone(),
            meta_package: kernel_meta.map(|m| format!("{}={}", m.package, m.version)),
        },
        cmdline,
        uki: uki_name,
        esp_entry,
        usr: UsrReport {
            root_hash: hex::encode(params.root_hash),
            salt: hex::encode(params.salt),
            data_blocks: params.data_blocks,
            hash_offset: params.hash_offset,
            erofs_bytes: params.data_blocks * BLOCK_SIZE as u64,
            partition_uuid: usr_a_uuid.to_string(),
            files: stats.files,
            bytes: stats.bytes,
        },
        disk_guid: disk_guid.to_string(),
        disk_size,
        partitions: parts,
        packages: debs,
        initramfs_modules: initrd_modules,
        outputs,
        tuf_root_version: tuf_root.as_ref().map(|(_, version)| *version),
        release,
        steps: steps.times.clone(),
        total_ms: started.elapsed().as_millis() as u64,
    };
    let json = serde_json::to_string_pretty(&report)?;
    cairn_release::durable::write_atomic(&opts.out.join("build.json"), json.as_bytes(), 0o644)
        .context("writing build.json")?;
    Ok(report)
}

fn output_of(path: &Path) -> Result<Output> {
    Ok(Output {
        path: path.file_name().expect("file").to_string_lossy().into_owned(),
        size: std::fs::metadata(path)?.len(),
        sha256: sha256_file(path)?,
    })
}

fn part(number: u32, label: &str, type_guid: Guid, uuid: Guid, mib: u64, content: Option<PathBuf>) -> PartitionSpec {
    PartitionSpec { number, label: label.into(), type_guid, uuid, size_bytes: mib * MIB, offset_bytes: 0, content }
}

/// The one kernel release in the unpacked kernel package (`lib/modules/<release>`).
fn kernel_release(kernel_dir: &Path) -> Result<String> {
    let mods = kernel_dir.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&mods)
        .with_context(|| format!("the kernel package has no {}", mods.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("the kernel package holds {n} module trees, expected one"),
    }
}

/// Appends the superblock and hash tree to the erofs image in place.
fn append_verity(img: &Path, salt: [u8; 32]) -> Result<VerityParams> {
    use std::io::Write;
    let len = std::fs::metadata(img)?.len();
    if len % BLOCK_SIZE as u64 != 0 {
        bail!("{} is {len} bytes, not a whole number of 4 KiB blocks", img.display());
    }
    let data_blocks = len / BLOCK_SIZE as u64;
    let f = std::fs::File::open(img)?;
    let tree = verity::build(std::io::BufReader::with_capacity(1 << 20, f), data_blocks, salt)?;
    let mut f = std::fs::OpenOptions::new().append(true).open(img)?;
    f.write_all(&tree.hash_area)?;
    f.sync_all()?;
    Ok(VerityParams { root_hash: tree.root_hash, salt, data_blocks, hash_offset: len })
}

/// What the /usr cache keeps beside the image.
#[derive(Serialize, serde::Deserialize)]
struct UsrCacheMeta {
    stats: MergeStats,
    root_hash: String,
    data_blocks: u64,
    hash_offset: u64,
}

fn load_usr_cache(dir: &Path) -> Result<Option<(VerityParams, PathBuf, MergeStats)>> {
    let img = dir.join("usr.img");
    let meta = dir.join("verity.json");
    if !img.exists() || !meta.exists() {
        return Ok(None);
    }
    // An entry from an older builder, or a damaged one, is a miss: the image is built again.
    let Ok(UsrCacheMeta { stats, root_hash: root_hex, data_blocks, hash_offset }) =
        serde_json::from_str(&std::fs::read_to_string(&meta)?)
    else {
        return Ok(None);
    };
    // Parameters come back from the superblock the image itself carries.
    let mut sb = vec![0u8; BLOCK_SIZE];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&img)?;
        f.seek(SeekFrom::Start(hash_offset))?;
        f.read_exact(&mut sb)?;
    }
    let sb = verity::Superblock::parse(&sb)?;
    let mut root_hash = [0u8; 32];
    hex::decode_to_slice(&root_hex, &mut root_hash)?;
    if sb.data_blocks != data_blocks {
        return Ok(None);
    }
    Ok(Some((VerityParams { root_hash, salt: sb.salt, data_blocks, hash_offset }, img, stats)))
}

/// Removes the `.ko` files under `mods` (`/usr/lib/modules/<release>`) that `index` does not
/// keep (`kernel.exclude_modules`, and what needs them), and directories left empty.
fn remove_modules_not_in(mods: &Path, index: &ModuleIndex) -> Result<()> {
    let keep: std::collections::HashSet<&str> = index.modules.values().map(|m| m.rel_path.as_str()).collect();
    fn walk(dir: &Path, base: &Path, keep: &std::collections::HashSet<&str>) -> Result<bool> {
        let mut empty = true;
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                if walk(&path, base, keep)? {
                    std::fs::remove_dir(&path)?;
                } else {
                    empty = false;
                }
            } else if path.extension().is_some_and(|x| x == "ko")
                && !keep.contains(&*path.strip_prefix(base).expect("under base").to_string_lossy())
            {
                std::fs::remove_file(&path)?;
            } else {
                empty = false;
            }
        }
        Ok(empty)
    }
    walk(&mods.join("kernel"), mods, &keep)?;
    Ok(())
}
