//! Leases: what a running VM holds exclusively, held as `flock(2)` locks on open files that
//! the VM's supervisor keeps for its whole life. The kernel releases a lease when the last
//! process holding it dies, however it dies (`kill -9` included): nothing to clean up, nothing
//! to go stale.
//!
//! - The **supervisor lease** (`vm/<uid>/supervisor.lock`): taken by `start` before it
//!   allocates anything and handed to the VM's `ignite-spawn`. While it is held, a supervisor
//!   lives (or a start is on its way to one); when a start can take it, no process uses the
//!   VM's network or files, so leftovers of a killed start can be released safely.
//! - **Host ports** (`/run/ignite/ports/<proto>-<port>.lock`): a published host port is
//!   reserved host-wide, whatever the state root, for as long as the VM publishing it runs.
//!   The file names the holder, for the error that a second VM gets.
//!
//! `start` opens the leases, then passes them to `ignite-spawn` as inherited descriptors
//! (`--hold-fd N`): the open file description is shared, so the lease survives the start
//! process and ends with the supervisor.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ignite_api::Vm;

/// Where host-port leases live (host-wide, not per state root).
pub const PORTS_DIR: &str = "/run/ignite/ports";

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    file: File,
    pub what: String,
}

impl Lease {
    /// The descriptor to hand to the supervisor.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options().create(true).truncate(false).read(true).write(true).open(path)
}

/// Takes a lease on `path` without waiting; `Ok(None)` when another process holds it.
pub fn try_take(path: &Path, what: &str) -> std::io::Result<Option<Lease>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lease { file, what: what.to_string() })),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The supervisor lease of the VM in `dir`; `Ok(None)` while a supervisor (or a start) holds it.
pub fn supervisor(dir: &Path) -> std::io::Result<Option<Lease>> {
    try_take(&crate::vmdir::VmDir::new(dir).supervisor_lock(), "supervisor")
}

/// Whether a supervisor (or a start) holds the lease of the VM in `dir`. Takes the lease for
/// an instant when it is free, so it must not be called where a start of this VM could be
/// refused because of it: call it under the VM's start lock.
pub fn supervisor_held(dir: &Path) -> bool {
    matches!(supervisor(dir), Ok(None))
}

/// Where the leases of jailed VMMs' uids live (host-wide: one uid, one running VMM).
pub const UIDS_DIR: &str = "/run/ignite/uids";

/// The uids of the host's users and groups (never given to a VMM).
fn host_ids() -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    for f in ["/etc/passwd", "/etc/group"] {
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Some(id) = l.split(':').nth(2).and_then(|x| x.parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// A uid (used as the gid too) for the jailed VMM of VM `vm`, from `range` (first, count):
/// held host-wide for the VMM's life; none of the host's users or groups has it. The first
/// one tried depends on the VM, so a VM usually keeps its uid across restarts.
pub fn vm_uid(vm: &str, (first, count): (u32, u32)) -> Result<(Lease, u32), String> {
    if first == 0 || count == 0 || first.checked_add(count).is_none() {
        return Err(format!("invalid jail uid range {first}+{count}"));
    }
    let dir = std::env::var_os("IGNITE_UIDS_DIR").map(PathBuf::from).unwrap_or_else(|| UIDS_DIR.into());
    let taken = host_ids();
    let mut h: u32 = 0x811c_9dc5;
    for b in vm.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    for i in 0..count.min(1 << 20) {
        let uid = first + (h.wrapping_add(i) % count);
        if taken.contains(&uid) {
            continue;
        }
        let what = format!("jail uid {uid}");
        match try_take(&dir.join(format!("{uid}.lock")), &what) {
            Ok(Some(lease)) => return Ok((lease, uid)),
            Ok(None) => continue,
            Err(e) => return Err(format!("cannot reserve {what} in {}: {e}", dir.display())),
        }
    }
    Err(format!("every uid of the jail range {first}+{count} is in use: widen spec.jail.uidCount"))
}

/// The lease file of a host port.
pub fn port_path(protocol: &str, port: u16) -> PathBuf {
    let dir = std::env::var_os("IGNITE_PORTS_DIR").map(PathBuf::from).unwrap_or_else(|| PORTS_DIR.into());
    dir.join(format!("{protocol}-{port}.lock"))
}

/// Reserves every host port `vm` publishes, host-wide. Fails naming the VM (and state root)
/// that holds a port already.
pub fn host_ports(root: &Path, vm: &Vm) -> Result<Vec<Lease>, String> {
    let mut held = Vec::new();
    for p in &vm.spec.network.ports {
        let proto = p.protocol.to_string();
        let path = port_path(&proto, p.host_port);
        let what = format!("host port {}/{proto}", p.host_port);
        match try_take(&path, &what) {
            Ok(Some(mut lease)) => {
                let owner = format!("VM {:?} ({}) of state root {}\n", vm.metadata.name, vm.uid(), root.display());
                let _ = lease.file.set_len(0);
                let _ = lease.file.rewind();
                let _ = lease.file.write_all(owner.as_bytes());
                held.push(lease);
            }
            Ok(None) => {
                let mut owner = String::new();
                let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut owner));
                let owner = owner.trim();
                let by = if owner.is_empty() { "another VM on this host".to_string() } else { owner.to_string() };
                return Err(format!("{what} is already published by {by}"));
            }
            Err(e) => return Err(format!("cannot reserve {what} ({}): {e}", path.display())),
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_exclusive_across_open_files_and_ends_with_its_holder() {
        let d = tempfile::tempdir().unwrap();
        let a = supervisor(d.path()).unwrap().expect("free at first");
        assert!(supervisor(d.path()).unwrap().is_none(), "a second holder");
        assert!(supervisor_held(d.path()));
        drop(a);
        assert!(!supervisor_held(d.path()));
        assert!(supervisor(d.path()).unwrap().is_some(), "free again");
    }
}
