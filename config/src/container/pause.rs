//! The sandbox ("pause") image of containerd's CRI, made on the host from `/usr/sbin/cairn-init`
//! (which is the pause process when run as `/pause`) as an OCI image layout in a tar archive: containerd would otherwise pull `registry.k8s.io/pause`
//! from the internet at the first container. The archive is a pure function of the binary, so
//! its config digest (the image id containerd reports) tells whether the image containerd has is
//! this one.

use sha2::{Digest, Sha256};

/// The name containerd's CRI runs sandboxes from (`sandbox_image` in containerd's config.toml).
pub const IMAGE: &str = "cairn.local/pause:1";
/// The binary the image is made of, on the verified `/usr`: a static executable that is the
/// pause process when its name is `pause`.
pub const BINARY: &str = "/usr/sbin/cairn-init";

/// An OCI image layout archive and the digest of its image config (`sha256:...`).
pub struct Archive {
    pub tar: Vec<u8>,
    pub config_digest: String,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn blob_path(d: &str) -> String {
    format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))
}

/// A tar of `files` (path, mode, content), owned by root, dated 0: the same bytes every time.
fn tar_of(files: &[(&str, u32, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *content)?;
    }
    b.into_inner()
}

/// The image of one static executable as `/pause`, its entrypoint.
pub fn archive(binary: &[u8]) -> std::io::Result<Archive> {
    let layer = tar_of(&[("pause", 0o755, binary)])?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            // The OCI name, and the full name containerd's import gives the image.
            "annotations": {"org.opencontainers.image.ref.name": "1", "io.containerd.image.name": IMAGE},
        }],
    }))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let (layer_path, config_path, manifest_path) =
        (blob_path(&digest(&layer)), blob_path(&digest(&config)), blob_path(&digest(&manifest)));
    let tar = tar_of(&[
        ("oci-layout", 0o644, layout),
        ("index.json", 0o644, &index),
        (&layer_path, 0o644, &layer),
        (&config_path, 0o644, &config),
        (&manifest_path, 0o644, &manifest),
    ])?;
    Ok(Archive { tar, config_digest: digest(&config) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_a_function_of_the_binary() {
        let a = archive(b"\x7fELF one").unwrap();
        let b = archive(b"\x7fELF one").unwrap();
        let c = archive(b"\x7fELF two").unwrap();
        assert_eq!(a.tar, b.tar);
        assert_eq!(a.config_digest, b.config_digest);
        assert_ne!(a.config_digest, c.config_digest);
        let mut names: Vec<String> = tar::Archive::new(&a.tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names.len(), 5);
        assert!(names.contains(&blob_path(&a.config_digest)), "{names:?}");
        assert!(names.contains(&"index.json".to_string()));
    }
}
