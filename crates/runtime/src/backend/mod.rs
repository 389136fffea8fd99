//! The VMM backend trait: the narrow interface between a VM's supervisor and the program that
//! runs the guest. A backend turns a validated [`BootConfig`] into a VMM process whose serial
//! console is its stdin/stdout, and knows how to ask that VMM for a graceful guest shutdown
//! or an immediate stop. The supervisor owns the process (spawn, wait, console, kill).

pub mod qemu;

use std::path::PathBuf;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// How guest CPUs execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (no KVM needed; ~10-50x slower guest CPU).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A block device of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    pub read_only: bool,
}

/// A network interface of the VM, backed by a host tap device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub tap: String,
    pub mac: String,
}

/// Everything a backend needs to boot a VM. Written to `vm/<uid>/boot.json` by `start` and
/// read by the supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    pub uid: String,
    pub name: String,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<DiskConfig>,
    pub nics: Vec<NicConfig>,
    pub accel: Accel,
    /// Directory for the backend's control sockets (the VM's directory).
    pub run_dir: PathBuf,
    /// Seconds a graceful stop may take before the VMM is killed.
    pub stop_grace_secs: u64,
    /// Network namespace the VMM runs in (its taps live there).
    #[serde(default)]
    pub netns: Option<String>,
    /// The lease the supervisor's DHCP responder hands out, and the server address.
    #[serde(default)]
    pub dhcp: Option<(ignite_net::dhcp::Lease, std::net::Ipv4Addr)>,
    /// Whether the guest agent runs: the VMM exposes its virtio-serial port as
    /// `agent-vmm.sock` and the supervisor multiplexes it on `agent.sock`.
    #[serde(default)]
    pub agent: bool,
    /// Prefix of system identifiers (Ignite's `--id-prefix`): the VMM's process name is
    /// `<prefix>-<uid>`.
    #[serde(default = "default_id_prefix")]
    pub id_prefix: String,
    /// Debug mode (`ignite run/start -d`): the VMM logs the guest's errors into `vmm.log`.
    #[serde(default)]
    pub debug: bool,
    /// The VMM runs jailed, as this uid and gid (see `jail`); `None`: as root, unconfined.
    #[serde(default)]
    pub jail: Option<BootJail>,
    /// Control sockets the supervisor bound and hands to the VMM (set by the supervisor).
    #[serde(skip)]
    pub fds: VmmFds,
}

/// A jailed VMM's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootJail {
    pub uid: u32,
    pub gid: u32,
}

/// Listening sockets passed to the VMM as descriptors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmmFds {
    pub qmp: Option<i32>,
    pub agent: Option<i32>,
}

/// Where a jailed VMM finds its kernel and initramfs (bind-mounted read-only).
pub const JAIL_KERNEL: &str = "/boot/vmlinux";
pub const JAIL_INITRD: &str = "/boot/initrd";

fn default_id_prefix() -> String {
    "ignite".into()
}

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: &'static str },
    #[error("cannot talk to the VMM control socket {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VMM refused {command}: {message}")]
    Refused { command: String, message: String },
}

/// A VMM backend.
pub trait Backend: Send + Sync {
    /// Short name, recorded in `status.runtime.name` (`qemu`, `firecracker`, `builtin`).
    fn name(&self) -> &'static str;
    /// The VMM command line; the supervisor spawns it with piped stdin/stdout (the serial
    /// console) and kills it if the supervisor dies.
    fn command(&self, boot: &BootConfig) -> Result<Command, BackendError>;
    /// Asks the guest to shut down (a Ctrl-Alt-Del its init reacts to).
    fn request_shutdown(&self, boot: &BootConfig) -> Result<(), BackendError>;
    /// Stops the VMM now (the supervisor falls back to SIGKILL).
    fn force_stop(&self, boot: &BootConfig) -> Result<(), BackendError>;
}

/// The backend called `name`.
pub fn by_name(name: &str) -> Result<Box<dyn Backend>, BackendError> {
    match name {
        "qemu" => Ok(Box::new(qemu::Qemu::from_env())),
        "firecracker" => Err(BackendError::Missing {
            what: "the firecracker backend".into(),
            hint: "it is not part of this build yet; use --vmm qemu",
        }),
        "builtin" => Err(BackendError::Missing {
            what: "the builtin backend".into(),
            hint: "it is not part of this build yet; use --vmm qemu",
        }),
        other => Err(BackendError::Missing { what: format!("VMM backend {other:?}"), hint: "use qemu" }),
    }
}
