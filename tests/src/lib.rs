//! Shared pieces of Cairn's VM tests and benchmarks: images built once and shared, disk
//! inspection (GPT, ESP), and tampering helpers.

pub mod etcd;
pub mod http;
pub mod registry;
pub mod rolling;
pub mod server;
pub mod ssh;
pub mod updates;

use anyhow::{Context, Result, bail};
use cairn_image::build::{BuildOptions, build};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where the workspace lives: the parent of the package cargo runs us from (every package is
/// one level down), else of the tests crate as compiled. (Cargo reuses a build from another
/// clone that shares the target directory, so the path compiled in may be of a deleted clone.)
pub fn workspace() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&package).parent().expect("workspace").to_path_buf()
}

/// A directory for test images, kept between runs so rebuilds are incremental.
pub fn images_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    target.join("cairn-test-images")
}

/// A built image: its directory and what build.json says.
#[derive(Clone, Debug)]
pub struct Image {
    pub dir: PathBuf,
    pub version: String,
    pub report: serde_json::Value,
}

impl Image {
    pub fn raw(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    /// (offset, size) in bytes of the partition labelled `label`.
    pub fn partition(&self, label: &str) -> Result<(u64, u64)> {
        let parts = self.report["partitions"].as_array().context("build.json has no partitions")?;
        let p = parts.iter().find(|p| p["label"] == label).with_context(|| format!("no partition {label}"))?;
        Ok((p["offset_bytes"].as_u64().context("offset")?, p["size_bytes"].as_u64().context("size")?))
    }
}

/// Builds `spec` (relative to the workspace) as `version` into `images_dir()/name`, once per
/// process; concurrent test processes serialize on a lock file.
pub fn image(name: &str, spec: &str, version: &str) -> Result<Image> {
    image_with_cache(name, spec, version, &cairn_image::default_cache_dir())
}

/// Like [`image`] with an explicit build cache.
pub fn image_with_cache(name: &str, spec: &str, version: &str, cache: &Path) -> Result<Image> {
    build_once(name, |dir| BuildOptions { cache: cache.to_path_buf(), ..build_options(spec, version, dir) })
}

/// Like [`image`], with the disk in `formats` too.
pub fn image_in_formats(
    name: &str,
    spec: &str,
    version: &str,
    formats: &[cairn_image::formats::Format],
) -> Result<Image> {
    build_once(name, |dir| BuildOptions { formats: Some(formats.to_vec()), ..build_options(spec, version, dir) })
}

/// Like [`image`], trusting the root of [`test_tuf_repository`] (and no key): the directory
/// holds `release/` for `cairn_tuf::publish`.
pub fn tuf_image(name: &str, spec: &str, version: &str) -> Result<Image> {
    let (feed, _) = test_tuf_repository()?;
    let root = feed.join("metadata/1.root.json");
    build_once(name, |dir| BuildOptions { trust_root: Some(root), ..build_options(spec, version, dir) })
}

/// The TUF repository of tests: `(feed, keys)`, made once (keys are random, so it is kept
/// between runs and images trusting its root hit the build cache). Tests copy it before they
/// publish into it or rotate its keys.
pub fn test_tuf_repository() -> Result<(PathBuf, PathBuf)> {
    let dir = images_dir().join("test-tuf");
    let (feed, keys) = (dir.join("feed"), dir.join("keys"));
    std::fs::create_dir_all(&dir)?;
    let lock_file = std::fs::File::create(images_dir().join("test-tuf.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking the test TUF repository: {e}"))?;
    let root = feed.join("metadata/1.root.json");
    // A root that expires within a month is made again (with new keys): images trusting the
    // old one are rebuilt.
    let fresh =
        std::fs::read(&root).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()).is_some_and(|r| {
            r["signed"]["expires"]
                .as_str()
                .and_then(|e| e.parse::<jiff::Timestamp>().ok())
                .is_some_and(|e| e > jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30))
        });
    if !fresh {
        let _ = std::fs::remove_dir_all(&feed);
        let _ = std::fs::remove_dir_all(&keys);
        cairn_tuf::init(&feed, &keys, unix_now(), cairn_tuf::Expiry::default())?;
    }
    Ok((feed, keys))
}

/// A copy of the test TUF repository in `dir` for a test to publish into: the feed, all its
/// keys, and `online`, the timestamp key alone (what a rollout server holds). Every role but
/// the root is signed afresh, so the copy is valid however old the repository is.
pub struct TufCopy {
    pub feed: PathBuf,
    pub keys: PathBuf,
    pub online: PathBuf,
}

impl TufCopy {
    pub fn new(dir: &Path) -> Result<TufCopy> {
        let (feed, keys) = test_tuf_repository()?;
        let copy = TufCopy { feed: dir.join("feed"), keys: dir.join("keys"), online: dir.join("online") };
        copy_dir(&feed, &copy.feed)?;
        copy_dir(&keys, &copy.keys)?;
        std::fs::create_dir_all(&copy.online)?;
        let timestamp = |dir: &Path| cairn_tuf::keys::path(dir, cairn_tuf::keys::RoleType::Timestamp, 1);
        std::fs::copy(timestamp(&copy.keys), timestamp(&copy.online))?;
        cairn_tuf::resign(&copy.feed, &copy.keys, unix_now(), cairn_tuf::Expiry::default())?;
        Ok(copy)
    }

    /// Signs the release directory `release` into the feed on `channels`.
    pub fn publish(&self, release: &Path, channels: &[&str]) -> Result<()> {
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        cairn_tuf::publish(&self.feed, &self.keys, release, &channels, unix_now(), cairn_tuf::Expiry::default())?;
        Ok(())
    }

    /// Signs `img`'s release into the feed on channel stable.
    pub fn publish_image(&self, img: &Image) -> Result<()> {
        self.publish(&img.dir.join("release"), &["stable"])
    }

    /// `cairn-server serve` arguments serving this feed with the timestamp key alone.
    pub fn serve_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec!["--tuf-repo".into(), path(&self.feed), "--tuf-keys".into(), path(&self.online)]
    }
}

/// `cp -a FROM/. TO` after emptying TO.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    let status = std::process::Command::new("cp").arg("-a").arg(from.join(".")).arg(to).status()?;
    anyhow::ensure!(status.success(), "copying {} to {}", from.display(), to.display());
    Ok(())
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Builds once per process under `images_dir()/name`; concurrent test processes serialize on
/// a lock file.
fn build_once(name: &str, options: impl FnOnce(PathBuf) -> BuildOptions) -> Result<Image> {
    static BUILT: OnceLock<Mutex<HashMap<String, Image>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut map = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(img) = map.get(name) {
        return Ok(img.clone());
    }
    let dir = images_dir().join(name);
    std::fs::create_dir_all(&dir)?;
    let lock_file = std::fs::File::create(images_dir().join(format!("{name}.lock")))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {name}: {e}"))?;
    let opts = options(dir.clone());
    let version = opts.version.clone().unwrap_or_default();
    let report =
        build(&opts).with_context(|| format!("building test image {name} from {}", opts.spec_path.display()))?;
    let img = Image { dir, version, report: serde_json::to_value(&report)? };
    map.insert(name.to_string(), img.clone());
    Ok(img)
}

/// Options for building `spec` (relative to the workspace) as `version` into `out`, as tests
/// and benchmarks do: the default cache, binaries from this workspace, quiet, no qcow2, no root
/// of trust.
pub fn build_options(spec: &str, version: &str, out: PathBuf) -> BuildOptions {
    BuildOptions {
        spec_path: workspace().join(spec),
        version: Some(version.to_string()),
        out,
        cache: cairn_image::default_cache_dir(),
        source_date_epoch: 1_700_000_000,
        binaries: cairn_image::binaries::Source::default_cargo(),
        interactive: false,
        quiet: true,
        formats: Some(vec![cairn_image::formats::Format::Raw]),
        trust_root: None,
        lock: cairn_image::lock::LockMode::Use,
        push: None,
        from: None,
    }
}

/// The default image, as the README's first command builds it.
pub fn default_image() -> Result<Image> {
    image("default", "images/default.toml", "1.0.0")
}

/// The development image: the default container host plus a root shell on the console
/// (`cairn.autologin`), which tests drive with `Vm::run`.
pub fn dev_image() -> Result<Image> {
    image("dev", "images/dev.toml", "1.0.0")
}

/// Container `name`'s bridge address as its runner's last "running ... at ADDRESS (...)" log
/// line in the guest says.
pub fn container_address(vm: &mut cairn_qemu::Vm, name: &str) -> Result<String> {
    let log = format!("/var/log/cairn/container-{name}.log");
    let running =
        vm.run_ok(&format!("grep 'container {name}: running' {log} | tail -1"), std::time::Duration::from_secs(120))?;
    let address = running.trim().rsplit_once(" at ").and_then(|(_, a)| a.split_whitespace().next());
    address.map(str::to_string).with_context(|| format!("{name}'s address in {running:?}"))
}

/// An ISO 9660 config drive as OpenStack Nova makes it (genisoimage, Rock Ridge and Joliet,
/// labelled `config-2`), holding `files` (name, content) in `openstack/latest/`.
pub fn nova_config_drive(dir: &Path, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    let tree = dir.join("config-drive");
    let latest = tree.join("openstack/latest");
    std::fs::create_dir_all(&latest)?;
    for (name, content) in files {
        std::fs::write(latest.join(name), content)?;
    }
    let iso = dir.join("config-2.iso");
    let out = std::process::Command::new("genisoimage")
        .args(["-quiet", "-ldots", "-allow-lowercase", "-allow-multidot", "-l", "-J", "-r", "-V", "config-2", "-o"])
        .arg(&iso)
        .arg(&tree)
        .output()
        .context("genisoimage (./scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("genisoimage: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(iso)
}

/// An OCI image archive (as `ctr images import` takes) named `name`, whose one layer holds the
/// build machine's static busybox at /bin/busybox.
pub fn oci_archive(dir: &Path, name: &str) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    let sh = |cmd: &mut std::process::Command| -> Result<()> {
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let layer_root = dir.join("layer");
    std::fs::create_dir_all(layer_root.join("bin"))?;
    std::fs::copy("/bin/busybox", layer_root.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer_tar = dir.join("layer.tar");
    sh(std::process::Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&layer_root)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("bin"))?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let digest = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes)?;
        Ok((format!("sha256:{digest}"), bytes.len()))
    };
    let (layer_digest, layer_size) = put(&std::fs::read(&layer_tar)?)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/busybox", "true"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] }
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size }]
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag }
        }]
    });
    std::fs::write(oci.join("index.json"), index.to_string())?;
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = dir.join("image.tar");
    sh(std::process::Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"]))?;
    Ok(archive)
}

/// A new, empty build cache that shares only the downloaded packages of the default cache,
/// so a build with it redoes every step but the download.
pub fn fresh_cache_sharing_downloads(dir: &Path) -> Result<PathBuf> {
    let archives = cairn_image::default_cache_dir().join("apt/archives");
    let cache = dir.join("cache");
    let dest = cache.join("apt/archives");
    std::fs::create_dir_all(dest.join("partial"))?;
    for e in std::fs::read_dir(&archives).with_context(|| format!("reading {}", archives.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::hard_link(e.path(), dest.join(e.file_name()))
                .or_else(|_| std::fs::copy(e.path(), dest.join(e.file_name())).map(|_| ()))?;
        }
    }
    Ok(cache)
}

/// A sparse copy of a disk image.
pub fn copy_image(src: &Path, dest: &Path) -> Result<()> {
    let status = std::process::Command::new("cp").arg("--sparse=always").arg(src).arg(dest).status()?;
    if !status.success() {
        bail!("copying {} failed", src.display());
    }
    Ok(())
}

/// Flips the bits of one byte at `offset`.
pub fn flip_byte(path: &Path, offset: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&b)?;
    f.sync_all()?;
    Ok(())
}

/// Physical byte offset, inside an erofs image, of the first extent of the file at `path`.
pub fn erofs_file_offset(usr_img: &Path, path: &str) -> Result<u64> {
    let out = std::process::Command::new("dump.erofs")
        .args(["-e", &format!("--path={path}")])
        .arg(usr_img)
        .output()
        .context("running dump.erofs (package erofs-utils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "   0:        0..   13145 |   13145 :   96559104..  96563200 |    4096"
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("0:"))
        .with_context(|| format!("no extents for {path} in dump.erofs output:\n{text}"))?;
    let physical = line.split(':').nth(2).context("extent line")?;
    let start = physical.split("..").next().context("extent start")?.trim();
    start.parse().with_context(|| format!("extent start {start:?}"))
}

/// The names of the files in a directory of the ESP inside a (raw) disk image.
pub fn esp_listing(raw: &Path, esp_offset: u64, esp_size: u64, dir: &str) -> Result<Vec<String>> {
    let f = std::fs::File::open(raw)?;
    let slice = Slice { f, start: esp_offset, len: esp_size, pos: 0 };
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).context("reading the ESP")?;
    let d = fs.root_dir().open_dir(dir).with_context(|| format!("opening {dir} on the ESP"))?;
    let mut names: Vec<String> =
        d.iter().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| n != "." && n != "..").collect();
    names.sort();
    Ok(names)
}

/// A fresh qcow2 overlay `disk.qcow2` in `dir` over the raw disk `image`, of `size` (as
/// qemu-img takes it, "4G") or the image's own: a disk that outlives one VM (a second boot on
/// it) and leaves the shared image alone.
pub fn disk_over(image: &Path, dir: &Path, size: Option<&str>) -> Result<PathBuf> {
    let disk = dir.join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(image)
        .arg(&disk)
        .args(size)
        .output()?;
    if !out.status.success() {
        bail!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(disk)
}

/// A raw copy of a VM's overlay, to inspect what the guest wrote.
pub fn overlay_to_raw(overlay: &Path, out: &Path) -> Result<()> {
    let o = std::process::Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(overlay).arg(out).output()?;
    if !o.status.success() {
        bail!("qemu-img convert: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

/// A window of a file, so fatfs can read a partition in place.
struct Slice {
    f: std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl std::io::Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        let left = self.len.saturating_sub(self.pos) as usize;
        let n = buf.len().min(left);
        self.f.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.f.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for Slice {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("read-only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::io::Seek for Slice {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.pos = match pos {
            std::io::SeekFrom::Start(p) => p,
            std::io::SeekFrom::End(o) => (self.len as i64 + o) as u64,
            std::io::SeekFrom::Current(o) => (self.pos as i64 + o) as u64,
        };
        Ok(self.pos)
    }
}

/// Parses `cairn: ready version=V slot=S boot_ms=N`.
pub fn parse_ready(line: &str) -> Result<(String, String, u64)> {
    let rest = line.split("cairn: ready ").nth(1).with_context(|| format!("not a ready line: {line}"))?;
    let mut fields = HashMap::new();
    for kv in rest.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            fields.insert(k, v);
        }
    }
    let get = |k: &str| fields.get(k).map(|s| s.to_string()).with_context(|| format!("ready line lacks {k}: {line}"));
    Ok((get("version")?, get("slot")?, get("boot_ms")?.parse()?))
}

/// A port free on loopback now (for a server a test starts).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// As many open files as the hard limit allows: tests and benchmarks that hold thousands of
/// connections need one descriptor each.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_parses() {
        let (v, s, ms) = parse_ready("cairn: ready version=1.2.3 slot=b boot_ms=2345").unwrap();
        assert_eq!((v.as_str(), s.as_str(), ms), ("1.2.3", "b", 2345));
        assert!(parse_ready("cairn: ready version=1").is_err());
    }
}
