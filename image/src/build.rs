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
use crate::usr_cache::{self, UsrImage};
use crate::{binaries, deb, esp, fsimage, tools, uki};
use anyhow::{Context, Result, bail};
use cairn_release::gpt::{self, Guid};
pub use cairn_release::manifest::SourceImage;
use cairn_release::verity::{self, BLOCK_SIZE, VerityParams};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bump when the staged /usr would differ for the same inputs (cache key of the /usr image).
const USR_LAYOUT_VERSION: u32 = 7;

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
    /// Take the OS content from this image (containers-image reference) instead of the spec's
    /// packages and Cairn's binaries.
    pub from: Option<String>,
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
    /// sha256 of the .deb; its unpacked copy is `<cache>/unpacked/<sha256>` (`None`: the
    /// kernel came in an image).
    pub sha256: Option<String>,
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
    /// The lock the packages came from: its path and sha256 (`None`: built from an image).
    pub lock: Option<LockReport>,
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
    /// The image the OS content came from (`--from`).
    pub from: Option<SourceImage>,
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
    if opts.from.is_some() && opts.push.is_some() {
        bail!("--push with --from: the image is one already (copy it with skopeo)");
    }

    tools::check(tools::BUILD_TOOLS, tools::BUILD_FILES)?;
    if opts.push.is_some() {
        tools::check(tools::OCI_TOOLS, &[])?;
    }
    if opts.from.is_some() {
        tools::check(tools::IMPORT_TOOLS, &[])?;
    }
    if opts.from.is_none() && matches!(opts.binaries, binaries::Source::Cargo { .. }) {
        tools::check(&[("cargo", "rustup (https://rustup.rs), or pass --binaries DIR")], &[])?;
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let work = opts.out.join(".work");
    std::fs::create_dir_all(&work)?;

    spec.update.resolve().map_err(|e| anyhow::anyhow!("invalid spec: [update] {e}"))?;
    let tuf_root = match &opts.trust_root {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let version = cairn_tuf::client::check_root(&bytes)
                .map_err(|e| anyhow::anyhow!("--trust-root {}: {e}", path.display()))?;
            Some((bytes, version))
        }
    };
    let common = Common {
        os_release: rootfs::os_release(&spec.os.id, &spec.os.name, &version),
        update_toml: toml::to_string(&spec.update)?,
        // One salt for every release of an OS, not one per version: a salt that changed with
        // the version would change every hash of the tree, and a version bump would download
        // it whole.
        salt: Sha256::digest(format!("cairn verity salt {}", spec.os.id)).into(),
        spec: &spec,
        version: &version,
        work: work.clone(),
        epoch,
        tuf_root,
    };
    let content = match &opts.from {
        None => from_spec(opts, &common, &mut steps)?,
        Some(reference) => from_image(opts, &common, reference, &mut steps)?,
    };
    let Common { os_release, tuf_root, .. } = common;
    let Content { packages, lock, toolchain, kernel, vmlinuz, modules_dir, index, init, usr, oci, from, scratch } =
        content;
    let UsrImage { params, img: usr_img, stats } = usr;
    let kernel_release = kernel.release.clone();
    let initrd_modules = index.closure(&spec.initramfs.modules)?;
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
        initrd.file("init", std::fs::read(&init)?, 0o755);
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
    if let Some(dir) = &scratch {
        std::fs::remove_dir_all(dir)?;
    }

    let uki_name = format!("{}-{version}.efi", spec.os.id);
    let uki_path = opts.out.join(&uki_name);
    steps.run("uki", || {
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
                source_image: from.clone(),
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
        lock,
        toolchain,
        kernel,
        from,
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
        packages,
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

/// The one kernel release in `mods` (a `lib/modules`).
fn kernel_release(mods: &Path) -> Result<String> {
    let mut releases: Vec<String> = std::fs::read_dir(mods)
        .with_context(|| format!("there is no {}", mods.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("{} holds {n} module trees, expected one", mods.display()),
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

/// What every build decides whatever its content comes from.
struct Common<'a> {
    spec: &'a Spec,
    version: &'a str,
    work: PathBuf,
    epoch: u64,
    os_release: String,
    update_toml: String,
    /// The TUF root metadata the image trusts, and its version.
    tuf_root: Option<(Vec<u8>, u64)>,
    salt: [u8; 32],
}

impl Common<'_> {
    /// The files of /usr the build writes itself, over what the packages or the image hold.
    fn write_generated(&self, tree: &Path) -> Result<()> {
        rootfs::write_file(&tree.join("usr/lib/os-release"), self.os_release.as_bytes(), 0o644)?;
        let update_file = cairn_release::update_config::IMAGE_FILE.trim_start_matches('/');
        rootfs::write_file(&tree.join(update_file), self.update_toml.as_bytes(), 0o644)?;
        if let Some((root, _)) = &self.tuf_root {
            rootfs::write_file(&tree.join(cairn_release::layout::TUF_ROOT), root, 0o644)?;
        }
        Ok(())
    }

    /// The start of the /usr cache key: what every /usr image depends on.
    fn usr_key(&self) -> Sha256 {
        let mut h = Sha256::new();
        h.update(format!("layout {USR_LAYOUT_VERSION} epoch {} erofs {:?}\n", self.epoch, fsimage::EROFS_OPTIONS));
        h.update(&self.os_release);
        h.update(&self.update_toml);
        h.update(self.spec.os.id.as_bytes());
        if let Some((root, _)) = &self.tuf_root {
            h.update(b"tuf root ");
            h.update(Sha256::digest(root));
        }
        h.update(self.salt);
        h
    }

    /// The sealed /usr of `tree` (its `usr/`), cached as the entry `entry`.
    fn seal_usr(&self, tree: &Path, entry: &Path, key: &str, stats: MergeStats) -> Result<UsrImage> {
        std::fs::create_dir_all(entry)?;
        let erofs_img = usr_cache::staging_path(entry);
        fsimage::erofs(&tree.join("usr"), &erofs_img, derived_guid(key.as_bytes(), "erofs"), self.epoch)?;
        let params = append_verity(&erofs_img, self.salt)?;
        usr_cache::store(entry, params, stats)
    }
}

/// The OS content, from the spec's packages and Cairn's binaries or from an image, and what the
/// boot parts take from it.
struct Content {
    /// The packages composed (none for an image: they are in it).
    packages: Vec<Deb>,
    lock: Option<LockReport>,
    toolchain: Option<String>,
    kernel: KernelReport,
    /// The kernel image, for the UKI.
    vmlinuz: PathBuf,
    /// The kernel's modules (`.../lib/modules/<release>`) and what of them the image keeps.
    modules_dir: PathBuf,
    index: ModuleIndex,
    /// The `cairn-init` the initramfs runs (the one in /usr).
    init: PathBuf,
    usr: UsrImage,
    oci: Option<OciReport>,
    from: Option<SourceImage>,
    /// A directory the build uses until the initramfs is made, then removes.
    scratch: Option<PathBuf>,
}

/// The paths a derived image may not change: Cairn's binaries (PID 1 and its names, the
/// agent), os-release and the keys and feed releases are trusted by.
fn protected_paths(spec: &Spec) -> Vec<String> {
    let sbin = spec.cairn.binaries.iter().map(String::as_str).chain(INIT_NAMES);
    let mut paths: Vec<String> = sbin.map(|b| format!("usr/sbin/{b}")).collect();
    paths.push("usr/lib/os-release".into());
    paths.push("usr/share/factory/etc/os-release".into());
    paths.push(cairn_release::update_config::IMAGE_FILE.trim_start_matches('/').into());
    let tuf_dir = Path::new(cairn_release::layout::TUF_ROOT).parent().expect("the TUF root is in a directory");
    paths.push(tuf_dir.display().to_string());
    paths
}

/// The names `cairn-init` answers to besides its own (symlinks in /usr/sbin).
const INIT_NAMES: [&str; 5] = ["init", "cairnctl", "reboot", "poweroff", "halt"];

/// The content from the spec: packages resolved through the lock and unpacked, Cairn's
/// binaries, overlays; exported as an OCI image too when `--push` asks.
fn from_spec(opts: &BuildOptions, c: &Common, steps: &mut Steps) -> Result<Content> {
    let spec = c.spec;
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

    let kernel_release = kernel_release(&kernel_dir.join("lib/modules"))?;
    let modules_dir = kernel_dir.join("lib/modules").join(&kernel_release);
    let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{kernel_release}"));
    let index = steps.run("kernel modules", || Ok((kernel_index(spec, &modules_dir)?, false)))?;

    let overlays: Vec<PathBuf> = spec.overlay.iter().map(|o| spec.base_dir.join(o)).collect();
    for dir in &overlays {
        rootfs::check_overlay(dir)?;
    }

    // The /usr image is cached by everything that goes into it.
    let usr_key = (|| -> Result<String> {
        let mut h = c.usr_key();
        for d in debs.iter().chain([&kernel]) {
            h.update(format!("deb {} {}\n", d.filename, d.sha256));
        }
        for b in &bins {
            h.update(format!("bin {} {}\n", b.name, b.sha256));
        }
        for x in &spec.packages.exclude {
            h.update(format!("exclude {x}\n"));
        }
        for dir in &overlays {
            h.update(rootfs::tree_digest(dir)?);
        }
        Ok(hex::encode(h.finalize()))
    })()?;
    let usr_entry = opts.cache.join("usr").join(&usr_key[..32]);
    // The composed tree: `usr/` (the factory /etc inside it) from the packages, the kernel's
    // modules, overlays, Cairn's binaries and generated files.
    let tree = c.work.join("tree");
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
        prune_modules(&mods_dest, &index)?;
        rootfs::busybox_links(&tree)?;
        for dir in &overlays {
            rootfs::link_tree(dir, &tree, &mut MergeStats::default())?;
        }
        for b in &bins {
            rootfs::write_file(&usr.join("sbin").join(&b.name), &std::fs::read(&b.path)?, 0o755)?;
        }
        // One binary, several names: PID 1, its control client, and the power commands.
        for name in INIT_NAMES {
            let link = usr.join("sbin").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("cairn-init", &link)?;
        }
        c.write_generated(&tree)?;
        rootfs::write_factory_etc(&tree, &spec.os.id)?;
        Ok(stats)
    };
    // Whether `tree` holds this build's composition (a tree left by an earlier build is no
    // witness: it may be another spec's).
    let (usr, composed) = steps.run("/usr erofs + verity", || {
        if let Some(usr) = usr_cache::load(&usr_entry)? {
            return Ok(((usr, false), true));
        }
        let stats = compose()?;
        let usr = c.seal_usr(&tree, &usr_entry, &usr_key, stats)?;
        if opts.push.is_none() {
            std::fs::remove_dir_all(&tree)?;
        }
        Ok(((usr, opts.push.is_some()), false))
    })?;
    let kernel_label = format!("{}={}", kernel.package, kernel.version);
    let oci = match &opts.push {
        None => None,
        Some(dest) => Some(steps.run("OCI image", || {
            if !composed {
                compose()?;
            }
            // The kernel travels in the image where bootc images keep it; a release has it in
            // the UKI, and its /usr does not carry it twice.
            let modules = Path::new("usr/lib/modules").join(&kernel_release);
            rootfs::write_file(&tree.join(&modules).join(KERNEL_IN_IMAGE), &std::fs::read(&vmlinuz)?, 0o644)?;
            let mut owners = cairn_oci::owners::Owners::new();
            for (deb, dir) in debs.iter().zip(&unpacked) {
                rootfs::claim(dir, &rootfs::destination, &deb.package, &mut owners)?;
            }
            rootfs::claim(&modules_dir, &|rel| Some(modules.join(rel)), &kernel.package, &mut owners)?;
            owners.insert(modules.join(KERNEL_IN_IMAGE).display().to_string(), kernel.package.clone());
            for dir in &overlays {
                rootfs::claim(dir, &|rel| Some(rel.to_path_buf()), "overlay", &mut owners)?;
            }
            let digest = cairn_oci::export(&cairn_oci::Export {
                tree: &tree,
                owners: &owners,
                repo: &opts.cache.join("ostree"),
                os_id: &spec.os.id,
                version: c.version,
                root_hash: &hex::encode(usr.params.root_hash),
                kernel: &kernel_label,
                epoch: c.epoch,
                dest,
            })?;
            std::fs::remove_dir_all(&tree)?;
            Ok((OciReport { reference: dest.clone(), digest }, false))
        })?),
    };
    let init = bins.iter().find(|b| b.name == "cairn-init").context("no cairn-init binary")?.path.clone();
    Ok(Content {
        lock: Some(LockReport { path: lock_path.display().to_string(), sha256: lock.digest() }),
        toolchain,
        kernel: KernelReport {
            package: kernel.package.clone(),
            version: kernel.version.clone(),
            sha256: Some(kernel.sha256.clone()),
            release: kernel_release,
            meta_package: kernel_meta.map(|m| format!("{}={}", m.package, m.version)),
        },
        packages: debs,
        vmlinuz,
        modules_dir,
        index,
        init,
        usr,
        oci,
        from: None,
        scratch: None,
    })
}

/// Where an exported image keeps the kernel, in `usr/lib/modules/<release>/` (as bootc does).
const KERNEL_IN_IMAGE: &str = "vmlinuz";

/// The content from an image (`cairn build --push`'s, or one derived from it): imported
/// through ostree-ext, refused if its derived layers touch what Cairn's boot depends on, and
/// sealed like a composed tree. The kernel, its modules and `cairn-init` are the image's; the
/// spec gives the rest (kernel command line, initramfs, partitions, update settings, os-release).
fn from_image(opts: &BuildOptions, c: &Common, reference: &str, steps: &mut Steps) -> Result<Content> {
    let spec = c.spec;
    let repo = opts.cache.join("ostree-import");
    let image = steps.run("import image", || {
        let image = cairn_oci::import::import(reference, &repo)?;
        let fetched = image.fetched;
        Ok((image, !fetched))
    })?;
    let os = image.labels.get(cairn_oci::LABEL_OS);
    if os != Some(&spec.os.id) {
        bail!(
            "{reference}: not an image of {:?} (its label {} is {os:?}): it must be, or derive from, the image \
             `cairn build --push` writes",
            spec.os.id,
            cairn_oci::LABEL_OS
        );
    }
    cairn_oci::import::check(&repo, &image, reference, &protected_paths(spec))?;

    let tree = c.work.join("tree");
    let (kernel_release, vmlinuz, init, index, stats) = steps.run("check out image", || {
        if tree.exists() {
            std::fs::remove_dir_all(&tree)?;
        }
        cairn_oci::import::checkout(&repo, &image.merged, &tree)?;
        let usr = tree.join("usr");
        let release = kernel_release(&usr.join("lib/modules"))?;
        let modules_dir = usr.join("lib/modules").join(&release);
        let vmlinuz = c.work.join("vmlinuz");
        std::fs::rename(modules_dir.join(KERNEL_IN_IMAGE), &vmlinuz).with_context(|| {
            format!("{reference}: the image has no kernel at /usr/lib/modules/{release}/{KERNEL_IN_IMAGE}")
        })?;
        let init = c.work.join("cairn-init");
        std::fs::copy(usr.join("sbin/cairn-init"), &init)
            .with_context(|| format!("{reference}: the image has no /usr/sbin/cairn-init"))?;
        // The image's modules are what its spec kept (`kernel.exclude_modules` was applied when
        // it was composed).
        let index = ModuleIndex::scan(&modules_dir)?;
        index.modules_dep().with_context(|| format!("{reference}: the image's kernel modules"))?;
        c.write_generated(&tree)?;
        Ok(((release, vmlinuz, init, index, rootfs::tree_stats(&tree)?), false))
    })?;
    let key = {
        let mut h = c.usr_key();
        h.update(format!("image commit {}\n", image.merged));
        hex::encode(h.finalize())
    };
    let usr_entry = opts.cache.join("usr").join(&key[..32]);
    let usr = steps.run("/usr erofs + verity", || match usr_cache::load(&usr_entry)? {
        Some(usr) => Ok((usr, true)),
        None => Ok((c.seal_usr(&tree, &usr_entry, &key, stats)?, false)),
    })?;
    let (package, version) = match image.labels.get(cairn_oci::LABEL_KERNEL).and_then(|k| k.split_once('=')) {
        Some((p, v)) => (p.to_string(), v.to_string()),
        None => bail!("{reference}: the image has no {} label naming its kernel package", cairn_oci::LABEL_KERNEL),
    };
    Ok(Content {
        packages: Vec::new(),
        lock: None,
        toolchain: None,
        kernel: KernelReport { package, version, sha256: None, release: kernel_release.clone(), meta_package: None },
        vmlinuz,
        modules_dir: tree.join("usr/lib/modules").join(&kernel_release),
        index,
        init,
        usr,
        oci: None,
        from: Some(SourceImage { reference: reference.to_string(), digest: image.digest }),
        scratch: Some(tree),
    })
}

/// The kernel's modules the spec keeps: all but `kernel.exclude_modules` (and what needs them).
fn kernel_index(spec: &Spec, modules_dir: &Path) -> Result<ModuleIndex> {
    let mut index = ModuleIndex::scan(modules_dir)?;
    index.exclude(&spec.kernel.exclude_modules, &spec.kernel.keep_modules)?;
    // Every module kept must have its dependencies kept.
    index.modules_dep()?;
    Ok(index)
}

/// Leaves in `mods` (`usr/lib/modules/<release>` of the tree) the modules `index` keeps, and
/// their indexes.
fn prune_modules(mods: &Path, index: &ModuleIndex) -> Result<()> {
    remove_modules_not_in(mods, index)?;
    rootfs::write_file(&mods.join("modules.dep"), index.modules_dep()?.as_bytes(), 0o644)?;
    rootfs::write_file(&mods.join("modules.alias"), index.modules_alias(None, false).as_bytes(), 0o644)?;
    Ok(())
}
