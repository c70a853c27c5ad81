//! Failpoints at the crash-critical steps of an update, so tests can stop the agent (or kill
//! the VM) exactly there. Armed by naming them in `/run/cairn/failpoints` (gone at the next
//! boot) or `CAIRN_FAILPOINTS`, one `NAME` or `NAME=ACTION` per line or comma:
//! - `pause` (the default): announce on the console, then stop here forever (the test kills the VM);
//! - `abort`: announce, then abort the agent (init restarts it).
//!
//! Names: `mid-download`, `after-usr`, `before-uki-rename`, `after-uki-rename`.

use std::path::Path;

pub const FILE: &str = "/run/cairn/failpoints";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Abort,
}

/// The action armed for `name` in `spec` (the file's or the variable's text).
pub fn armed(spec: &str, name: &str) -> Option<Action> {
    spec.split(['\n', ',']).map(str::trim).find_map(|item| {
        let (n, action) = item.split_once('=').unwrap_or((item, "pause"));
        (n.trim() == name).then(|| if action.trim() == "abort" { Action::Abort } else { Action::Pause })
    })
}

/// Stops here if `name` is armed.
pub fn hit(name: &str) {
    let spec = std::env::var("CAIRN_FAILPOINTS").unwrap_or_default()
        + "\n"
        + &std::fs::read_to_string(Path::new(FILE)).unwrap_or_default();
    let Some(action) = armed(&spec, name) else { return };
    let line = format!("cairn-agent: failpoint {name} reached ({action:?})\n");
    eprint!("{line}");
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = std::io::Write::write_all(&mut console, line.as_bytes());
    }
    match action {
        Action::Abort => std::process::abort(),
        Action::Pause => loop {
            std::thread::park();
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_actions() {
        let spec = "after-usr\nbefore-uki-rename=abort, mid-download = pause";
        assert_eq!(armed(spec, "after-usr"), Some(Action::Pause));
        assert_eq!(armed(spec, "before-uki-rename"), Some(Action::Abort));
        assert_eq!(armed(spec, "mid-download"), Some(Action::Pause));
        assert_eq!(armed(spec, "after-uki-rename"), None);
        assert_eq!(armed("", "after-usr"), None);
    }
}
