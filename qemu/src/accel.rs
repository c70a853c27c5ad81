//! Choosing QEMU's accelerator. `/dev/kvm` can exist and still not work (no VMX in a nested
//! guest: QEMU then hangs or aborts), so KVM is used only when a probe actually runs guest code:
//! the CPU must advertise hardware virtualization (`vmx` or `svm`: seen here, a `/dev/kvm`
//! without them runs a one-instruction guest yet hangs QEMU's firmware), and a forked child must
//! create a VM whose vCPU executes `hlt`. The child is killed if it does not finish in time, so
//! the probe never hangs. `CAIRN_ACCEL=kvm|tcg` overrides the probe.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model: the host's under KVM. Under TCG `qemu64` (x86-64 with no later
    /// extension), unless `CAIRN_TCG_CPU` names another (`max` for an image whose programs need
    /// x86-64-v2 or AVX): emulating `max` cost more than its instructions saved, booting to ready
    /// in 22.5-26.4 s against 18.8-20.3 s (dev image, 1 vCPU, Debian's QEMU 7.2, three of each).
    pub fn cpu_model(self) -> String {
        match self {
            Accel::Kvm => "host".into(),
            Accel::Tcg => tcg_cpu_model(std::env::var("CAIRN_TCG_CPU").ok()),
        }
    }
}

fn tcg_cpu_model(chosen: Option<String>) -> String {
    chosen.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| "qemu64".into())
}

/// The accelerator to use, probed once per process.
pub fn detect() -> Accel {
    static CHOICE: OnceLock<Accel> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("CAIRN_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        _ => {
            if probe_kvm(Duration::from_secs(3)) {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

/// Whether KVM runs a one-instruction guest within `timeout`.
pub fn probe_kvm(timeout: Duration) -> bool {
    if !std::path::Path::new("/dev/kvm").exists() {
        return false;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu_has_virtualization(&cpuinfo) {
        return false;
    }
    fork_probe(timeout)
}

fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[allow(unsafe_code)] // fork and raw guest memory: the child only runs the probe and exits.
fn fork_probe(timeout: Duration) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the child calls only the probe (ioctls, mmap) and _exit; glibc's malloc is
    // fork-safe, and no lock held by another thread is needed on that path.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let ok = run_hlt_guest().unwrap_or(false);
            // SAFETY: _exit skips atexit handlers and destructors of the parent's state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => {
            let deadline = Instant::now() + timeout;
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return code == 0,
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(WaitStatus::StillAlive) => {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        return false;
                    }
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        }
        Err(_) => false,
    }
}

#[allow(unsafe_code)]
fn run_hlt_guest() -> Result<bool, Box<dyn std::error::Error>> {
    use kvm_ioctls::{Kvm, VcpuExit};
    const GUEST_ADDR: u64 = 0x1000;
    const MEM_SIZE: usize = 0x1000;
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    // SAFETY: anonymous private mapping, owned by this short-lived child process.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Ok(false);
    }
    // SAFETY: `mem` is a valid writable page.
    unsafe { *(mem as *mut u8) = 0xf4 }; // hlt
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region stays mapped for the life of the VM (this process).
    unsafe { vm.set_user_memory_region(region)? };
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    Ok(matches!(vcpu.run()?, VcpuExit::Hlt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_runs_qemu64_unless_told_otherwise() {
        assert_eq!(tcg_cpu_model(None), "qemu64");
        assert_eq!(tcg_cpu_model(Some(" ".into())), "qemu64");
        assert_eq!(tcg_cpu_model(Some("max".into())), "max");
        assert_eq!(Accel::Kvm.cpu_model(), "host");
    }

    #[test]
    fn virtualization_flag_is_required() {
        assert!(cpu_has_virtualization("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virtualization("flags : fpu svm\n"));
        assert!(!cpu_has_virtualization("flags\t\t: fpu vme hypervisor sse\n"));
    }

    #[test]
    fn probe_returns_within_its_deadline() {
        let start = Instant::now();
        let _ = probe_kvm(Duration::from_millis(1500));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
