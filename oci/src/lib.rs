//! The composed OS (what becomes `/usr`, the factory `/etc` inside it) as an OCI image, through
//! `ostree-ext`: committed into an OSTree repository in the build cache (content-addressed: a
//! rebuild stores only what changed), then encapsulated as a "chunked" image whose layers follow
//! the Debian packages the files came from, labelled with the release it matches.
//!
//! - `commit.rs`: the tree as a reproducible commit (root-owned, no xattrs, the build's time);
//! - `owners.rs` (pure): which component each content object belongs to, for the layers;
//! - `history.rs`: the layers' history entries at the build's time (ostree-ext stamps the
//!   export's), so that two exports of one build are the same image;
//! - `import.rs`: the way back, an image (maybe derived with a Containerfile) imported and
//!   checked, for `cairn build --from`;
//! - this file: the export itself, staged as an OCI directory, then copied by `skopeo` to any
//!   containers-image reference (`oci:DIR:TAG`, `oci-archive:FILE`, `docker://REGISTRY/NAME:TAG`;
//!   registries as `registries.conf` says).
//!
//! Only the builder links this crate (and with it libostree); host binaries never do.

mod commit;
mod history;
pub mod import;
pub mod owners;

use anyhow::{Context, Result};
use ostree_ext::container::{Config, ExportOpts, ImageReference, Transport, encapsulate};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;

/// Labels on every exported image.
pub const LABEL_VERSION: &str = "org.opencontainers.image.version";
pub const LABEL_OS: &str = "io.cairn.os";
pub const LABEL_ROOT_HASH: &str = "io.cairn.verity-root-hash";
/// The kernel package in the image (`package=version`), at `/usr/lib/modules/<release>/vmlinuz`.
pub const LABEL_KERNEL: &str = "io.cairn.kernel";

/// What to export and where.
pub struct Export<'a> {
    /// The composed root: `usr/` and nothing else.
    pub tree: &'a Path,
    /// Each path under `tree` (as `usr/...`) and the component (package) it came from.
    pub owners: &'a owners::Owners,
    /// The OSTree repository (created if missing).
    pub repo: &'a Path,
    pub os_id: &'a str,
    pub version: &'a str,
    /// The verity root hash of the matching release's `/usr` image.
    pub root_hash: &'a str,
    /// The kernel package in the tree, `package=version`.
    pub kernel: &'a str,
    /// The build's time (`SOURCE_DATE_EPOCH`): the commit's and the image's.
    pub epoch: u64,
    /// A containers-image reference.
    pub dest: &'a str,
}

/// Commits and encapsulates; returns the image's manifest digest (`sha256:...`).
pub fn export(e: &Export) -> Result<String> {
    let _: ImageReference =
        e.dest.try_into().with_context(|| format!("{}: not an image reference (oci:DIR:TAG, docker://...)", e.dest))?;
    let repo = commit::open_repo(e.repo, ostree_ext::ostree::RepoMode::Archive)?;
    let refname = format!("cairn/{}/{}", e.os_id, e.version);
    let meta = [("version", e.version), (LABEL_ROOT_HASH, e.root_hash)];
    let checksum = commit::commit_tree(&repo, e.tree, &refname, &meta, e.epoch)?;
    let objects = commit::content_objects(&repo, &checksum)?;
    let contentmeta = owners::object_meta(e.owners, &objects);
    let components = contentmeta.set.len() as u32;
    let sized = ostree_ext::chunking::ObjectMetaSized::compute_sizes(&repo, contentmeta)?;

    let labels = BTreeMap::from([
        (LABEL_VERSION.to_string(), e.version.to_string()),
        (LABEL_OS.to_string(), e.os_id.to_string()),
        (LABEL_ROOT_HASH.to_string(), e.root_hash.to_string()),
        (LABEL_KERNEL.to_string(), e.kernel.to_string()),
    ]);
    let config = Config { labels: Some(labels), cmd: None };
    let mut opts = ExportOpts::default();
    opts.contentmeta = Some(&sized);
    // A layer per component, and the commit's: a one-package change changes its layer (and
    // the commit's). ostree-ext packs into no fewer than MIN_LAYERS.
    opts.max_layers = NonZeroU32::new((components + 1).max(MIN_LAYERS));
    let created = rfc3339(e.epoch);
    opts.created = Some(created.clone());

    let staging = tempfile::Builder::new().prefix("oci-export").tempdir_in(e.repo.parent().unwrap_or(e.repo))?;
    let staged = staging.path().join("oci");
    let local = ImageReference { transport: Transport::OciDir, name: format!("{}:{STAGED_TAG}", staged.display()) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(encapsulate(&repo, &refname, &config, Some(opts), &local)).context("encapsulating the commit")?;
    history::set_times(&staged, STAGED_TAG, &created)?;
    copy(&format!("oci:{}:{STAGED_TAG}", staged.display()), e.dest, staging.path())
}

const STAGED_TAG: &str = "cairn";
/// ostree-ext's `MIN_CHUNKED_LAYERS`: it refuses a smaller `max_layers`.
const MIN_LAYERS: u32 = 4;

/// `skopeo copy` with the digests as they are; returns the manifest digest.
fn copy(from: &str, to: &str, work: &Path) -> Result<String> {
    let digest_file = work.join("digest");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--digestfile"])
        .arg(&digest_file)
        .args([from, to])
        .output()
        .context("running skopeo (Debian package skopeo; ./scripts/setup.sh installs it)")?;
    if !out.status.success() {
        anyhow::bail!("writing the image to {to}: skopeo copy: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(std::fs::read_to_string(&digest_file)?.trim().to_string())
}

/// `epoch` (seconds since 1970, UTC) as RFC 3339.
fn rfc3339(epoch: u64) -> String {
    let (days, secs) = (epoch / 86400, epoch % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
