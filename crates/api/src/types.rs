//! The `ignite.weave.works/v1alpha4` kinds: VM, Image, Kernel and Configuration, with the
//! spec and status fields Weave Ignite has, plus a few status fields of our own (marked
//! "ignite extension") that Ignite did not have: the VMM backend, the supervisor's pid and
//! how a VM last exited.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::{ObjectMeta, API_VERSION};
use crate::ports::PortMapping;
use crate::reference::ImageRef;
use crate::size::Size;

/// Default vCPU count, as Ignite's.
pub const DEFAULT_CPUS: u64 = 1;
/// Default memory, as Ignite's (512MB).
pub const DEFAULT_MEMORY: Size = Size::from_mib(512);
/// Default disk size, as Ignite's (4GB).
pub const DEFAULT_DISK_SIZE: Size = Size::from_mib(4096);
/// Default kernel command line. Ignite's, without `ip=dhcp`: the runtime appends the
/// `ip=` argument the network set-up computed, so the guest needs no DHCP round trip.
pub const DEFAULT_KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// Default kernel image: the one `images/kernel/build.sh` builds and imports. `localhost/`
/// marks it as local (never pulled from Docker Hub).
pub const DEFAULT_KERNEL_IMAGE: &str = "localhost/ignite-kernel:6.1";

macro_rules! kind_object {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            pub api_version: String,
            pub kind: String,
            #[serde(default)]
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            #[serde(default)]
            pub status: $status,
        }

        impl $name {
            pub const KIND: &'static str = $kind;

            /// A new object of this kind at the current API version.
            pub fn new(metadata: ObjectMeta, spec: $spec) -> Self {
                $name {
                    api_version: API_VERSION.to_string(),
                    kind: $kind.to_string(),
                    metadata,
                    spec,
                    status: Default::default(),
                }
            }
        }
    };
}

kind_object!(
    /// A virtual machine.
    Vm, "VM", VmSpec, VmStatus
);
kind_object!(
    /// An imported OCI image: its rootfs as an ext4 base disk.
    Image, "Image", ImageSpec, ImageStatus
);
kind_object!(
    /// An imported kernel (from an OCI image holding `/boot/vmlinux`, or a vmlinux file).
    Kernel, "Kernel", KernelSpec, KernelStatus
);

kind_object!(
    /// A running VM's saved state (ignite extension): its memory and devices, and a
    /// point-in-time copy of its writable disk. A clone of it (`ignite run --from-snapshot`)
    /// resumes it as a new VM.
    Snapshot, "Snapshot", SnapshotSpec, SnapshotStatus
);

/// Where a snapshot was taken, and the machine it restores to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The VM it was taken of.
    #[serde(default)]
    pub vm: String,
    #[serde(default)]
    pub vm_name: String,
    /// That VM's spec when it was taken: a clone runs with it (memory, vCPUs, image, kernel:
    /// the devices must be the same), under its own name and network.
    #[serde(default)]
    pub vm_spec: VmSpec,
    /// The VMM whose state it is.
    #[serde(default)]
    pub vmm: String,
    /// That VM's annotations (network plugin, extra interfaces: a clone has the same
    /// devices).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vm_annotations: BTreeMap<String, String>,
    /// The image and kernel that VM was created from.
    #[serde(default)]
    pub image: OciSource,
    #[serde(default)]
    pub kernel: OciSource,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// What the saved machine state (memory and devices) takes on the host's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_size: Option<Size>,
    /// What the copy of the VM's writable disk layer takes on the host's disk (a sparse
    /// layer's holes take nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<Size>,
    /// How long the VM was paused while it was taken, milliseconds.
    #[serde(default)]
    pub paused_ms: u64,
    /// The SSH host key files its guest had (e.g. `/etc/ssh/ssh_host_ed25519_key`): each clone
    /// gets new keys of these types in their place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
}

impl Snapshot {
    pub fn uid(&self) -> String {
        self.metadata.uid.map(|u| u.to_string()).unwrap_or_default()
    }
}

/// Host-wide defaults (`/etc/ignite/config.yaml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Configuration {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ConfigurationSpec,
}

impl Configuration {
    pub const KIND: &'static str = "Configuration";
}

/// What a VM should be.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmSpec {
    #[serde(default)]
    pub image: OciSpec,
    #[serde(default, skip_serializing_if = "OciSpec::is_unset")]
    pub sandbox: OciSpec,
    #[serde(default)]
    pub kernel: VmKernelSpec,
    /// 0 means "use the default".
    #[serde(default, rename = "cpus")]
    pub cpus: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<Size>,
    #[serde(default, skip_serializing_if = "VmNetworkSpec::is_empty")]
    pub network: VmNetworkSpec,
    #[serde(default, skip_serializing_if = "VmStorageSpec::is_empty")]
    pub storage: VmStorageSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_files: Vec<FileMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ssh_serde")]
    pub ssh: Option<Ssh>,
    /// VMM backend (`qemu`, `firecracker`); ignite extension. Unset: the
    /// configuration's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<String>,
    /// Whether the guest agent (`ignite exec`/`cp` without sshd) is installed and started;
    /// ignite extension. Unset: yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<bool>,
    /// Whether the VMM runs confined (own uid, namespaces, cgroup, seccomp); ignite extension.
    /// Unset: the configuration's default (yes). `false` is for debugging a VMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<bool>,
}

impl VmSpec {
    /// Fills unset fields with Ignite's defaults.
    pub fn set_defaults(&mut self) {
        if self.cpus == 0 {
            self.cpus = DEFAULT_CPUS;
        }
        self.memory.get_or_insert(DEFAULT_MEMORY);
        self.disk_size.get_or_insert(DEFAULT_DISK_SIZE);
        if self.kernel.oci.is_none() {
            self.kernel.oci = DEFAULT_KERNEL_IMAGE.parse().ok();
        }
        if self.kernel.cmd_line.is_empty() {
            self.kernel.cmd_line = DEFAULT_KERNEL_CMDLINE.to_string();
        }
    }

    /// Overlays the fields set in `over` onto `self` (config file defaults < manifest < flags).
    pub fn merge_from(&mut self, over: &VmSpec) {
        if over.image.oci.is_some() {
            self.image = over.image.clone();
        }
        if over.sandbox.oci.is_some() {
            self.sandbox = over.sandbox.clone();
        }
        if over.kernel.oci.is_some() {
            self.kernel.oci = over.kernel.oci.clone();
        }
        if !over.kernel.cmd_line.is_empty() {
            self.kernel.cmd_line = over.kernel.cmd_line.clone();
        }
        if over.cpus != 0 {
            self.cpus = over.cpus;
        }
        if over.memory.is_some() {
            self.memory = over.memory;
        }
        if over.disk_size.is_some() {
            self.disk_size = over.disk_size;
        }
        if !over.network.ports.is_empty() {
            self.network.ports = over.network.ports.clone();
        }
        if !over.storage.is_empty() {
            self.storage = over.storage.clone();
        }
        if !over.copy_files.is_empty() {
            self.copy_files = over.copy_files.clone();
        }
        if over.ssh.is_some() {
            self.ssh = over.ssh.clone();
        }
        if over.vmm.is_some() {
            self.vmm = over.vmm.clone();
        }
        if over.agent.is_some() {
            self.agent = over.agent;
        }
        if over.jail.is_some() {
            self.jail = over.jail;
        }
    }

    pub fn memory(&self) -> Size {
        self.memory.unwrap_or(DEFAULT_MEMORY)
    }
    pub fn disk_size(&self) -> Size {
        self.disk_size.unwrap_or(DEFAULT_DISK_SIZE)
    }
}

/// An OCI image reference field (`{oci: REF}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<ImageRef>,
}

impl OciSpec {
    pub fn is_unset(&self) -> bool {
        self.oci.is_none()
    }
}

/// Kernel of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmKernelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmd_line: String,
}

/// Network of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmNetworkSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
}

impl VmNetworkSpec {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Extra block devices of a VM and where the guest mounts them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmStorageSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

impl VmStorageSpec {
    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty() && self.volume_mounts.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_device: Option<BlockDeviceVolume>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceVolume {
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

/// A host file or directory copied into the VM's disk at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileMapping {
    pub host_path: String,
    pub vm_path: String,
}

/// SSH set-up: `ssh: true` generates a key pair, `ssh: PATH` imports a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ssh {
    Generate,
    PublicKeyPath(String),
}

mod ssh_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Ssh>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Ssh::Generate) => s.serialize_bool(true),
            Some(Ssh::PublicKeyPath(p)) => s.serialize_str(p),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ssh>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        Ok(
            match Raw::deserialize(d)
                .map_err(|_| serde::de::Error::custom("expected true, false or a public key path"))?
            {
                Raw::Bool(true) => Some(Ssh::Generate),
                Raw::Bool(false) => None,
                Raw::Str(s) if s == "true" => Some(Ssh::Generate),
                Raw::Str(s) if s == "false" || s.is_empty() => None,
                Raw::Str(s) => Some(Ssh::PublicKeyPath(s)),
            },
        )
    }
}

/// What a VM is, as last observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmStatus {
    #[serde(default)]
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    #[serde(default)]
    pub image: OciSource,
    #[serde(default)]
    pub kernel: OciSource,
    #[serde(default, rename = "idPrefix")]
    pub id_prefix: String,
    /// How the VM last ended (ignite extension), e.g. "guest powered off", "killed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
}

/// The process running a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// Runtime-specific id (Ignite: the container id; here the supervisor's id).
    #[serde(default)]
    pub id: String,
    /// Runtime name. Ignite wrote containerd or docker; ignite writes the VMM backend
    /// (`qemu`, `firecracker`).
    #[serde(default)]
    pub name: String,
    /// Supervisor process id (ignite extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Accelerator in use: `kvm` or `tcg` (ignite extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// How the VMM is confined, when it is (ignite extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailStatus>,
}

/// A jailed VMM's identity and limits (ignite extension of the runtime status).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JailStatus {
    /// The VMM's own uid (and gid).
    pub uid: u32,
    /// The VM's cgroup (`/sys/fs/cgroup/...`, one per controller on a cgroup v1 host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<String>,
    /// Memory limit of the VMM process (guest memory plus the VMM's own), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// CPU limit as `quota period` in microseconds (`max` for none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_max: String,
    /// The seccomp policy in force.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seccomp: String,
}

/// How a VM's last run ended (ignite extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
}

/// Network state of a running VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkStatus {
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
}

/// Content id and size of an imported image or kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciSource {
    /// Content id, e.g. `docker.io/library/alpine@sha256:…` or `sha256:…` for local sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<ImageRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageStatus {
    #[serde(default)]
    pub oci_source: OciSource,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<ImageRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default)]
    pub oci_source: OciSource,
}

/// Host-wide defaults, as Ignite's `Configuration` kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigurationSpec {
    /// Ignite's container runtime (`containerd` or `docker`). ignite needs neither: the value
    /// is accepted for compatibility and has no effect.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// `cni` (default) or `none`; Ignite's `docker-bridge` is accepted and means `cni`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_plugin: String,
    #[serde(default)]
    pub vm_defaults: VmSpec,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id_prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry_config_dir: String,
    /// Default VMM backend (ignite extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<String>,
    /// Registries reachable over plain HTTP besides loopback ones (ignite extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// How VMMs are confined (ignite extension).
    #[serde(default, skip_serializing_if = "JailConfig::is_default")]
    pub jail: JailConfig,
    /// Where the VMM binaries are, when not on PATH (ignite extension; the environment's
    /// `IGNITE_QEMU`, `IGNITE_FIRECRACKER` and the CLI's `--firecracker` come first).
    #[serde(default, skip_serializing_if = "VmmBinaries::is_empty")]
    pub vmm_binaries: VmmBinaries,
    /// QEMU's translation cache per VM under TCG (ignite extension; default 256MB): what the
    /// VMM keeps of the guest's code translated. Smaller takes less host memory per VM and
    /// boots slower (it retranslates); no effect under KVM or Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcg_cache: Option<Size>,
}

/// Paths of the VMM binaries (ignite extension of the Configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmmBinaries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker: Option<String>,
}

impl VmmBinaries {
    pub fn is_empty(&self) -> bool {
        *self == VmmBinaries::default()
    }
}

/// The VMM jail's settings (ignite extension of the Configuration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JailConfig {
    /// Jail VMMs unless a VM says `jail: false` (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// First uid (and gid) of the range VMMs run as; none of them may be a user of this host.
    #[serde(default = "default_uid_base")]
    pub uid_base: u32,
    /// How many uids the range holds (one per running VM).
    #[serde(default = "default_uid_count")]
    pub uid_count: u32,
}

fn yes() -> bool {
    true
}
fn default_uid_base() -> u32 {
    1_600_000_000
}
fn default_uid_count() -> u32 {
    65_536
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig { enabled: true, uid_base: default_uid_base(), uid_count: default_uid_count() }
    }
}

impl JailConfig {
    pub fn is_default(&self) -> bool {
        *self == JailConfig::default()
    }
}

impl Vm {
    pub fn uid(&self) -> String {
        self.metadata.uid.map(|u| u.to_string()).unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
    pub fn state(&self) -> crate::VmState {
        self.status.state()
    }
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }
}

impl Image {
    pub fn uid(&self) -> String {
        self.metadata.uid.map(|u| u.to_string()).unwrap_or_default()
    }
}

impl Kernel {
    pub fn uid(&self) -> String {
        self.metadata.uid.map(|u| u.to_string()).unwrap_or_default()
    }
}
