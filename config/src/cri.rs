//! containerd's CRI image service, over its socket: what pulls an image by reference. containerd
//! resolves it through the registry's `hosts.toml` (mirrors, plain HTTP, CAs: `crate::registry`)
//! and unpacks it; credentials go in the request, never in an argument or a log line.

use crate::registry::Credentials;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{AuthConfig, ImageSpec, ImageStatusRequest, PullImageRequest};
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

/// A client of containerd's CRI image service (blocking: it runs its own small runtime).
pub struct Images {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl Images {
    pub fn connect(socket: &Path) -> Result<Images, PullError> {
        let fail = |detail: String| PullError::Containerd { socket: socket.display().to_string(), detail };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("a runtime: {e}")))?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async {
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
            .map_err(|e| fail(e.to_string()))?;
        Ok(Images { runtime, client: ImageServiceClient::new(channel), socket: socket.to_path_buf() })
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
        let request = ImageStatusRequest { image: Some(spec(image)), verbose: false };
        let client = &mut self.client;
        let fail = |detail: String| PullError::Containerd { socket: self.socket.display().to_string(), detail };
        let reply = self
            .runtime
            .block_on(async { tokio::time::timeout(ASK_TIMEOUT, client.image_status(request)).await })
            .map_err(|_| fail(format!("no answer within {ASK_TIMEOUT:?}")))?
            .map_err(|s| fail(s.message().to_string()))?;
        Ok(reply.into_inner().image.map(|i| ImageInfo { id: i.id, repo_digests: i.repo_digests }))
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..ImageSpec::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
