//! Packages: signed releases, verified against the server's trusted keys before anything of
//! them is stored. The signed documents live in the database; artifacts are uploaded one by one
//! into `DATA/packages/VERSION/` (each checked against the signed size and sha256, written to a
//! temporary file, synced and renamed), or referenced by URL. A package is offered only once
//! complete.

use crate::error::{ApiError, ApiResult};
use crate::rollout::Server;
use crate::store::{self, Package, SignedPackage};
use axum::body::Body;
use cairn_release::admin::{PackageStatus, UploadRequest};
use cairn_release::manifest::{Release, safe_name};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

fn artifacts_dir(data: &Path, version: &str) -> PathBuf {
    data.join("packages").join(version)
}

impl Server {
    fn verify(&self, manifest: &str, signature: &str) -> ApiResult<(Release, String)> {
        let now_s = (self.now_ms() / 1000) as u64;
        let signed_by =
            cairn_release::manifest::verify_signature(manifest.as_bytes(), signature.as_bytes(), &self.trusted)
                .map_err(|e| ApiError::BadRequest(format!("release.json: {e}")))?;
        let release = Release::verify(manifest.as_bytes(), signature.as_bytes(), &self.trusted, now_s)
            .map_err(|e| ApiError::BadRequest(format!("release.json: {e}")))?;
        cairn_release::version::validate(&release.version)
            .map_err(|e| ApiError::BadRequest(format!("release.json: version: {e}")))?;
        Ok((release, signed_by))
    }

    pub async fn upload_package(&self, req: &UploadRequest) -> ApiResult<PackageStatus> {
        let (release, signed_by) = self.verify(&req.manifest, &req.signature)?;
        if let Some(url) = &req.base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ApiError::BadRequest(format!("base_url {url:?}: not an http(s) URL")));
        }
        if req.base_url.is_none() && self.data_dir.is_none() {
            return Err(ApiError::BadRequest(
                "this server stores no artifacts (it runs without --data): give base_url".into(),
            ));
        }
        let sha = hex::encode(Sha256::digest(req.manifest.as_bytes()));
        let signed = SignedPackage {
            package: Package {
                version: release.version.clone(),
                os_id: release.os_id.clone(),
                manifest_sha256: sha.clone(),
                signed_by,
                base_url: req.base_url.clone(),
                complete: req.base_url.is_some(),
                created_at: self.now_ms(),
            },
            manifest: req.manifest.clone(),
            signature: req.signature.clone(),
        };
        if !store::insert_package(&self.db, &signed).await? {
            let existing = self.signed_package(&release.version).await?;
            if existing.package.manifest_sha256 != sha || existing.package.base_url != req.base_url {
                return Err(ApiError::Conflict(format!(
                    "package {} exists with another release.json; versions are immutable (delete it first)",
                    release.version
                )));
            }
        } else {
            tracing::info!(version = release.version, signed_by = signed.package.signed_by, "package added");
        }
        self.package_status(&release.version).await
    }

    pub async fn signed_package(&self, version: &str) -> ApiResult<SignedPackage> {
        store::package(&self.db, version).await?.ok_or_else(|| ApiError::NotFound(format!("no package {version:?}")))
    }

    pub async fn package_status(&self, version: &str) -> ApiResult<PackageStatus> {
        let p = self.signed_package(version).await?;
        let mut missing = Vec::new();
        if p.package.base_url.is_none()
            && let Some(data) = &self.data_dir
        {
            let release: Release = serde_json::from_str(&p.manifest).map_err(|e| ApiError::Internal(e.into()))?;
            let dir = artifacts_dir(data, version);
            for a in &release.artifacts {
                let stored = tokio::fs::metadata(dir.join(&a.name)).await.map(|m| m.len()).ok();
                if stored != Some(a.size) {
                    missing.push((a.name.clone(), a.size));
                }
            }
        }
        Ok(PackageStatus { package: p.package, missing })
    }

    /// Streams one artifact to disk, checked against the signed manifest; a file that does not
    /// match is removed and never becomes visible.
    pub async fn store_artifact(&self, version: &str, name: &str, body: Body) -> ApiResult<PackageStatus> {
        if !safe_name(name) {
            return Err(ApiError::BadRequest(format!("artifact name {name:?}: not a plain file name")));
        }
        let p = self.signed_package(version).await?;
        if p.package.base_url.is_some() {
            return Err(ApiError::BadRequest(format!("the artifacts of {version} are referenced by URL, not stored")));
        }
        let Some(data) = &self.data_dir else {
            return Err(ApiError::BadRequest("this server stores no artifacts (it runs without --data)".into()));
        };
        let release: Release = serde_json::from_str(&p.manifest).map_err(|e| ApiError::Internal(e.into()))?;
        let Some(artifact) = release.artifacts.iter().find(|a| a.name == name) else {
            return Err(ApiError::NotFound(format!("{name:?} is not an artifact of release {version}")));
        };
        let dir = artifacts_dir(data, version);
        tokio::fs::create_dir_all(&dir).await.map_err(|e| ApiError::Internal(e.into()))?;
        let partial = dir.join(format!(".{name}.partial"));
        let result = write_checked(&partial, body, artifact.size, &artifact.sha256).await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, dir.join(name)).await.map_err(|e| ApiError::Internal(e.into()))?;
        sync_dir(&dir).await?;
        tracing::info!(version, artifact = name, size = artifact.size, "artifact stored");
        let status = self.package_status(version).await?;
        if status.missing.is_empty() && !status.package.complete {
            store::mark_package_complete(&self.db, version).await?;
            self.invalidate_groups();
            tracing::info!(version, "package complete");
            return self.package_status(version).await;
        }
        Ok(status)
    }

    pub async fn delete_package(&self, version: &str) -> ApiResult<()> {
        let users = store::package_users(&self.db, version).await?;
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!("package {version} is in use by {}", users.join(", "))));
        }
        if !store::delete_package(&self.db, version).await? {
            return Err(ApiError::NotFound(format!("no package {version:?}")));
        }
        if let Some(data) = &self.data_dir {
            let dir = artifacts_dir(data, version);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the artifacts of a deleted package");
            }
        }
        self.invalidate_groups();
        tracing::info!(version, "package deleted");
        Ok(())
    }

    /// The stored file of an artifact, if this server serves it.
    pub async fn artifact_path(&self, version: &str, name: &str) -> ApiResult<PathBuf> {
        let p = self.signed_package(version).await?;
        let release: Release = serde_json::from_str(&p.manifest).map_err(|e| ApiError::Internal(e.into()))?;
        match (&self.data_dir, release.artifacts.iter().any(|a| a.name == name)) {
            (Some(data), true) if p.package.base_url.is_none() => Ok(artifacts_dir(data, version).join(name)),
            _ => Err(ApiError::NotFound(format!("release {version} has no artifact {name:?} here"))),
        }
    }
}

async fn write_checked(path: &Path, body: Body, size: u64, sha256: &str) -> ApiResult<()> {
    let io = |e: std::io::Error| ApiError::Internal(e.into());
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
        written += chunk.len() as u64;
        if written > size {
            return Err(ApiError::TooLarge(format!("larger than the {size} bytes release.json signs")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    if written != size {
        return Err(ApiError::BadRequest(format!("{written} bytes, but release.json signs {size}")));
    }
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        return Err(ApiError::BadRequest(format!("sha256 {got} does not match the signed {sha256}")));
    }
    file.sync_all().await.map_err(io)?;
    Ok(())
}

async fn sync_dir(dir: &Path) -> ApiResult<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))
}
