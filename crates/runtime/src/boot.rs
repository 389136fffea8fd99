//! What `start` hands the supervisor (`vm/<uid>/boot.json`, see [`crate::vmdir`]): the backend's name, the machine
//! it is to run (see [`ignite_vmm::Machine`]) and the supervisor's own settings apart from it
//! (network namespace, DHCP lease, stop grace, jail identity). Also the one place that turns a
//! backend's name into a backend.

use std::sync::Arc;

use ignite_api::{ConfigurationSpec, Vm};
use ignite_vmm::{Backend, Machine, Settings, VmmError};
use serde::{Deserialize, Serialize};

/// A jailed VMM's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootJail {
    pub uid: u32,
    pub gid: u32,
}

/// Everything the supervisor needs to run a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// The backend, resolved by `start` (see [`backend_name`]).
    pub vmm: String,
    /// Where its binary is, as `start` found it set (see [`settings`]).
    #[serde(default)]
    pub binaries: ignite_vmm::Settings,
    pub machine: Machine,
    /// Seconds a graceful stop may take before the VMM is killed.
    pub stop_grace_secs: u64,
    /// Network namespace the VMM runs in (its taps live there).
    #[serde(default)]
    pub netns: Option<String>,
    /// The lease the supervisor's DHCP responder hands out, and the server address.
    #[serde(default)]
    pub dhcp: Option<(ignite_net::dhcp::Lease, std::net::Ipv4Addr)>,
    /// The VMM runs jailed, as this uid and gid (see `ignite_supervisor::jail`); `None`: as root,
    /// unconfined.
    #[serde(default)]
    pub jail: Option<BootJail>,
    /// A resumed guest's identity, given before the supervisor reports ready.
    #[serde(default)]
    pub identity: Option<IdentityPlan>,
    /// A resumed guest's CNI attachment as planned (and recorded) by `start`: its supervisor
    /// makes the namespace and tap, and runs CNI ADD while the VMM loads the snapshot; the
    /// address it gets is the guest's identity's (see [`crate::network::prepare`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<ignite_net::Attachment>,
}

/// The identity a resumed guest is given before its start reports it running. `start` writes
/// it into the boot configuration and the supervisor gives it (it owns the agent channel and
/// outlives a killed `ignite` command): no guest runs on under its snapshot's identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityPlan {
    pub hostname: String,
    /// Its own network attachment's MAC, address and gateway.
    #[serde(default)]
    pub interface: Option<ignite_agent::proto::InterfaceIdentity>,
    /// A clone gets a new machine-id; a VM resumed from its own snapshot keeps its.
    pub new_machine_id: bool,
    /// The guest's SSH host key files to replace with new keys of their types (a clone's:
    /// those its snapshot's guest had).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
    /// The contents of the guest's `/root/.ssh/authorized_keys` (the VM's own `--ssh` key, as
    /// its init shim writes them at a boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<String>,
}

impl IdentityPlan {
    /// The identity of VM `name`, attached as `att`, a new machine (a clone) or not.
    pub fn new(name: &str, att: Option<&ignite_net::Attachment>, new_machine_id: bool) -> IdentityPlan {
        IdentityPlan {
            hostname: name.to_string(),
            interface: att.map(interface_identity),
            new_machine_id,
            ssh_host_keys: Vec::new(),
            authorized_keys: None,
        }
    }
}

/// The guest's interface as attachment `a` configures it: its MAC, address and gateway.
pub fn interface_identity(a: &ignite_net::Attachment) -> ignite_agent::proto::InterfaceIdentity {
    ignite_agent::proto::InterfaceIdentity {
        name: ignite_net::attach::IFNAME.into(),
        mac: a.mac.clone(),
        address: format!("{}/{}", a.ip, a.prefix_len),
        gateway: a.gateway.map(|g| g.to_string()),
    }
}

/// The DHCP lease matching an attachment (the same address the kernel `ip=` argument gives),
/// and the server's address.
pub fn dhcp_lease(a: &ignite_net::Attachment, hostname: &str) -> Option<(ignite_net::dhcp::Lease, std::net::Ipv4Addr)> {
    let mac = ignite_net::parse_mac(&a.mac)?;
    let server = a.gateway?;
    let mut dns: Vec<std::net::Ipv4Addr> = a.dns.iter().filter_map(|d| d.parse().ok()).collect();
    if dns.is_empty() {
        dns = crate::provision::host_resolv_conf()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|v| v.trim().parse::<std::net::Ipv4Addr>().ok())
            .filter(|ip| !ip.is_loopback())
            .collect();
    }
    let lease = ignite_net::dhcp::Lease {
        mac,
        ip: a.ip,
        prefix_len: a.prefix_len,
        gateway: a.gateway,
        dns,
        hostname: hostname.to_string(),
    };
    Some((lease, server))
}

/// The backend a VM runs on: its own choice, else the Configuration's, else the default.
pub fn backend_name(vm: &Vm, config: &ConfigurationSpec) -> String {
    vm.spec.vmm.clone().or_else(|| config.vmm.clone()).unwrap_or_else(|| ignite_vmm::DEFAULT_BACKEND.into())
}

/// Where the VMM binaries are: the environment (`IGNITE_QEMU`, `IGNITE_FIRECRACKER`; the CLI's
/// `--firecracker` sets it), else the Configuration's `spec.vmmBinaries`, else PATH.
pub fn settings(config: &ConfigurationSpec) -> Settings {
    let env = Settings::from_env();
    let configured = |p: &Option<String>| p.as_ref().filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    Settings {
        qemu: env.qemu.or_else(|| configured(&config.vmm_binaries.qemu)),
        firecracker: env.firecracker.or_else(|| configured(&config.vmm_binaries.firecracker)),
    }
}

/// The backend called `name`, where the Configuration and the environment say its binary is.
pub fn backend(name: &str, config: &ConfigurationSpec) -> Result<Arc<dyn Backend>, VmmError> {
    ignite_vmm::backend(name, &settings(config))
}
