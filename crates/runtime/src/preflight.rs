//! Preflight checks (Weave Ignite's, at `start`; `ignite doctor` shows them too): each says
//! what is missing and how to fix it.

use std::path::{Path, PathBuf};

use ignite_vmm::Backend;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

pub fn find_in_path(bin: &str) -> Option<PathBuf> {
    if bin.starts_with('/') {
        return Path::new(bin).is_file().then(|| bin.into());
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths).chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(bin)).find(|p| p.is_file())
}

/// Whether the backend's VMM can run here.
/// The VMM binary is there (what a start checks: nothing is run).
pub fn vmm_found(backend: &dyn Backend) -> Check {
    match backend.binary() {
        Ok(p) => Check { name: "vmm", level: Level::Ok, detail: format!("{}: {}", backend.name(), p.display()) },
        Err(e) => Check { name: "vmm", level: Level::Error, detail: format!("{}: {e}", backend.name()) },
    }
}

/// The VMM binary is there and runs, with its version (`ignite doctor`).
pub fn vmm_check(backend: &dyn Backend) -> Check {
    match backend.check_host() {
        Ok(info) => Check {
            name: "vmm",
            level: Level::Ok,
            detail: format!(
                "{}: {}{}",
                backend.name(),
                info.binary.display(),
                info.version.map(|v| format!(" ({v})")).unwrap_or_default()
            ),
        },
        Err(e) => Check { name: "vmm", level: Level::Error, detail: format!("{}: {e}", backend.name()) },
    }
}

pub fn tool(name: &'static str, bin: &str, package: &str, level_if_missing: Level) -> Check {
    match find_in_path(bin) {
        Some(p) => Check { name, level: Level::Ok, detail: p.display().to_string() },
        None => Check { name, level: level_if_missing, detail: format!("{bin} not found: apt-get install {package}") },
    }
}

/// The checks that matter for starting `vm` (as Weave Ignite's preflight at start): the VMM
/// and the guest shim's busybox on this host, the CNI plugins and `ip`/`iptables` when the VM
/// uses CNI. Each check has its own name and the name of Ignite's check it stands for
/// (`BinaryInPath`), so that `--ignore-preflight-checks` takes either.
pub fn preflight(plugin: &str, jailed: bool, backend: &dyn Backend) -> Vec<(Check, &'static str)> {
    let mut out =
        vec![(vmm_found(backend), "BinaryInPath"), (tool("ip", "ip", "iproute2", Level::Error), "BinaryInPath")];
    out.push((busybox(), "ExistingFile"));
    if jailed {
        out.push((
            match crate::jail::host_support() {
                Ok(d) => Check { name: "jail", level: Level::Ok, detail: d },
                Err(e) => Check {
                    name: "jail",
                    level: Level::Error,
                    detail: format!("{e} (or run the VM with --jail=false)"),
                },
            },
            "SystemVerification",
        ));
    }
    if plugin == "cni" {
        out.push((tool("iptables", "iptables", "iptables", Level::Error), "BinaryInPath"));
        let dirs = ignite_net::CniConfig::default().bin_dirs;
        let found = dirs.iter().map(|d| d.join("bridge")).find(|p| p.is_file());
        out.push((
            match found {
                Some(p) => Check { name: "cni-plugins", level: Level::Ok, detail: p.display().to_string() },
                None => Check {
                    name: "cni-plugins",
                    level: Level::Error,
                    detail:
                        "no CNI bridge plugin (apt-get install containernetworking-plugins, or set IGNITE_CNI_BIN_DIR)"
                            .into(),
                },
            },
            "BinaryInPath",
        ));
    }
    out
}

/// The static busybox the guest init shim runs (the initramfs has no C library for it).
pub fn busybox() -> Check {
    let bb = crate::provision::busybox();
    let (level, detail) = match ignite_proc::elf::static_x86_64(&bb) {
        Ok(Some(true)) => (Level::Ok, bb.display().to_string()),
        Ok(Some(false)) => {
            (Level::Error, format!("{} is dynamically linked: apt-get install busybox-static", bb.display()))
        }
        Ok(None) => {
            (Level::Error, format!("{} is not an x86-64 executable: apt-get install busybox-static", bb.display()))
        }
        Err(e) => (
            Level::Error,
            format!("{}: {e} (the guest init shim needs it): apt-get install busybox-static", bb.display()),
        ),
    };
    Check { name: "busybox-static", level, detail }
}
