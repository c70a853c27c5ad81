//! `cairn config validate`: exit status 0/1/2 for valid/warnings/refused, positions in the
//! text output, and the JSON document.

use std::process::Command;

fn validate(args: &[&str], doc: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data");
    std::fs::write(&file, doc).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_cairn")).args(["config", "validate"]).args(args).arg(&file).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap().replace(&file.display().to_string(), "FILE");
    (out.status.code().unwrap(), text)
}

#[test]
fn exit_status_says_valid_warnings_or_refused() {
    assert_eq!(validate(&[], "#cloud-config\nhostname: a\n"), (0, "FILE: valid\n".to_string()));
    let (code, out) = validate(&[], "#cloud-config\nhostnam: a\n");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("FILE:2:1: warning: hostnam: unknown key \"hostnam\" (did you mean \"hostname\"?)"),
        "{out}"
    );
    let (code, out) = validate(&[], "#cloud-config\nusers:\n  - name: a\n    groups: {x: 1}\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("FILE:4:13: error: users[0].groups: expected a list, found a mapping"), "{out}");
}

#[test]
fn json_output_lists_the_diagnostics() {
    let (code, out) = validate(&["--json"], "#cloud-config\nwrite_files:\n  - path: /etc/x\n    permissions: 999\n");
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["valid"], false);
    let d = &doc["diagnostics"][0];
    assert_eq!((d["severity"].as_str(), d["line"].as_u64(), d["column"].as_u64()), (Some("error"), Some(4), Some(18)));
    assert_eq!(d["path"], "write_files[0].permissions");
}
