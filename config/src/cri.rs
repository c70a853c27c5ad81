//! containerd's CRI, over its socket. The image service pulls an image by reference: containerd
//! resolves it through the registry's `hosts.toml` (mirrors, plain HTTP, CAs: `crate::registry`)
//! and unpacks it; credentials go in the request, never in an argument or a log line. Its
//! verbose status gives what a container is made from (`Runnable`); containers themselves are
//! made through containerd's own API (`crate::containerd`), without CRI's sandboxes.

use crate::registry::Credentials;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// containerd's API socket.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// The longest a question about an image may take, and a whole pull: a containerd that does not
/// answer (still starting, stuck) is an error, which init retries, never a runner hung for ever.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The containerd namespace CRI keeps its images in (`ctr -n k8s.io`).
pub const NAMESPACE: &str = "k8s.io";

/// A gRPC channel to the API socket at `socket`, made on `runtime`.
pub(crate) fn unix_channel(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    runtime.block_on(async {
        // The URI is not used: every connection goes to the socket.
        Endpoint::from_static("http://containerd")
            .connect_timeout(ASK_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
    })
}

/// Why a pull failed, in the kinds a user acts on; each names the image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PullError {
    #[error("{image}: no such image or tag in the registry ({detail})")]
    NotFound { image: String, detail: String },
    #[error("{image}: the registry refused the credentials, or needs some (cairn.registries) ({detail})")]
    Unauthorized { image: String, detail: String },
    #[error("{image}: the registry cannot be reached ({detail})")]
    Unreachable { image: String, detail: String },
    #[error("{image}: {detail}")]
    Other { image: String, detail: String },
    #[error("containerd's image service at {socket}: {detail}")]
    Containerd { socket: String, detail: String },
}

impl PullError {
    /// Sorts containerd's answer to a pull of `image` (a gRPC code and containerd's message,
    /// which carries the registry's status) into what a user can act on.
    pub fn classify(image: &str, code: tonic::Code, message: &str) -> PullError {
        let (image, detail) = (image.to_string(), message.to_string());
        let lower = message.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if has(&["401 unauthorized", "403 forbidden", "unauthorized", "authorization failed"]) {
            PullError::Unauthorized { image, detail }
        } else if code == tonic::Code::NotFound || has(&[": not found", "manifest unknown", "404 not found"]) {
            PullError::NotFound { image, detail }
        } else if has(&["connection refused", "no such host", "i/o timeout", "dial tcp", "network is unreachable"]) {
            PullError::Unreachable { image, detail }
        } else {
            PullError::Other { image, detail }
        }
    }
}

/// What containerd knows of an image: its id and the `repo@sha256:...` names it was pulled by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub repo_digests: Vec<String>,
}

/// The `info` of a verbose image status: JSON texts by key.
type Verbose = HashMap<String, String>;

/// A client of containerd's CRI (blocking: it runs its own small runtime).
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri, PullError> {
        let fail = |detail: String| PullError::Containerd { socket: socket.display().to_string(), detail };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("a runtime: {e}")))?;
        let channel = unix_channel(&runtime, socket).map_err(|e| fail(e.to_string()))?;
        Ok(Cri { runtime, client: ImageServiceClient::new(channel), socket: socket.to_path_buf() })
    }

    /// Pulls `image` (a normalized reference), with `credentials` for its registry if any.
    pub fn pull(&mut self, image: &str, credentials: Option<&Credentials>) -> Result<(), PullError> {
        let auth = credentials.map(|c| AuthConfig {
            username: c.username.clone(),
            password: c.password.0.clone(),
            ..AuthConfig::default()
        });
        let request = PullImageRequest { image: Some(spec(image)), auth, sandbox_config: None };
        let client = &mut self.client;
        // The timer is made inside the runtime: it needs its time driver.
        let reply =
            self.runtime.block_on(async { tokio::time::timeout(PULL_TIMEOUT, client.pull_image(request)).await });
        match reply {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(PullError::classify(image, status.code(), status.message())),
            Err(_) => {
                Err(PullError::Other { image: image.into(), detail: format!("no answer within {PULL_TIMEOUT:?}") })
            }
        }
    }

    /// What containerd has of `image`, if anything.
    pub fn status(&mut self, image: &str) -> Result<Option<ImageInfo>, PullError> {
        Ok(self.image_status(image, false)?.map(|(info, _)| info))
    }

    /// The layers and config of `image`, which containerd has.
    pub fn runnable(&mut self, image: &str) -> Result<Runnable, PullError> {
        let other = |detail: String| PullError::Other { image: image.into(), detail };
        let (_, verbose) =
            self.image_status(image, true)?.ok_or_else(|| other("containerd does not have it".into()))?;
        let info = verbose.get("info").ok_or_else(|| other("containerd's image status has no info".into()))?;
        runnable_of(image, info).map_err(other)
    }

    fn image_status(&mut self, image: &str, verbose: bool) -> Result<Option<(ImageInfo, Verbose)>, PullError> {
        let request = ImageStatusRequest { image: Some(spec(image)), verbose };
        let client = &mut self.client;
        let fail = |detail: String| PullError::Containerd { socket: self.socket.display().to_string(), detail };
        let reply = self
            .runtime
            .block_on(async { tokio::time::timeout(ASK_TIMEOUT, client.image_status(request)).await })
            .map_err(|_| fail(format!("no answer within {ASK_TIMEOUT:?}")))?
            .map_err(|s| fail(s.message().to_string()))?;
        let reply = reply.into_inner();
        Ok(reply.image.map(|i| (ImageInfo { id: i.id, repo_digests: i.repo_digests }, reply.info)))
    }
}

/// What a container of an image is made from: the image's layers (their chain id, the parent
/// of the container's snapshot) and its config (command, environment, user).
#[derive(Debug, Clone, PartialEq)]
pub struct Runnable {
    pub chain_id: String,
    pub config: crate::container::spec::ImageConfig,
}

/// The runnable parts of CRI's verbose image status (`info["info"]`, containerd's
/// `{"chainID": ..., "imageSpec": {"config": {...}}}`).
pub fn runnable_of(image: &str, info: &str) -> Result<Runnable, String> {
    #[derive(serde::Deserialize)]
    struct Verbose {
        #[serde(rename = "chainID")]
        chain_id: String,
        #[serde(rename = "imageSpec")]
        image_spec: Spec,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        config: crate::container::spec::ImageConfig,
    }
    let v: Verbose = serde_json::from_str(info).map_err(|e| format!("{image}: containerd's image status: {e}"))?;
    if !v.chain_id.starts_with("sha256:") {
        return Err(format!("{image}: containerd's image status has no chain id ({:?})", v.chain_id));
    }
    Ok(Runnable { chain_id: v.chain_id, config: v.image_spec.config })
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..ImageSpec::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn an_images_layers_and_config_are_read_from_its_verbose_status() {
        let info = r#"{"chainID":"sha256:abc","imageSpec":{"architecture":"amd64","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"User":"www"},"rootfs":{"type":"layers","diff_ids":["sha256:1"]}}}"#;
        let r = runnable_of("web", info).unwrap();
        assert_eq!(r.chain_id, "sha256:abc");
        assert_eq!(r.config.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(r.config.user.as_deref(), Some("www"));
        let bare = runnable_of("pause", r#"{"chainID":"sha256:d","imageSpec":{}}"#).unwrap();
        assert_eq!(bare.config, Default::default());
        assert!(runnable_of("x", r#"{"chainID":"","imageSpec":{}}"#).unwrap_err().contains("no chain id"));
        assert!(runnable_of("x", "{").unwrap_err().starts_with("x: "));
    }

    #[test]
    fn containerds_answers_are_sorted_into_what_a_user_acts_on() {
        let img = "10.0.2.2:5000/web:nope";
        let not_found = "failed to pull and unpack image \"10.0.2.2:5000/web:nope\": failed to resolve reference \
                         \"10.0.2.2:5000/web:nope\": 10.0.2.2:5000/web:nope: not found";
        assert!(matches!(PullError::classify(img, Code::NotFound, not_found), PullError::NotFound { .. }));
        let denied = "failed to resolve reference: unexpected status from HEAD request: 401 Unauthorized";
        assert!(matches!(PullError::classify(img, Code::Unknown, denied), PullError::Unauthorized { .. }));
        let refused = "failed to do request: Head \"http://10.0.2.2:5000/v2/web/manifests/1\": dial tcp \
                       10.0.2.2:5000: connect: connection refused";
        assert!(matches!(PullError::classify(img, Code::Unknown, refused), PullError::Unreachable { .. }));
        let e = PullError::classify(img, Code::Unknown, "something else");
        assert_eq!(e.to_string(), "10.0.2.2:5000/web:nope: something else");
    }
}
