//! Every file of a VM's directory (`vm/<uid>/`), named in one place. What each holds and who
//! writes it:
//!
//! | file | written by | holds |
//! | --- | --- | --- |
//! | `metadata.json` | the store | the VM object |
//! | `disk.qcow2` | create | the root disk (an overlay over the image's shared base) |
//! | `initrd.cpio` | start | the per-VM initramfs (shim, files, agent) |
//! | `boot.json` | start | what the supervisor runs (backend, machine, settings) |
//! | `start.lock` | start | held while a start is in progress |
//! | `supervisor.lock` | start → supervisor | held for the supervisor's life |
//! | `network.json` | start | the network plan, then the attachment (released by its record) |
//! | `cgroup.json` | supervisor | the jail's cgroup directories |
//! | `jail.json` | supervisor | the jailer's instructions |
//! | `console.log`, `.1` | supervisor | the serial console (rotated) |
//! | `spawn.log`, `vmm.log` | start, supervisor | the supervisor's and the VMM's diagnostics |
//! | `attach.sock`, `agent.sock` | supervisor | the console and the agent multiplexer |
//! | `no-agent.reason` | start | why this boot has no agent |
//! | `id_<uid>`, `.pub` | start | the VM's SSH key (`ssh: true`) |
//!
//! The VMM's own runtime files (QEMU: `qmp.sock`, `agent-vmm.sock`) are its backend's to
//! name (`ignite_vmm::Backend::runtime_files`).

use std::path::{Path, PathBuf};

use ignite_api::Vm;
use ignite_store::Store;

/// A `qcow2-overlay` root's overlay (see `rootdisk`).
pub const QCOW2_DISK: &str = "disk.qcow2";
/// A `raw-layered` root's writable layer.
pub const UPPER_DISK: &str = "upper.ext4";
/// A `raw-layered` root's record of its layout and base.
pub const ROOT_RECORD: &str = "rootdisk.json";

/// A VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir(PathBuf);

impl VmDir {
    /// The directory of VM `uid` in `store`.
    pub fn of(store: &Store, uid: &str) -> VmDir {
        VmDir(store.dir::<Vm>(uid))
    }

    /// The VM directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> VmDir {
        VmDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The VM's UID (the directory's name).
    pub fn uid(&self) -> String {
        self.0.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The qcow2 overlay of a `qcow2-overlay` root.
    pub fn root_disk(&self) -> PathBuf {
        self.0.join(QCOW2_DISK)
    }
    /// The writable layer of a `raw-layered` root (see `rootdisk`).
    pub fn upper_disk(&self) -> PathBuf {
        self.0.join(UPPER_DISK)
    }
    /// Which layout the root disk has and the base it stands on, for a layout whose files do
    /// not say it themselves (see `rootdisk`).
    pub fn root_record(&self) -> PathBuf {
        self.0.join(ROOT_RECORD)
    }
    pub fn initrd(&self) -> PathBuf {
        self.0.join("initrd.cpio")
    }
    pub fn boot_config(&self) -> PathBuf {
        self.0.join("boot.json")
    }
    pub fn start_lock(&self) -> PathBuf {
        self.0.join("start.lock")
    }
    /// Opens [`VmDir::start_lock`] (made if need be; not locked): held by a start for its
    /// whole length, and taken by what must not act under one (see `start::wait_start_lock`).
    pub fn open_start_lock(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::options().create(true).truncate(false).write(true).open(self.start_lock())
    }
    pub fn supervisor_lock(&self) -> PathBuf {
        self.0.join("supervisor.lock")
    }
    pub fn network_record(&self) -> PathBuf {
        self.0.join("network.json")
    }
    pub fn cgroup_record(&self) -> PathBuf {
        self.0.join("cgroup.json")
    }
    pub fn jail_spec(&self) -> PathBuf {
        self.0.join("jail.json")
    }
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    /// The console log's previous part (after a rotation).
    pub fn console_log_rotated(&self) -> PathBuf {
        self.0.join("console.log.1")
    }
    pub fn spawn_log(&self) -> PathBuf {
        self.0.join("spawn.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.0.join(ignite_vmm::VMM_LOG)
    }
    pub fn attach_socket(&self) -> PathBuf {
        self.0.join("attach.sock")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    pub fn no_agent_reason(&self) -> PathBuf {
        self.0.join("no-agent.reason")
    }
    /// The VM's SSH private key (`.pub` beside it).
    pub fn ssh_key(&self) -> PathBuf {
        self.0.join(format!("id_{}", self.uid()))
    }
}

impl std::ops::Deref for VmDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for VmDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
