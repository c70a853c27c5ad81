//! Service files: `/usr/lib/cairn/services/*.toml` from the image, `/etc/cairn/services/*.toml`
//! from the user (a file of the same name in `/etc` replaces the image's). A file with an
//! unknown field or a bad value is an error that names the file and the field; it disables
//! that service, not the boot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const IMAGE_DIR: &str = "/usr/lib/cairn/services";
pub const USER_DIR: &str = "/etc/cairn/services";

use cairn_release::service_file::ServiceFile;
pub use cairn_release::service_file::{Ready, Restart};

/// A validated service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub source: PathBuf,
    pub description: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub working_directory: PathBuf,
    pub user: String,
    /// Run on this terminal (stdin/out/err, controlling tty) instead of logging to a file.
    pub tty: Option<PathBuf>,
    pub restart: Restart,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    pub after: Vec<String>,
    pub ready: Ready,
    /// The ready line waits for this service.
    pub required: bool,
    pub stop_timeout: Duration,
    pub log_max_bytes: u64,
    pub enabled: bool,
}

/// A service file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub name: String,
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

pub fn parse(name: &str, file: &Path, text: &str) -> Result<ServiceSpec, SpecError> {
    let err = |message: String| SpecError { name: name.to_string(), file: file.to_path_buf(), message };
    let raw: ServiceFile = toml::from_str(text).map_err(|e| err(e.to_string().trim().replace('\n', " ")))?;
    let dur = |field: &str, v: &Option<String>, default: Duration| match v {
        Some(s) => cairn_release::duration::parse(s).map_err(|e| err(format!("{field}: {e}"))),
        None => Ok(default),
    };
    if raw.command.is_empty() || raw.command[0].is_empty() {
        return Err(err("command: must name a program".into()));
    }
    if !raw.command[0].starts_with('/') {
        return Err(err(format!("command: {:?} must be an absolute path", raw.command[0])));
    }
    if let Some(d) = &raw.working_directory
        && !d.is_absolute()
    {
        return Err(err(format!("working_directory: {} must be absolute", d.display())));
    }
    if raw.after.iter().any(|a| a == name) {
        return Err(err("after: a service cannot come after itself".into()));
    }
    let restart_delay = dur("restart_delay", &raw.restart_delay, Duration::from_millis(100))?;
    let restart_delay_max = dur("restart_delay_max", &raw.restart_delay_max, Duration::from_secs(30))?;
    if restart_delay_max < restart_delay {
        return Err(err("restart_delay_max: must not be less than restart_delay".into()));
    }
    if let Some(Ready::TcpPort(0)) = raw.ready {
        return Err(err("ready.tcp_port: must be 1-65535".into()));
    }
    Ok(ServiceSpec {
        name: name.to_string(),
        source: file.to_path_buf(),
        description: raw.description.unwrap_or_default(),
        command: raw.command,
        environment: raw.environment,
        working_directory: raw.working_directory.unwrap_or_else(|| PathBuf::from("/")),
        user: raw.user.unwrap_or_else(|| "root".into()),
        tty: raw.tty,
        restart: raw.restart.unwrap_or(Restart::OnFailure),
        restart_delay,
        restart_delay_max,
        after: raw.after,
        ready: raw.ready.unwrap_or(Ready::Process),
        required: raw.required.unwrap_or(false),
        stop_timeout: dur("stop_timeout", &raw.stop_timeout, Duration::from_secs(10))?,
        log_max_bytes: raw.log_max_bytes.unwrap_or(1 << 20).max(4096),
        enabled: raw.enabled.unwrap_or(true),
    })
}

/// Every service of the given directories, later directories overriding earlier ones by name.
pub fn load(dirs: &[&Path]) -> (Vec<ServiceSpec>, Vec<SpecError>) {
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml")
                && let Some(stem) = p.file_stem()
            {
                files.insert(stem.to_string_lossy().into_owned(), p);
            }
        }
    }
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (name, file) in files {
        if !valid_name(&name) {
            errors.push(SpecError { name, file, message: "file name must be [a-z0-9_.-]+.toml".into() });
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse(&name, &file, &text) {
                Ok(s) => specs.push(s),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(SpecError { name, file, message: e.to_string() }),
        }
    }
    (specs, errors)
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<ServiceSpec, SpecError> {
        parse("svc", Path::new("/etc/cairn/services/svc.toml"), text)
    }

    #[test]
    fn full_service_parses() {
        let s = p(r#"
description = "containerd"
command = ["/usr/bin/containerd", "--log-level", "info"]
environment = { PATH = "/usr/bin" }
working_directory = "/var/lib"
restart = "always"
restart_delay = "200ms"
after = ["network"]
ready = { unix_socket = "/run/containerd/containerd.sock" }
required = true
stop_timeout = "5s"
"#)
        .unwrap();
        assert_eq!(s.restart, Restart::Always);
        assert_eq!(s.restart_delay, Duration::from_millis(200));
        assert_eq!(s.ready, Ready::UnixSocket("/run/containerd/containerd.sock".into()));
        assert!(s.required);
        assert_eq!(s.stop_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_field_names_file_and_field() {
        let e = p("command = [\"/bin/true\"]\nrestrat = \"always\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/etc/cairn/services/svc.toml"), "{text}");
        assert!(text.contains("restrat"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = p("command = [\"/bin/true\"]\nrestart = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = p("command = [\"/bin/true\"]\nstop_timeout = \"5 parsecs\"\n").unwrap_err().to_string();
        assert!(e.contains("stop_timeout"), "{e}");
        let e = p("command = [\"true\"]\n").unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = p("command = [\"/bin/true\"]\nready = { tcp_port = 0 }\n").unwrap_err().to_string();
        assert!(e.contains("tcp_port"), "{e}");
    }

    #[test]
    fn tcp_and_process_readiness() {
        assert_eq!(p("command = [\"/x\"]\nready = { tcp_port = 22 }\n").unwrap().ready, Ready::TcpPort(22));
        assert_eq!(p("command = [\"/x\"]\nready = \"process\"\n").unwrap().ready, Ready::Process);
    }

    #[test]
    fn etc_overrides_usr_by_name() {
        let t = std::env::temp_dir().join(format!("cairn-spec-test-{}", std::process::id()));
        let (usr, etc) = (t.join("usr"), t.join("etc"));
        std::fs::create_dir_all(&usr).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(usr.join("a.toml"), "command = [\"/usr/a\"]\n").unwrap();
        std::fs::write(usr.join("b.toml"), "command = [\"/usr/b\"]\n").unwrap();
        std::fs::write(etc.join("a.toml"), "command = [\"/etc/a\"]\n").unwrap();
        std::fs::write(etc.join("bad.toml"), "command = [\"/x\"]\nbogus = 1\n").unwrap();
        let (specs, errors) = load(&[&usr, &etc]);
        let _ = std::fs::remove_dir_all(&t);
        let cmds: Vec<_> = specs.iter().map(|s| s.command[0].as_str()).collect();
        assert_eq!(cmds, vec!["/etc/a", "/usr/b"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bogus"));
    }
}
