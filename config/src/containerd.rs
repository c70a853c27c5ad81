//! containerd's own API (snapshots, containers, tasks), over its socket, in the namespace CRI
//! pulls images into (`k8s.io`), so a container's root file system is a snapshot on top of the
//! layers CRI unpacked. A container runs as one task of containerd's runc shim (crun, as
//! `runc`): no sandbox, no pause process, no shim of its own for a sandbox.

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest,
    DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest,
};
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest};
use containerd_client::types::Mount;
use containerd_client::types::v1::Status;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// A container's labels, by name.
pub type Labels = HashMap<String, String>;

/// The snapshotter CRI unpacks images with.
const SNAPSHOTTER: &str = "overlayfs";
/// containerd's runc shim, told to run crun (a small C program where runc is a Go runtime's
/// start at each of a container's runs; the Docker variant has Debian's runc as `runc`).
const RUNTIME: &str = "io.containerd.runc.v2";
const RUNTIME_BINARY: &str = "/usr/bin/crun";
/// The shim's options message (`runtime/v2/runc/options`), of which `binary_name` is field 6.
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
const BINARY_NAME_FIELD: u32 = 6;
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Any one call: starting a shim and crun under a slow emulator takes seconds, not minutes.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A call that failed: which, and containerd's answer.
#[derive(Debug, thiserror::Error)]
#[error("containerd at {socket}: {call}: {detail}")]
pub struct Error {
    pub socket: String,
    pub call: &'static str,
    pub detail: String,
    /// containerd's code (`NotFound` when what was asked about is gone).
    pub code: tonic::Code,
}

/// A task's (or an exec'd process's) state, as far as a runner acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped {
        code: u32,
    },
    /// Created, not started, paused, or unknown to containerd.
    Other,
}

/// A client of containerd (blocking: it runs its own small runtime).
pub struct Containerd {
    runtime: tokio::runtime::Runtime,
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    leases: LeasesClient<Channel>,
    socket: PathBuf,
}

/// A request in CRI's namespace.
fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(crate::cri::NAMESPACE));
    request
}

/// The shim's options: crun as its runtime binary.
fn runtime_options() -> prost_types::Any {
    let mut value = Vec::new();
    prost::encoding::string::encode(BINARY_NAME_FIELD, &RUNTIME_BINARY.to_string(), &mut value);
    prost_types::Any { type_url: RUNC_OPTIONS_TYPE.into(), value }
}

fn any(type_url: &str, value: &serde_json::Value) -> prost_types::Any {
    prost_types::Any { type_url: type_url.into(), value: serde_json::to_vec(value).unwrap_or_default() }
}

impl Containerd {
    pub fn connect(socket: &Path) -> Result<Containerd, Error> {
        let fail = |detail: String| Error {
            socket: socket.display().to_string(),
            call: "connect",
            detail,
            code: tonic::Code::Unavailable,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("a runtime: {e}")))?;
        let channel = crate::cri::unix_channel(&runtime, socket).map_err(|e| fail(e.to_string()))?;
        Ok(Containerd {
            runtime,
            containers: ContainersClient::new(channel.clone()),
            tasks: TasksClient::new(channel.clone()),
            snapshots: SnapshotsClient::new(channel.clone()),
            leases: LeasesClient::new(channel),
            socket: socket.to_path_buf(),
        })
    }

    /// Runs one call with a deadline.
    fn ask<T, F>(&self, call: &'static str, request: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let socket = self.socket.display().to_string();
        // The timer is made inside the runtime: it needs its time driver.
        match self.runtime.block_on(async { tokio::time::timeout(CALL_TIMEOUT, request).await }) {
            Err(_) => Err(Error {
                socket,
                call,
                detail: format!("no answer within {CALL_TIMEOUT:?}"),
                code: tonic::Code::DeadlineExceeded,
            }),
            Ok(Err(s)) => Err(Error { socket, call, detail: s.message().to_string(), code: s.code() }),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// A lease `id`: what is made under it (`prepare_snapshot`) is kept from containerd's
    /// garbage collector until the lease goes, which it does by itself after `expiry` (so a
    /// runner that dies leaves nothing for ever).
    pub fn create_lease(&mut self, id: &str, expiry: Duration) -> Result<(), Error> {
        // RFC 3339, as containerd reads the label.
        let expire =
            jiff::Timestamp::try_from(std::time::SystemTime::now() + expiry).map(|t| t.to_string()).unwrap_or_default();
        let request =
            CreateLeaseRequest { id: id.into(), labels: HashMap::from([("containerd.io/gc.expire".into(), expire)]) };
        let mut client = self.leases.clone();
        self.ask("create lease", client.create(namespaced(request))).map(drop)
    }

    pub fn delete_lease(&mut self, id: &str) -> Result<(), Error> {
        let mut client = self.leases.clone();
        self.ask("delete lease", client.delete(namespaced(DeleteLeaseRequest { id: id.into(), sync: false }))).map(drop)
    }

    /// A writable snapshot `key` on top of the image layers `parent` (their chain id), held by
    /// `lease` until a container refers to it: the mounts that make it a root file system.
    pub fn prepare_snapshot(&mut self, key: &str, parent: &str, lease: &str) -> Result<Vec<Mount>, Error> {
        let request = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let mut request = namespaced(request);
        let lease = tonic::metadata::MetadataValue::try_from(lease).map_err(|e| Error {
            socket: self.socket.display().to_string(),
            call: "prepare snapshot",
            detail: format!("lease {lease:?}: {e}"),
            code: tonic::Code::InvalidArgument,
        })?;
        request.metadata_mut().insert("containerd-lease", lease);
        let mut client = self.snapshots.clone();
        Ok(self.ask("prepare snapshot", client.prepare(request))?.mounts)
    }

    /// The mounts of snapshot `key`.
    pub fn snapshot_mounts(&mut self, key: &str) -> Result<Vec<Mount>, Error> {
        let request = MountsRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        let mut client = self.snapshots.clone();
        Ok(self.ask("snapshot mounts", client.mounts(namespaced(request)))?.mounts)
    }

    pub fn remove_snapshot(&mut self, key: &str) -> Result<(), Error> {
        let request = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() };
        let mut client = self.snapshots.clone();
        self.ask("remove snapshot", client.remove(namespaced(request))).map(drop)
    }

    /// A container `id` of `image`, with runtime spec `spec`, on snapshot `id`.
    pub fn create_container(
        &mut self,
        id: &str,
        image: &str,
        spec: &serde_json::Value,
        labels: Labels,
    ) -> Result<(), Error> {
        let container = Container {
            id: id.into(),
            labels,
            image: image.into(),
            runtime: Some(Runtime { name: RUNTIME.into(), options: Some(runtime_options()) }),
            spec: Some(any(SPEC_TYPE, spec)),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Container::default()
        };
        let mut client = self.containers.clone();
        self.ask("create container", client.create(namespaced(CreateContainerRequest { container: Some(container) })))
            .map(drop)
    }

    pub fn delete_container(&mut self, id: &str) -> Result<(), Error> {
        let mut client = self.containers.clone();
        self.ask("delete container", client.delete(namespaced(DeleteContainerRequest { id: id.into() }))).map(drop)
    }

    /// The containers labelled `label=value`: their ids and labels.
    pub fn containers_labelled(&mut self, label: &str, value: &str) -> Result<Vec<(String, Labels)>, Error> {
        let request = ListContainersRequest { filters: vec![format!("labels.\"{label}\"=={value}")] };
        let mut client = self.containers.clone();
        let listed = self.ask("list containers", client.list(namespaced(request)))?;
        Ok(listed.containers.into_iter().map(|c| (c.id, c.labels)).collect())
    }

    /// Starts container `id`'s shim and creates its task (crun's `create`: the process waits to
    /// be started), its output to the FIFOs `stdout` and `stderr`.
    pub fn create_task(&mut self, id: &str, rootfs: Vec<Mount>, stdout: &Path, stderr: &Path) -> Result<(), Error> {
        let request = CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            ..CreateTaskRequest::default()
        };
        let mut client = self.tasks.clone();
        self.ask("create task", client.create(namespaced(request))).map(drop)
    }

    /// Starts container `id`'s task, or its process `exec_id`.
    pub fn start(&mut self, id: &str, exec_id: &str) -> Result<(), Error> {
        let mut client = self.tasks.clone();
        let request = StartRequest { container_id: id.into(), exec_id: exec_id.into() };
        self.ask("start", client.start(namespaced(request))).map(drop)
    }

    /// Signals container `id`'s task (every process in it with `all`), or its process `exec_id`.
    pub fn kill(&mut self, id: &str, exec_id: &str, signal: nix::sys::signal::Signal, all: bool) -> Result<(), Error> {
        let request = KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal: signal as u32, all };
        let mut client = self.tasks.clone();
        self.ask("kill", client.kill(namespaced(request))).map(drop)
    }

    /// The state of container `id`'s task, or of its process `exec_id`.
    pub fn state(&mut self, id: &str, exec_id: &str) -> Result<State, Error> {
        let mut client = self.tasks.clone();
        let request = GetRequest { container_id: id.into(), exec_id: exec_id.into() };
        let process = self.ask("get task", client.get(namespaced(request)))?.process.unwrap_or_default();
        Ok(match Status::try_from(process.status) {
            Ok(Status::Running) | Ok(Status::Pausing) => State::Running,
            Ok(Status::Stopped) => State::Stopped { code: process.exit_status },
            _ => State::Other,
        })
    }

    /// Deletes container `id`'s task (stopped), which ends its shim.
    pub fn delete_task(&mut self, id: &str) -> Result<(), Error> {
        let mut client = self.tasks.clone();
        self.ask("delete task", client.delete(namespaced(DeleteTaskRequest { container_id: id.into() }))).map(drop)
    }

    /// Adds process `exec_id` (an OCI process, `process`) to container `id`'s task, its output
    /// appended to the file `output`.
    pub fn exec(&mut self, id: &str, exec_id: &str, process: &serde_json::Value, output: &Path) -> Result<(), Error> {
        let file = format!("file://{}", output.display());
        let request = ExecProcessRequest {
            container_id: id.into(),
            stdout: file.clone(),
            stderr: file,
            spec: Some(any(PROCESS_TYPE, process)),
            exec_id: exec_id.into(),
            ..ExecProcessRequest::default()
        };
        let mut client = self.tasks.clone();
        self.ask("exec", client.exec(namespaced(request))).map(drop)
    }

    pub fn delete_process(&mut self, id: &str, exec_id: &str) -> Result<(), Error> {
        let mut client = self.tasks.clone();
        let request = DeleteProcessRequest { container_id: id.into(), exec_id: exec_id.into() };
        self.ask("delete process", client.delete_process(namespaced(request))).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The options decode as the shim's message would: field 6, `binary_name`, is crun.
    #[test]
    fn the_shim_is_told_to_run_crun() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Options {
            #[prost(bool, tag = "1")]
            no_pivot_root: bool,
            #[prost(string, tag = "6")]
            binary_name: String,
            #[prost(bool, tag = "9")]
            systemd_cgroup: bool,
        }
        let any = runtime_options();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        let options = Options::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            options,
            Options { no_pivot_root: false, binary_name: "/usr/bin/crun".into(), systemd_cgroup: false }
        );
    }
}
