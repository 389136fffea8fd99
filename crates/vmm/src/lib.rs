//! The VMM seam: the one interface between ignite and the program that runs a guest.
//!
//! A [`Backend`] says what it can do ([`Capabilities`]: root-disk layouts, drive formats, the
//! agent channel, accelerators, device limits), checks the host for itself
//! ([`Backend::check_host`]), chooses an accelerator ([`Backend::choose_accel`]) and turns a
//! validated [`Machine`] into a running [`Instance`] ([`Backend::launch`]): the VMM process
//! with its serial console, a [`Control`] for graceful shutdown and force stop, the runtime
//! files it made and where its agent channel is. A backend configured over an API socket after
//! its process starts (Firecracker) does so inside `launch`, before it returns.
//!
//! How the process is started — directly in the VM's network namespace, or through the jail —
//! is not the backend's business: the supervisor passes a [`Launcher`]. The backend describes
//! what the VMM needs ([`VmmCommand`]: its argv, the host files it reads and the paths it
//! expects them at, the disks it opens, whether it needs `/dev/kvm`) and which control sockets
//! it listens on ([`Launcher::listen`]); the launcher makes that happen.
//!
//! Everything QEMU-specific (argv, QMP, the KVM probe) lives in [`qemu`], everything
//! Firecracker-specific (its API conversation, its log) in [`firecracker`]. Backends are
//! registered in [`backend`], the only place that knows their names.

pub mod accel;
pub mod firecracker;
pub mod kernel;
pub mod machine;
pub mod qemu;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use accel::{Accel, AccelChoice, AccelVerdict};
pub use machine::{DiskFormat, Drive, Machine, Nic};

/// The backend used when neither the VM nor the Configuration names one.
pub const DEFAULT_BACKEND: &str = "qemu";

/// Where a jailed VMM finds its kernel and initramfs (bind-mounted read-only).
pub const JAIL_KERNEL: &str = "/boot/vmlinux";
pub const JAIL_INITRD: &str = "/boot/initrd";
/// Where a jailed VMM that opens its drives by path finds them: `/disks/<key>`
/// ([`VmmDisk::by_path`]).
pub const JAIL_DISKS: &str = "/disks";

/// The host end of the guest agent's channel in a VM's run directory (the supervisor's mux
/// connects to it).
pub const AGENT_VMM_SOCKET: &str = "agent-vmm.sock";

/// The VMM's standard error, in its VM's directory (written by the supervisor; read back for
/// the VMM's own word on why it failed).
pub const VMM_LOG: &str = "vmm.log";

/// How a VM's root disk is laid out on the host. Create asks the backend which one to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootDisk {
    /// A qcow2 overlay whose backing file is the image's shared raw base: O(1) to create,
    /// copy-on-write per VM.
    Qcow2Overlay,
    /// The image's shared raw base attached read-only, and the VM's own raw ext4 disk (its
    /// writable layer, of the VM's disk size) that the guest's init stacks on the base with
    /// overlayfs: for a VMM that reads raw images only. O(1) to create as well.
    RawLayered,
}

/// The guest agent's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentChannel {
    /// A virtio-serial port; host side a Unix stream socket the VMM listens on.
    VirtioSerial,
    /// A virtio-vsock port ([`AGENT_VSOCK_PORT`]) the agent listens on; host side the VMM's
    /// Unix socket, where a connection starts with Firecracker's `CONNECT <port>` handshake.
    Vsock,
}

/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// What a backend can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Root-disk layouts it boots, preferred first.
    pub root_disks: &'static [RootDisk],
    /// Formats of the drives it reads.
    pub drive_formats: &'static [DiskFormat],
    pub agent: AgentChannel,
    pub accels: &'static [Accel],
    /// Most virtio devices (drives, NICs, the agent's) one VM can have.
    pub max_devices: usize,
    /// Most vCPUs one VM can have.
    pub max_vcpus: u64,
    /// Whether it runs in ignite's own jail (`--jail`).
    pub jail: bool,
}

/// What `check_host` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// The VMM binary.
    pub binary: PathBuf,
    /// Its version line, when it tells one.
    pub version: Option<String>,
    /// Whether it can confine itself with seccomp, and how (for `ignite doctor`).
    pub seccomp: Result<String, String>,
}

/// How a backend is confined when jailed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailProfile {
    /// What the VMM takes besides guest memory (MiB): the jail's memory limit is guest memory
    /// plus this.
    pub overhead_mib: u64,
    /// Its seccomp filter, for the user (`ignite inspect`).
    pub seccomp: String,
}

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: &'static str },
    #[error("invalid machine: {0}")]
    Invalid(String),
    #[error("cannot talk to the VMM control socket {path}")]
    Control {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VMM refused {command}: {message}")]
    Refused { command: String, message: String },
    #[error("cannot start the VMM: {0}")]
    Launch(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A disk the VMM opens. A launcher that opens disks for the VMM (the jail) fills
/// `{fd:<key>.rw}`, `{fd:<key>.ro}` and `{fd:<key>.backing}` in the argv with descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmDisk {
    pub key: String,
    pub path: PathBuf,
    pub read_only: bool,
    pub backing: Option<PathBuf>,
    /// The VMM opens it itself, by path (a VMM that takes no descriptors, e.g. Firecracker):
    /// jailed, it finds it at `JAIL_DISKS/<key>`, and opens it as the VM's uid.
    pub by_path: bool,
}

impl VmmDisk {
    /// Where a jailed VMM finds a disk it opens by path.
    pub fn jail_path(key: &str) -> PathBuf {
        Path::new(JAIL_DISKS).join(key)
    }
}

/// What the VMM process needs, as the backend describes it to a [`Launcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Host files the VMM reads, and the path it names them by in `args` when jailed.
    pub files: Vec<(PathBuf, String)>,
    pub disks: Vec<VmmDisk>,
    /// Whether it needs `/dev/kvm`.
    pub kvm: bool,
    /// A host directory the VMM makes its own files in (sockets it binds, its log): jailed, it
    /// sees it at the same path, writable and owned by the VM's uid.
    pub rw_dir: Option<PathBuf>,
}

/// Starts a VMM process the way the supervisor wants it (directly in the VM's network
/// namespace, or jailed).
pub trait Launcher {
    /// Whether the VMM will run jailed: it then names its kernel [`JAIL_KERNEL`] and
    /// [`JAIL_INITRD`] and its disks by descriptor placeholders, and bounds its own caches.
    fn jailed(&self) -> bool;
    /// Binds a listening Unix socket at `path` that the VMM inherits; returns the descriptor
    /// number the VMM gets it as.
    fn listen(&mut self, path: &Path) -> Result<i32, VmmError>;
    /// Starts the VMM with stdin/stdout piped (its serial console).
    fn spawn(&mut self, cmd: VmmCommand) -> Result<Child, VmmError>;
}

/// Asks a running VMM to act.
pub trait Control: Send + Sync + Debug {
    /// Asks the guest to shut down (what its init reacts to: Ctrl-Alt-Del).
    fn request_shutdown(&self) -> Result<(), VmmError>;
    /// Stops the VMM now (the supervisor falls back to SIGKILL).
    fn force_stop(&self) -> Result<(), VmmError>;
}

/// Where the supervisor reaches the guest agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// A Unix stream socket in the run directory.
    pub path: PathBuf,
    /// A vsock port to ask for first (`CONNECT <port>\n`, answered `OK <n>\n`), when the socket
    /// is a VMM's vsock multiplexer.
    pub vsock_port: Option<u32>,
}

/// A running VMM.
#[derive(Debug)]
pub struct Instance {
    pub child: Child,
    pub control: Arc<dyn Control>,
    /// Files the VMM made or listens on in the run directory, removed once it is gone.
    pub runtime_files: Vec<PathBuf>,
    /// The host end of the agent channel, when the machine has an agent.
    pub agent: Option<AgentEndpoint>,
}

impl Instance {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// The serial console: what the guest reads, what it writes.
    pub fn take_console(&mut self) -> Option<(ChildStdin, ChildStdout)> {
        Some((self.child.stdin.take()?, self.child.stdout.take()?))
    }
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

/// A VMM backend.
pub trait Backend: Send + Sync + Debug {
    /// Short name, recorded in `status.runtime.name`.
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Whether this host can run the VMM (its binary, its version, its seccomp support).
    fn check_host(&self) -> Result<HostInfo, VmmError>;
    /// The VMM binary, without running it (what a start checks; [`Backend::check_host`] runs
    /// it, for `ignite doctor`).
    fn binary(&self) -> Result<PathBuf, VmmError> {
        self.check_host().map(|i| i.binary)
    }
    /// Chooses the accelerator for booting `kernel`; `auto` probes once per host and kernel,
    /// cached under `state_dir`. `probe_initrd` writes an initramfs whose init prints
    /// [`accel::PROBE_MARKER`] and powers off.
    fn choose_accel(
        &self,
        state_dir: &Path,
        choice: AccelChoice,
        kernel: &Path,
        probe_initrd: &dyn Fn(&Path) -> Result<(), String>,
    ) -> Result<AccelVerdict, String>;
    /// What a guest booting `kernel` under `accel` is told beyond its command line, for what
    /// this VMM emulates differently from hardware (each word with a leading space; empty
    /// when nothing). `state_dir` holds the caches of facts about kernels ([`kernel`]).
    fn guest_args(&self, _state_dir: &Path, _accel: Accel, _kernel: &Path) -> String {
        String::new()
    }
    /// How it is confined in a jail.
    fn jail_profile(&self, machine: &Machine) -> JailProfile;
    /// Files it may leave in a run directory (stale ones are removed before a launch and after
    /// the VM ends).
    fn runtime_files(&self, run_dir: &Path) -> Vec<PathBuf>;
    /// Starts `machine` (validated against [`Backend::capabilities`] first) through `launcher`.
    fn launch(&self, machine: &Machine, launcher: &mut dyn Launcher) -> Result<Instance, VmmError>;
    /// Saves a running VM's machine state (memory and devices) to `state` (and the other
    /// [`Backend::saved_files`] beside it, made by the caller's uid, readable by all), with the guest
    /// paused from before `while_paused` runs (the caller copies the VM's disks then) until
    /// the state is written (not synced: the caller makes it durable once the guest runs
    /// again); the guest runs on afterwards. Returns how long it was paused.
    /// A machine started with [`Machine::incoming`] set to that file resumes from it.
    fn save(
        &self,
        _run_dir: &Path,
        _state: &Path,
        _memory_mib: u64,
        _while_paused: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<std::time::Duration, VmmError> {
        Err(VmmError::Unsupported(format!("the {} backend cannot take snapshots yet", self.name())))
    }
    /// The files a state saved at `state` by [`Backend::save`] consists of, `state` first (a
    /// snapshot moves and removes them together).
    fn saved_files(&self, state: &Path) -> Vec<PathBuf> {
        vec![state.to_path_buf()]
    }
    /// Lets the guest run again if it is paused (as a killed [`Backend::save`] leaves it);
    /// whether it was.
    fn resume(&self, _run_dir: &Path) -> Result<bool, VmmError> {
        Err(VmmError::Unsupported(format!("the {} backend cannot take snapshots yet", self.name())))
    }
    /// Why the VMM ended the VM, from what it left in `run_dir` (its log), when it exited with
    /// an error and the guest said nothing.
    fn explain_exit(&self, _run_dir: &Path) -> Option<String> {
        None
    }
    /// The VMM's own metrics for a running VM whose run directory is `run_dir`, as
    /// (group, name, value), for ignited's `/metrics`; empty when it keeps none.
    fn metrics(&self, _run_dir: &Path) -> Vec<(String, String, f64)> {
        Vec::new()
    }
}

/// Where backends find their binaries (`None`: on PATH).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The QEMU binary (`$IGNITE_QEMU`, else `qemu-system-x86_64` from PATH).
    pub qemu: Option<PathBuf>,
    /// The Firecracker binary (`$IGNITE_FIRECRACKER`, else `firecracker` from PATH).
    pub firecracker: Option<PathBuf>,
}

impl Settings {
    /// From the environment (`IGNITE_QEMU`, `IGNITE_FIRECRACKER`).
    pub fn from_env() -> Settings {
        Settings {
            qemu: std::env::var_os("IGNITE_QEMU").map(PathBuf::from),
            firecracker: std::env::var_os("IGNITE_FIRECRACKER").map(PathBuf::from),
        }
    }
}

/// Names of the backends of this build.
pub const BACKENDS: &[&str] = &["qemu", "firecracker"];

/// The backend called `name`: the one place that knows backends by name.
pub fn backend(name: &str, settings: &Settings) -> Result<Arc<dyn Backend>, VmmError> {
    match name {
        "qemu" => Ok(Arc::new(qemu::Qemu::new(settings.qemu.clone()))),
        "firecracker" => Ok(Arc::new(firecracker::Firecracker::new(settings.firecracker.clone()))),
        other => Err(VmmError::Missing { what: format!("VMM backend {other:?}"), hint: "use qemu or firecracker" }),
    }
}

/// Every runtime file any backend of this build may leave in `run_dir`.
pub fn all_runtime_files(run_dir: &Path) -> Vec<PathBuf> {
    let s = Settings::default();
    BACKENDS.iter().filter_map(|n| backend(n, &s).ok()).flat_map(|b| b.runtime_files(run_dir)).collect()
}

/// Connects to a VMM's Unix socket. A jailed VMM owns the directory its sockets are in (it
/// binds them itself), so a socket that is a symlink is refused rather than followed: a VMM
/// taken over by its guest must not point the host at another socket.
pub fn connect_vmm_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is a symlink, not the VMM's socket", path.display()),
        ));
    }
    std::os::unix::net::UnixStream::connect(path)
}

/// Opens a file a VMM wrote (its log, its metrics) without following a symlink, for the same
/// reason as [`connect_vmm_socket`].
pub fn open_vmm_file(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Finds `program` (absolute, or on PATH).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() || program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmms_socket_or_file_is_never_reached_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real.sock");
        let _l = std::os::unix::net::UnixListener::bind(&real).unwrap();
        assert!(connect_vmm_socket(&real).is_ok());
        let link = d.path().join("firecracker.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = connect_vmm_socket(&link).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        let secret = d.path().join("secret");
        std::fs::write(&secret, "kept").unwrap();
        let log = d.path().join("firecracker.log");
        std::os::unix::fs::symlink(&secret, &log).unwrap();
        assert!(open_vmm_file(&log, false).is_err());
        assert!(open_vmm_file(&log, true).is_err());
        assert!(open_vmm_file(&secret, false).is_ok());
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "kept");
    }
}
