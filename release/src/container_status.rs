//! What each container's runner is doing, for `updatectl status`: written by
//! `cairn-cloud-config container NAME` to `/run` at each step (pulling, running, failed, exited),
//! read by the update agent. A pull that fails says why here as in the container's log.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One file per container (tmpfs: this boot's news).
pub const DIR: &str = "/run/cairn/container-status";
/// The container specs cloud-config wrote: a status without one is of a container since removed.
pub const SPECS_DIR: &str = "/etc/cairn/containers";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Pulling,
    Running,
    /// It could not be started (a pull or an import failed, containerd refused it); init retries.
    Failed,
    /// It ran and exited; init restarts it per its policy.
    Exited,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: State,
    /// The image, an address, an exit code or the error, as one line.
    pub detail: String,
}

impl ContainerStatus {
    /// Writes the status (whole or not at all); a runner that cannot is not stopped by it.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_vec(self).expect("a status serializes");
        crate::durable::write_atomic(&dir.join(format!("{}.json", self.name)), &json, 0o644)
    }
}

/// The statuses in `dir` of the containers with a spec in `specs`, by name.
pub fn read_all(dir: &Path, specs: &Path) -> Vec<ContainerStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut all: Vec<ContainerStatus> = entries
        .flatten()
        .filter_map(|e| serde_json::from_slice::<ContainerStatus>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|s| specs.join(format!("{}.toml", s.name)).exists())
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// One line for `updatectl status`: `web running (...); api failed: ...`.
pub fn summary(all: &[ContainerStatus]) -> String {
    let state = |s: State| match s {
        State::Pulling => "pulling",
        State::Running => "running",
        State::Failed => "failed",
        State::Exited => "exited",
    };
    let one = |c: &ContainerStatus| match c.state {
        State::Failed => format!("{} failed: {}", c.name, c.detail),
        s => format!("{} {} ({})", c.name, state(s), c.detail),
    };
    all.iter().map(one).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_of_configured_containers_make_one_line() {
        let t = tempfile::tempdir().unwrap();
        let (dir, specs) = (t.path().join("status"), t.path().join("specs"));
        std::fs::create_dir_all(&specs).unwrap();
        for name in ["web", "api"] {
            std::fs::write(specs.join(format!("{name}.toml")), "").unwrap();
        }
        let web = ContainerStatus {
            name: "web".into(),
            state: State::Running,
            detail: "r/web@sha256:aa at 10.88.0.2".into(),
        };
        let api = ContainerStatus {
            name: "api".into(),
            state: State::Failed,
            detail: "r/api:1: no such image or tag".into(),
        };
        let gone = ContainerStatus { name: "gone".into(), state: State::Running, detail: "x".into() };
        for s in [&web, &api, &gone] {
            s.write(&dir).unwrap();
        }
        let all = read_all(&dir, &specs);
        assert_eq!(all, [api.clone(), web.clone()], "by name, and only configured containers");
        assert_eq!(
            summary(&all),
            "api failed: r/api:1: no such image or tag; web running (r/web@sha256:aa at 10.88.0.2)"
        );
        assert!(read_all(&t.path().join("none"), &specs).is_empty());
    }
}
