//! An OS image (Cairn's, or one derived from it with a Containerfile) imported through
//! ostree-ext's container store: the layers are cached as commits in a bare-user repository
//! (`CAIRN_CACHE/ostree-import`), so a second import fetches only layers it has not seen, and the
//! derived layers are merged over the base commit. What the merge changed is then checked
//! against the paths Cairn's boot depends on before anything is built from it.

use anyhow::{Context, Result, bail};
use ostree_ext::container::store::{ImageImporter, LayeredImageState, META_FILTERED, MetaFilteredData, PrepareResult};
use ostree_ext::container::{ImageReference, OstreeImageReference, SignatureSource};
use ostree_ext::containers_image_proxy::ImageProxyConfig;
use ostree_ext::prelude::*;
use ostree_ext::{gio, glib, ostree};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::Path;

/// An imported image.
#[derive(Debug)]
pub struct Imported {
    /// The manifest digest (`sha256:...`).
    pub digest: String,
    /// The commit of the image's own (chunked) layers: the Cairn image it was derived from.
    pub base: String,
    /// The base with every derived layer applied: the OS content.
    pub merged: String,
    /// The image configuration's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether any layer was fetched (false: every layer was in the cache).
    pub fetched: bool,
}

/// Imports `reference` (`oci:DIR:TAG`, `oci-archive:FILE`, `docker://...`) into the
/// repository at `repo` (created if missing).
pub fn import(reference: &str, repo: &Path) -> Result<Imported> {
    let imgref: ImageReference = reference
        .try_into()
        .with_context(|| format!("{reference}: not an image reference (oci:DIR:TAG, docker://...)"))?;
    // Whether to trust the image is the operator's registry policy (containers-policy.json, as
    // skopeo applies it); the release built from it is signed by the builder's keys.
    let imgref = OstreeImageReference { sigverify: SignatureSource::ContainerPolicyAllowInsecure, imgref };
    let repo = open_bare_user(repo)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (state, fetched) = runtime
        .block_on(async {
            let config = ImageProxyConfig { authfile: registry_auth_file(), ..Default::default() };
            let mut importer = ImageImporter::new(&repo, &imgref, config).await?;
            match importer.prepare().await? {
                PrepareResult::AlreadyPresent(state) => Ok::<_, anyhow::Error>((state, false)),
                PrepareResult::Ready(prepared) => Ok((importer.import(prepared).await?, true)),
            }
        })
        .with_context(|| format!("importing {reference}"))?;
    Ok(imported(&state, fetched))
}

/// The credentials file containers tools use (`skopeo login` writes it): `REGISTRY_AUTH_FILE`,
/// else `$XDG_RUNTIME_DIR/containers/auth.json`, else `~/.config/containers/auth.json`.
/// ostree-ext would otherwise read only its own (`/etc/ostree/auth.json`) and pull anonymously.
fn registry_auth_file() -> Option<std::path::PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        return Some(file);
    }
    let candidates = [
        env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")),
        env("HOME").map(|d| d.join(".config/containers/auth.json")),
    ];
    candidates.into_iter().flatten().find(|f| f.is_file())
}

fn imported(state: &LayeredImageState, fetched: bool) -> Imported {
    let labels = state.configuration.config().as_ref().and_then(|c| c.labels().clone()).unwrap_or_default();
    Imported {
        digest: state.manifest_digest.to_string(),
        base: state.base_commit.clone(),
        merged: state.merge_commit.clone(),
        labels: labels.into_iter().collect(),
        fetched,
    }
}

/// The repository at `dir`, created in bare-user mode if missing: ostree-ext merges layers by
/// hard-linking checkouts, which an archive repository cannot.
fn open_bare_user(dir: &Path) -> Result<ostree::Repo> {
    crate::commit::open_repo(dir, ostree::RepoMode::BareUser)
}

/// What a path is in a commit: absent, or its object checksums (a file's content object; a
/// directory's contents and metadata), so two commits can be compared path by path.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    Absent,
    Object(String),
}

/// `path` in the commit whose root is `root`.
fn identity(root: &gio::File, path: &str) -> Result<Identity> {
    let file = root.resolve_relative_path(path);
    let file = file.downcast::<ostree::RepoFile>().map_err(|_| anyhow::anyhow!("{path}: no RepoFile"))?;
    if file.ensure_resolved().is_err() {
        return Ok(Identity::Absent);
    }
    let info =
        match file.query_info("standard::type", gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS, gio::Cancellable::NONE) {
            Ok(info) => info,
            Err(e) if e.matches(gio::IOErrorEnum::NotFound) => return Ok(Identity::Absent),
            Err(e) => return Err(e).with_context(|| format!("reading {path} in a commit")),
        };
    Ok(Identity::Object(match info.file_type() {
        gio::FileType::Directory => {
            format!(
                "dir {} {}",
                file.tree_get_contents_checksum().unwrap_or_default(),
                file.tree_get_metadata_checksum().unwrap_or_default()
            )
        }
        _ => format!("file {}", file.checksum()),
    }))
}

/// Those of `paths` (as `usr/...`) that `merged` has otherwise than `base`: changed, added or
/// removed by the derived layers.
fn changed(base: &gio::File, merged: &gio::File, paths: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for path in paths {
        if identity(base, path)? != identity(merged, path)? {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// What the merge holds outside what becomes `/usr`, or dropped: ostree-ext moves a layer's
/// `/etc` to `usr/etc` and `/var` to `usr/share/factory/var`, and leaves out other top-level
/// directories (recording them in the commit's metadata). None of these would reach a Cairn
/// host (its `/etc` comes from `usr/share/factory/etc` and the host's config, `/var` is made
/// at boot), so an image that has them is refused rather than quietly losing them.
fn misplaced(repo: &ostree::Repo, base: &gio::File, merged: &gio::File, merged_commit: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for path in ["usr/etc", "usr/share/factory/var"] {
        if identity(base, path)? != identity(merged, path)? {
            out.push(format!("/{}", path.trim_start_matches("usr/").replace("share/factory/", "")));
        }
    }
    let (commit, _) = repo.load_commit(merged_commit)?;
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    if let Some(filtered) = meta.lookup::<MetaFilteredData>(META_FILTERED)? {
        for (top, count) in filtered.values().flatten() {
            out.push(format!("/{top} ({count} entries)"));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks `commit` out to `dest` (which must not exist) as plain copies: the build writes into
/// the tree, and a hard link would write into the repository.
pub fn checkout(repo_dir: &Path, commit: &str, dest: &Path) -> Result<()> {
    let repo = open_bare_user(repo_dir)?;
    let parent = dest.parent().context("checkout destination has no parent")?;
    let name = dest.file_name().context("checkout destination has no name")?;
    let dir = std::fs::File::open(parent).with_context(|| format!("opening {}", parent.display()))?;
    let opts = ostree::RepoCheckoutAtOptions {
        mode: ostree::RepoCheckoutMode::User,
        force_copy: true,
        process_whiteouts: false,
        ..Default::default()
    };
    repo.checkout_at(Some(&opts), dir.as_raw_fd(), name, commit, gio::Cancellable::NONE)
        .with_context(|| format!("checking out {commit} to {}", dest.display()))?;
    Ok(())
}

/// Refuses an image whose derived layers touch `protected` paths (or put content where it
/// would be lost); names every such path.
pub fn check(repo_dir: &Path, image: &Imported, reference: &str, protected: &[String]) -> Result<()> {
    let repo = open_bare_user(repo_dir)?;
    let (base, _) = repo.read_commit(&image.base, gio::Cancellable::NONE)?;
    let (merged, _) = repo.read_commit(&image.merged, gio::Cancellable::NONE)?;
    let touched = changed(&base, &merged, protected)?;
    if !touched.is_empty() {
        bail!(
            "{reference}: the image changes what Cairn's boot depends on, which a derived image may not: {}",
            touched.iter().map(|p| format!("/{p}")).collect::<Vec<_>>().join(", ")
        );
    }
    let lost = misplaced(&repo, &base, &merged, &image.merged)?;
    if !lost.is_empty() {
        bail!(
            "{reference}: the image puts content outside /usr, which a Cairn host never sees (its /etc is \
             /usr/share/factory/etc and the host's config, /var is made at boot): {}",
            lost.join(", ")
        );
    }
    Ok(())
}
