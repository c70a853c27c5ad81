//! A container's seccomp filter (pure): Docker's default profile (the image ships the one of
//! Debian's Docker, `task::SECCOMP_PROFILE`), reduced as Docker and containerd reduce it to the
//! OCI runtime spec's `linux.seccomp` for this machine's architecture, its kernel and a
//! container's capabilities.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// The profile as shipped (the fields this reduction reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// When a rule applies: on these architectures (Go's names), with these capabilities, from
/// this kernel on.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What a rule is decided against: the machine's architecture (Go's name, `amd64`), its
/// kernel's version, and the container's capabilities.
pub struct Target<'a> {
    pub arch: &'a str,
    pub kernel: (u32, u32),
    pub caps: &'a BTreeSet<String>,
}

/// The architecture as the profile's archMap names it (SCMP_ARCH_*), from Go's name.
fn scmp_arch(go: &str) -> Option<&'static str> {
    Some(match go {
        "amd64" => "SCMP_ARCH_X86_64",
        "arm64" => "SCMP_ARCH_AARCH64",
        "386" | "x86" => "SCMP_ARCH_X86",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => return None,
    })
}

/// A kernel release's major and minor numbers ("6.1.0-57-amd64" is (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn applies(rule: &Rule, t: &Target) -> Result<bool, String> {
    let (inc, exc) = (&rule.includes, &rule.excludes);
    if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == t.arch) {
        return Ok(false);
    }
    if exc.arches.iter().any(|a| a == t.arch) {
        return Ok(false);
    }
    if !inc.caps.iter().all(|c| t.caps.contains(c)) || exc.caps.iter().any(|c| t.caps.contains(c)) {
        return Ok(false);
    }
    if let Some(min) = &inc.min_kernel {
        let min = kernel_version(min).ok_or_else(|| format!("a rule for {:?}: minKernel {min:?}", rule.names))?;
        if t.kernel < min {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The OCI `linux.seccomp` object of `profile` for `target`.
pub fn for_container(profile: &Profile, target: &Target) -> Result<Value, String> {
    let native = scmp_arch(target.arch).ok_or_else(|| format!("no seccomp architecture for {}", target.arch))?;
    let architectures: Vec<&str> = profile
        .arch_map
        .iter()
        .filter(|m| m.architecture == native)
        .flat_map(|m| std::iter::once(m.architecture.as_str()).chain(m.sub_architectures.iter().map(String::as_str)))
        .collect();
    if architectures.is_empty() {
        return Err(format!("the profile has no rules for {native}"));
    }
    let mut syscalls = Vec::new();
    for rule in &profile.syscalls {
        if !applies(rule, target)? {
            continue;
        }
        let mut s = json!({"names": rule.names, "action": rule.action});
        if let Some(errno) = rule.errno_ret {
            s["errnoRet"] = json!(errno);
        }
        if let Some(args) = rule.args.as_ref().filter(|a| !a.is_empty()) {
            s["args"] = json!(args);
        }
        syscalls.push(s);
    }
    let mut seccomp = json!({
        "defaultAction": profile.default_action,
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(errno) = profile.default_errno_ret {
        seccomp["defaultErrnoRet"] = json!(errno);
    }
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE_JSON: &str = r#"{
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
      ],
      "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_AUDIT_WRITE"]}},
        {"names": ["future"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.2"}}
      ]
    }"#;

    fn names(seccomp: &Value) -> Vec<String> {
        seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{}:{}", s["names"][0].as_str().unwrap(), s["action"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn rules_are_kept_for_the_architecture_and_capabilities_at_hand() {
        let profile: Profile = serde_json::from_str(PROFILE_JSON).unwrap();
        let caps: BTreeSet<String> = ["CAP_AUDIT_WRITE".to_string()].into();
        let t = Target { arch: "amd64", kernel: (6, 1), caps: &caps };
        let s = for_container(&profile, &t).unwrap();
        assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["defaultErrnoRet"], 38);
        assert_eq!(s["architectures"], json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        assert_eq!(
            names(&s),
            [
                "read:SCMP_ACT_ALLOW",
                "personality:SCMP_ACT_ALLOW",
                "arch_prctl:SCMP_ACT_ALLOW",
                "mount:SCMP_ACT_ERRNO",
                "socket:SCMP_ACT_ALLOW"
            ]
        );
        let rules = s["syscalls"].as_array().unwrap();
        assert!(rules[0].get("args").is_none(), "empty args are left out");
        assert_eq!(rules[1]["args"][0]["value"], 8);
        assert_eq!(rules[3]["errnoRet"], 1);

        let admin: BTreeSet<String> = ["CAP_SYS_ADMIN".to_string()].into();
        let t = Target { arch: "amd64", kernel: (7, 2), caps: &admin };
        let s = for_container(&profile, &t).unwrap();
        assert_eq!(
            names(&s),
            [
                "read:SCMP_ACT_ALLOW",
                "personality:SCMP_ACT_ALLOW",
                "arch_prctl:SCMP_ACT_ALLOW",
                "mount:SCMP_ACT_ALLOW",
                "future:SCMP_ACT_ALLOW"
            ]
        );
    }

    #[test]
    fn an_unknown_architecture_or_kernel_is_an_error() {
        let profile: Profile = serde_json::from_str(PROFILE_JSON).unwrap();
        let caps = BTreeSet::new();
        let t = Target { arch: "mips", kernel: (6, 1), caps: &caps };
        assert!(for_container(&profile, &t).unwrap_err().contains("mips"));
        assert_eq!(kernel_version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.15"), Some((5, 15)));
        assert_eq!(kernel_version("x"), None);
    }

    /// The profile the image ships (Docker's default): parsed and reduced, and what it refuses
    /// without CAP_SYS_ADMIN is refused.
    #[test]
    fn the_images_profile_is_read() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../images/overlay/container-host")
            .join(super::super::task::SECCOMP_PROFILE.trim_start_matches('/'));
        let text = std::fs::read_to_string(&path).unwrap();
        let profile: Profile = serde_json::from_str(&text).unwrap();
        let caps: BTreeSet<String> = super::super::spec::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
        let s = for_container(&profile, &Target { arch: "amd64", kernel: (6, 1), caps: &caps }).unwrap();
        let all: Vec<&str> = s["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap())
            .filter_map(Value::as_str)
            .collect();
        assert!(all.contains(&"read") && all.contains(&"clone"), "{all:?}");
        let allowed = |name: &str| {
            s["syscalls"].as_array().unwrap().iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r.get("args").is_none()
                    && r["names"].as_array().unwrap().iter().any(|n| n == name)
            })
        };
        for refused in ["mount", "unshare", "setns", "kexec_load", "keyctl", "bpf"] {
            assert!(!allowed(refused), "{refused} allowed without its capability");
        }
        assert!(!allowed("clone3") && allowed("socket"), "clone3 says ENOSYS; sockets work");
    }
}
