//! ostree-ext 0.15 stamps each layer's history entry with the time of the export (`ocidir`'s
//! `push_layer`), so two exports of one build would differ in their config and manifest. The
//! entries get the build's time instead, through the same `ocidir` the export wrote with.

use anyhow::{Context, Result};
use ocidir::OciDir;
use ocidir::cap_std::{ambient_authority, fs::Dir};
use ocidir::oci_spec::image::{ImageConfiguration, ImageManifest};
use std::path::Path;

const TAG_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Sets every history entry of image `tag` in the OCI directory `dir` to `created` (RFC 3339).
pub fn set_times(dir: &Path, tag: &str, created: &str) -> Result<()> {
    let oci = OciDir::open(&Dir::open_ambient_dir(dir, ambient_authority())?)?;
    let index = oci.read_index()?.with_context(|| format!("{}: no index.json", dir.display()))?;
    let tagged = |d: &&ocidir::oci_spec::image::Descriptor| {
        d.annotations().as_ref().and_then(|a| a.get(TAG_ANNOTATION)).is_some_and(|t| t == tag)
    };
    let desc = index.manifests().iter().find(tagged).with_context(|| format!("no image tagged {tag}"))?.clone();
    let mut manifest: ImageManifest = oci.read_json_blob(&desc)?;
    let mut config: ImageConfiguration = oci.read_json_blob(manifest.config())?;
    let mut history = config.history().clone();
    for entry in &mut history {
        entry.set_created(Some(created.to_string()));
    }
    config.set_history(history);
    manifest.set_config(oci.write_config(config)?);
    oci.insert_manifest(manifest, Some(tag), desc.platform().clone().unwrap_or_default())?;
    Ok(())
}
