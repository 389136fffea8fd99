//! `ignite doctor`: preflight checks (as Weave Ignite's), each with the fix.

use std::path::Path;

use ignite_store::Store;

use crate::config::LoadedConfig;
use crate::preflight::{tool, vmm_check, Check, Level};
use ignite_vmm::accel::{self, Accel, AccelChoice};

/// Runs every check.
pub fn run_checks(store: &Store, config: &LoadedConfig) -> Vec<Check> {
    let mut out = vec![
        tool("e2fsprogs", "mke2fs", "e2fsprogs", Level::Error),
        tool("resize2fs", "resize2fs", "e2fsprogs", Level::Error),
        tool("qemu-img", "qemu-img", "qemu-utils", Level::Error),
        tool("ssh-keygen", "ssh-keygen", "openssh-client", Level::Warn),
    ];
    out.push(crate::preflight::busybox());
    let cni = ["/opt/cni/bin/bridge", "/usr/lib/cni/bridge"].iter().find(|p| Path::new(p).is_file());
    out.push(match cni {
        Some(p) => Check { name: "cni-plugins", level: Level::Ok, detail: (*p).into() },
        None => Check {
            name: "cni-plugins",
            level: Level::Warn,
            detail: "no CNI bridge plugin in /opt/cni/bin or /usr/lib/cni: apt-get install containernetworking-plugins"
                .into(),
        },
    });
    // Kernel-enforced path containment for layer application (Linux >= 5.6).
    let probe = rustix::fs::openat2(
        rustix::fs::CWD,
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT,
    );
    out.push(match probe {
        Ok(_) => Check { name: "openat2", level: Level::Ok, detail: "RESOLVE_IN_ROOT available".into() },
        Err(e) => Check {
            name: "openat2",
            level: Level::Error,
            detail: format!("openat2(RESOLVE_IN_ROOT) unavailable ({e}): image import needs Linux 5.6 or newer"),
        },
    });
    // The VMM jail: root, cgroups, a free uid range, QEMU's seccomp sandbox.
    out.push(match crate::jail::host_support() {
        Ok(d) => Check { name: "jail", level: Level::Ok, detail: d },
        Err(e) => Check { name: "jail", level: Level::Warn, detail: format!("{e}: VMMs need --jail=false here") },
    });
    let j = &config.spec.jail;
    out.push(match crate::lease::vm_uid("doctor-probe", (j.uid_base, j.uid_count)) {
        Ok((_, uid)) => Check {
            name: "jail-uids",
            level: Level::Ok,
            detail: format!("{}+{} (no user or group of this host in it; e.g. {uid} is free)", j.uid_base, j.uid_count),
        },
        Err(e) => Check { name: "jail-uids", level: Level::Warn, detail: e },
    });
    // The VMM backend VMs use unless they name another: its binary, its version, its seccomp.
    let backend_name = config.spec.vmm.clone().unwrap_or_else(|| ignite_vmm::DEFAULT_BACKEND.into());
    match crate::boot::backend(&backend_name, &config.spec) {
        Ok(b) => {
            out.push(vmm_check(b.as_ref()));
            if let Ok(info) = b.check_host() {
                out.push(match info.seccomp {
                    Ok(d) => Check { name: "seccomp", level: Level::Ok, detail: d },
                    Err(d) => Check { name: "seccomp", level: Level::Warn, detail: d },
                });
            }
        }
        Err(e) => out.push(Check { name: "vmm", level: Level::Error, detail: e.to_string() }),
    }
    // The other backends (`--vmm NAME`): a warning only, where one is missing.
    for other in ignite_vmm::BACKENDS.iter().filter(|n| **n != backend_name) {
        if let Ok(b) = crate::boot::backend(other, &config.spec) {
            let c = vmm_check(b.as_ref());
            let level = if c.level == Level::Ok { Level::Ok } else { Level::Warn };
            out.push(Check { name: "other-vmm", level, detail: format!("{} (for --vmm {other})", c.detail) });
        }
    }
    // State root free space.
    out.push(match rustix::fs::statvfs(store.root()) {
        Ok(s) => {
            let free = s.f_bavail * s.f_frsize;
            let gib = free as f64 / (1u64 << 30) as f64;
            let level = if free < 2 << 30 { Level::Warn } else { Level::Ok };
            Check { name: "disk-space", level, detail: format!("{gib:.1} GiB free in {}", store.root().display()) }
        }
        Err(e) => Check {
            name: "disk-space",
            level: Level::Warn,
            detail: format!("cannot stat {}: {e}", store.root().display()),
        },
    });
    // The default kernel and whether KVM can boot it.
    let kref = config.spec.vm_defaults.kernel.oci.clone().or_else(|| ignite_api::DEFAULT_KERNEL_IMAGE.parse().ok());
    let mut vm = ignite_api::Vm::new(Default::default(), Default::default());
    vm.spec.kernel.oci = kref.clone();
    let shown = kref.map(|k| k.to_string()).unwrap_or_default();
    match crate::start::kernel_for(store, &vm) {
        Ok(k) => {
            out.push(Check { name: "kernel", level: Level::Ok, detail: format!("{shown}: {}", k.display()) });
            let verdict = crate::boot::backend(&backend_name, &config.spec).map_err(|e| e.to_string()).and_then(|b| {
                b.choose_accel(store.root(), AccelChoice::Auto, &k, &|p| {
                    crate::provision::probe_initramfs(p).map_err(|e| e.to_string())
                })
            });
            out.push(match verdict {
                Ok(v) if v.accel == Accel::Kvm => Check { name: "kvm", level: Level::Ok, detail: v.reason },
                Ok(v) => Check { name: "kvm", level: Level::Warn, detail: v.reason },
                Err(e) => Check { name: "kvm", level: Level::Warn, detail: e },
            });
        }
        Err(_) => {
            out.push(Check {
                name: "kernel",
                level: Level::Error,
                detail: format!(
                    "default kernel {shown} not imported: run images/kernel/build.sh, then `ignite kernel import <vmlinux> --name {shown}`"
                ),
            });
            out.push(match accel::kvm_device_usable() {
                Ok(()) => Check {
                    name: "kvm",
                    level: Level::Warn,
                    detail: "/dev/kvm opens; whether it can boot a guest is probed once a kernel is imported".into(),
                },
                Err(e) => Check {
                    name: "kvm",
                    level: Level::Warn,
                    detail: format!("{e}: VMs will use software emulation (TCG)"),
                },
            });
        }
    }
    out
}
