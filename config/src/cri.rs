//! containerd's CRI, over its socket. The image service pulls an image by reference: containerd
//! resolves it through the registry's `hosts.toml` (mirrors, plain HTTP, CAs: `crate::registry`)
//! and unpacks it; credentials go in the request, never in an argument or a log line. The
//! runtime service runs each container in a sandbox of its own: containerd makes its network
//! namespace and calls the CNI plugins (bridge, published ports), writes its `resolv.conf` and
//! `hosts`, and logs its output to a file.

use crate::registry::Credentials;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    ImageStatusRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxFilter, PodSandboxStatusRequest,
    PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
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
/// Making or tearing down a sandbox or a container (runc, CNI plugins) under a slow emulator.
const SANDBOX_TIMEOUT: Duration = Duration::from_secs(120);
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

/// A CRI runtime call that failed: which, and containerd's answer.
#[derive(Debug, thiserror::Error)]
#[error("containerd's CRI at {socket}: {call}: {detail}")]
pub struct CriError {
    pub socket: String,
    pub call: &'static str,
    pub detail: String,
}

/// A container's state, as far as its runner acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    /// Created, not started yet (or containerd cannot tell).
    Other,
    Exited {
        code: i32,
        reason: String,
    },
}

/// A client of containerd's CRI (blocking: it runs its own small runtime).
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: ImageServiceClient<Channel>,
    runtime_client: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

impl Cri {
    pub fn connect(socket: &Path) -> Result<Cri, PullError> {
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
        Ok(Cri {
            runtime,
            client: ImageServiceClient::new(channel.clone()),
            runtime_client: RuntimeServiceClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    /// Runs one runtime call with a deadline.
    fn ask<T, F>(&self, call: &'static str, timeout: Duration, request: F) -> Result<T, CriError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fail = |detail: String| CriError { socket: self.socket.display().to_string(), call, detail };
        // The timer is made inside the runtime: it needs its time driver.
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, request).await })
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
            .map(tonic::Response::into_inner)
            .map_err(|s| fail(s.message().to_string()))
    }

    /// Starts a sandbox (network namespace, CNI, the pause process): its id.
    pub fn run_sandbox(&mut self, config: &PodSandboxConfig, runtime_handler: &str) -> Result<String, CriError> {
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: runtime_handler.into() };
        let client = &mut self.runtime_client.clone();
        Ok(self.ask("RunPodSandbox", SANDBOX_TIMEOUT, client.run_pod_sandbox(request))?.pod_sandbox_id)
    }

    /// The sandbox's address on its network, if it has one.
    pub fn sandbox_ip(&mut self, sandbox: &str) -> Result<Option<String>, CriError> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: sandbox.into(), verbose: false };
        let client = &mut self.runtime_client.clone();
        let reply = self.ask("PodSandboxStatus", ASK_TIMEOUT, client.pod_sandbox_status(request))?;
        Ok(reply.status.and_then(|s| s.network).map(|n| n.ip).filter(|ip| !ip.is_empty()))
    }

    /// Creates and starts a container in `sandbox`: its id.
    pub fn start_container(
        &mut self,
        sandbox: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let client = &mut self.runtime_client.clone();
        let id = self.ask("CreateContainer", SANDBOX_TIMEOUT, client.create_container(request))?.container_id;
        let request = StartContainerRequest { container_id: id.clone() };
        let client = &mut self.runtime_client.clone();
        self.ask("StartContainer", SANDBOX_TIMEOUT, client.start_container(request))?;
        Ok(id)
    }

    pub fn container_state(&mut self, id: &str) -> Result<State, CriError> {
        let request = ContainerStatusRequest { container_id: id.into(), verbose: false };
        let client = &mut self.runtime_client.clone();
        let status = self.ask("ContainerStatus", ASK_TIMEOUT, client.container_status(request))?.status;
        Ok(match status {
            Some(s) if s.state == k8s_cri::v1::ContainerState::ContainerRunning as i32 => State::Running,
            Some(s) if s.state == k8s_cri::v1::ContainerState::ContainerExited as i32 => {
                State::Exited { code: s.exit_code, reason: s.reason }
            }
            _ => State::Other,
        })
    }

    /// Runs `command` in the container and waits for it (at most `timeout`): its exit code and
    /// the end of its output.
    pub fn exec(&mut self, id: &str, command: &[String], timeout: Duration) -> Result<(i32, String), CriError> {
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: command.to_vec(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        let client = &mut self.runtime_client.clone();
        let reply = self.ask("ExecSync", timeout + ASK_TIMEOUT, client.exec_sync(request))?;
        let mut output = String::from_utf8_lossy(&reply.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&reply.stderr));
        let tail: String = output.trim().chars().rev().take(200).collect::<Vec<_>>().into_iter().rev().collect();
        Ok((reply.exit_code, tail))
    }

    /// SIGTERM to the container, SIGKILL after `grace`.
    pub fn stop_container(&mut self, id: &str, grace: Duration) -> Result<(), CriError> {
        let request = StopContainerRequest { container_id: id.into(), timeout: grace.as_secs() as i64 };
        let client = &mut self.runtime_client.clone();
        self.ask("StopContainer", grace + ASK_TIMEOUT, client.stop_container(request))?;
        Ok(())
    }

    /// Stops and removes every sandbox labelled `label=value` but `keep`, with its containers,
    /// network namespace and CNI attachments (published ports): what a stop or a crash left.
    pub fn remove_sandboxes(&mut self, label: &str, value: &str, keep: Option<&str>) -> Result<usize, CriError> {
        let filter = PodSandboxFilter {
            label_selector: HashMap::from([(label.to_string(), value.to_string())]),
            ..PodSandboxFilter::default()
        };
        let client = &mut self.runtime_client.clone();
        let items = self
            .ask(
                "ListPodSandbox",
                ASK_TIMEOUT,
                client.list_pod_sandbox(ListPodSandboxRequest { filter: Some(filter) }),
            )?
            .items;
        let items: Vec<_> = items.into_iter().filter(|s| Some(s.id.as_str()) != keep).collect();
        for sandbox in &items {
            let client = &mut self.runtime_client.clone();
            let request = StopPodSandboxRequest { pod_sandbox_id: sandbox.id.clone() };
            self.ask("StopPodSandbox", SANDBOX_TIMEOUT, client.stop_pod_sandbox(request))?;
            let client = &mut self.runtime_client.clone();
            let request = RemovePodSandboxRequest { pod_sandbox_id: sandbox.id.clone() };
            self.ask("RemovePodSandbox", SANDBOX_TIMEOUT, client.remove_pod_sandbox(request))?;
        }
        Ok(items.len())
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
