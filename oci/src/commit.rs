//! The tree as an OSTree commit, the same bytes from the same tree: every file owned by root
//! (a rootless build's files are the builder's), no extended attributes, the build's time.

use anyhow::{Context, Result, bail};
use ostree_ext::glib::{self, ToVariant};
use ostree_ext::prelude::*;
use ostree_ext::{gio, ostree};
use std::path::Path;

/// The repository at `dir`, created in `mode` if missing (the export's is an archive: what is
/// exported is compressed once).
pub fn open_repo(dir: &Path, mode: ostree::RepoMode) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(dir);
    if dir.join("config").exists() {
        repo.open(gio::Cancellable::NONE)
            .with_context(|| format!("opening the OSTree repository {}", dir.display()))?;
    } else {
        std::fs::create_dir_all(dir)?;
        repo.create(mode, gio::Cancellable::NONE)
            .with_context(|| format!("creating the OSTree repository {}", dir.display()))?;
    }
    Ok(repo)
}

/// Commits `tree` (which must hold `usr/` and nothing else) as `refname`; returns the commit.
pub fn commit_tree(
    repo: &ostree::Repo,
    tree: &Path,
    refname: &str,
    meta: &[(&str, &str)],
    epoch: u64,
) -> Result<String> {
    let names: Vec<String> = std::fs::read_dir(tree)
        .with_context(|| format!("reading {}", tree.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    if names != ["usr"] {
        bail!("{}: the composed tree holds {names:?}, not only usr/", tree.display());
    }
    let tx = repo.auto_transaction(gio::Cancellable::NONE)?;
    let flags = ostree::RepoCommitModifierFlags::SKIP_XATTRS;
    let modifier = ostree::RepoCommitModifier::new(
        flags,
        Some(Box::new(|_repo: &ostree::Repo, _path: &str, info: &gio::FileInfo| {
            info.set_attribute_uint32("unix::uid", 0);
            info.set_attribute_uint32("unix::gid", 0);
            ostree::RepoCommitFilterResult::Allow
        })),
    );
    let mtree = ostree::MutableTree::new();
    repo.write_directory_to_mtree(&gio::File::for_path(tree), &mtree, Some(&modifier), gio::Cancellable::NONE)
        .with_context(|| format!("committing {}", tree.display()))?;
    let root = repo.write_mtree(&mtree, gio::Cancellable::NONE)?;
    let root = root.downcast::<ostree::RepoFile>().map_err(|_| anyhow::anyhow!("the commit's root is no RepoFile"))?;
    let dict = glib::VariantDict::new(None);
    for (key, value) in meta {
        dict.insert_value(key, &value.to_variant());
    }
    let checksum = repo.write_commit_with_time(
        None,
        Some(refname),
        None,
        Some(&dict.end()),
        &root,
        epoch,
        gio::Cancellable::NONE,
    )?;
    repo.transaction_set_ref(None, refname, Some(checksum.as_str()));
    tx.commit(gio::Cancellable::NONE)?;
    Ok(checksum.to_string())
}

/// Every file and symlink of `commit`: (path as `usr/...`, content object checksum).
pub fn content_objects(repo: &ostree::Repo, commit: &str) -> Result<Vec<(String, String)>> {
    let (root, _) = repo.read_commit(commit, gio::Cancellable::NONE)?;
    let mut out = Vec::new();
    walk(&root, "", &mut out)?;
    Ok(out)
}

fn walk(dir: &gio::File, prefix: &str, out: &mut Vec<(String, String)>) -> Result<()> {
    let children = dir.enumerate_children(
        "standard::name,standard::type",
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    )?;
    while let Some(info) = children.next_file(gio::Cancellable::NONE)? {
        let name = info.name();
        let path = format!("{prefix}{}", name.display());
        let child = dir.child(&name);
        if info.file_type() == gio::FileType::Directory {
            walk(&child, &format!("{path}/"), out)?;
        } else {
            let file = child.downcast::<ostree::RepoFile>().map_err(|_| anyhow::anyhow!("{path}: no RepoFile"))?;
            out.push((path, file.checksum().to_string()));
        }
    }
    Ok(())
}
