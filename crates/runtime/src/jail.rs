//! Where VMM jails live on the host, and whether this host can make them. The jailer itself is
//! in the supervisor (`ignite_supervisor::jail`); what is here is what the rest of ignite needs
//! to know of jails: a jail root to remove after a crash, a check for `doctor` and preflight.

use std::path::PathBuf;

/// Where jail roots are made (a tmpfs is mounted on each, inside the jailer's own mount
/// namespace only).
pub const JAIL_DIR: &str = "/run/ignite/jail";

/// Whether this host can jail VMMs (for `ignite doctor`): root, mount namespaces, cgroups.
pub fn host_support() -> Result<String, String> {
    if !rustix::process::geteuid().is_root() {
        return Err("jailing a VMM needs root".into());
    }
    crate::cgroup::describe()
}

/// The jail root of VM `uid`.
pub fn root_for(uid: &str) -> PathBuf {
    let base = std::env::var_os("IGNITE_JAIL_DIR").map(PathBuf::from).unwrap_or_else(|| JAIL_DIR.into());
    base.join(uid)
}
