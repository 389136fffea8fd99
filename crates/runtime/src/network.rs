//! A VM's network, as the runtime sees it: which plugin (`cni` or `none`), its attachment saved
//! in `vm/<uid>/network.json` (so it is released even after a crash), and teardown.

use std::path::Path;

use ignite_api::Vm;
use ignite_net::{AttachOptions, Attachment, CniConfig, PortMapping};
use ignite_store::Store;

use crate::config::LoadedConfig;

/// Annotation selecting the network plugin of a VM (`cni` or `none`).
pub const PLUGIN_ANNOTATION: &str = "ignite.weave.works/network-plugin";
/// Annotation requesting a fixed IPv4 address.
pub const IP_ANNOTATION: &str = "ignite.weave.works/ip";

/// Annotation prefix of Weave Ignite's extra interfaces:
/// `ignite.weave.works/interface/<name>: tc-redirect`.
pub const INTERFACE_ANNOTATION: &str = "ignite.weave.works/interface/";
/// Most extra interfaces a VM takes (QEMU microvm has 8 virtio-mmio slots in all).
pub const MAX_EXTRA_INTERFACES: usize = 3;

/// The extra interfaces a VM asks for, sorted by name (the guest sees them as eth1, eth2, ...
/// in that order, as Weave Ignite plugged them). `eth0` (the CNI interface) may be named with
/// Ignite's `dhcp-bridge`, which is what it is here; an empty name is ignored, as Ignite did.
pub fn extra_interfaces(vm: &Vm) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (k, mode) in &vm.metadata.annotations {
        let Some(name) = k.strip_prefix(INTERFACE_ANNOTATION) else { continue };
        if name.is_empty() || (name == "eth0" && mode == "dhcp-bridge") {
            continue;
        }
        if name.len() > 15 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(format!(
                "annotation {k}: {name:?} is not an interface name (at most 15 letters, digits, '-', '_', '.')"
            ));
        }
        if name == "eth0" || name.starts_with("tap") || name == "lo" {
            return Err(format!("annotation {k}: {name} is ignite's own interface in the VM's namespace"));
        }
        if mode != "tc-redirect" {
            return Err(format!(
                "annotation {k}: mode {mode:?} is not supported for an extra interface (use tc-redirect)"
            ));
        }
        out.push(name.to_string());
    }
    out.sort();
    if out.len() > MAX_EXTRA_INTERFACES {
        return Err(format!("{} extra interfaces asked; at most {MAX_EXTRA_INTERFACES}", out.len()));
    }
    Ok(out)
}

/// The network plugin a VM uses.
pub fn plugin_for(vm: &Vm, config: &LoadedConfig) -> String {
    let p =
        vm.metadata.annotations.get(PLUGIN_ANNOTATION).cloned().unwrap_or_else(|| config.spec.network_plugin.clone());
    match p.as_str() {
        "" | "cni" | "docker-bridge" => "cni".into(),
        other => other.into(),
    }
}

/// Attach options for a VM: its ports and requested IP.
pub fn options_for(vm: &Vm) -> Result<AttachOptions, String> {
    let ports = vm
        .spec
        .network
        .ports
        .iter()
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.vm_port,
            protocol: p.protocol.to_string(),
            host_ip: p.bind_address.map(|a| a.to_string()).unwrap_or_default(),
        })
        .collect();
    let ip = match vm.metadata.annotations.get(IP_ANNOTATION) {
        Some(s) => Some(s.parse().map_err(|_| format!("invalid IP {s:?}"))?),
        None => None,
    };
    let prefix = if vm.status.id_prefix.is_empty() { "ignite" } else { vm.status.id_prefix.as_str() };
    let netns = Some(format!("{prefix}-{}", vm.uid()));
    Ok(AttachOptions { cni: CniConfig::default(), network: None, ports, ip, netns, tap_owner: None })
}

/// [`options_for`] with the taps owned by `jail_uid`, the VMM's uid when it runs jailed.
pub fn options_for_start(vm: &Vm, jail_uid: Option<u32>) -> Result<AttachOptions, String> {
    let mut opts = options_for(vm)?;
    opts.tap_owner = jail_uid;
    Ok(opts)
}

/// The first half of a resumed VM's attachment, made by its supervisor before the VMM starts:
/// the namespace and tap of `plan` (recorded by `start`), nothing from CNI yet. Returns how to
/// [`complete`] it. On failure, what it made is released (the record stays for `start`).
pub fn prepare(vm: &Vm, jail_uid: Option<u32>, plan: &Attachment) -> Result<AttachOptions, String> {
    let opts = options_for_start(vm, jail_uid)?;
    ignite_net::attach::prepare(plan, &opts).map_err(|e| ignite_net::error_chain(&e))?;
    Ok(opts)
}

/// The rest of a resumed VM's attachment (CNI ADD, the redirects), recorded in `dir` once
/// made; on failure everything is released.
pub fn complete(dir: &Path, plan: Attachment, opts: &AttachOptions) -> Result<Attachment, String> {
    let att = ignite_net::attach::complete(plan, opts).map_err(|e| ignite_net::error_chain(&e))?;
    if let Err(e) = save(dir, &att) {
        release(dir);
        return Err(e.to_string());
    }
    Ok(att)
}

/// Lets a resumed VM's frames flow (see `ignite_net::attach::open`), once its guest has its
/// own identity.
pub fn open(att: &Attachment) -> Result<(), String> {
    ignite_net::attach::open(att).map_err(|e| ignite_net::error_chain(&e))
}

pub fn save(dir: &Path, att: &Attachment) -> Result<(), ignite_store::StoreError> {
    ignite_store::write_json_atomic(&crate::vmdir::VmDir::new(dir).network_record(), att)
}

/// Releases the VM's network if an attachment was saved; removes the record once released.
pub fn release(dir: &Path) {
    let path = crate::vmdir::VmDir::new(dir).network_record();
    let Ok(bytes) = std::fs::read(&path) else { return };
    let Ok(att) = serde_json::from_slice::<Attachment>(&bytes) else {
        let _ = std::fs::remove_file(&path);
        return;
    };
    match ignite_net::detach(&att, &CniConfig::default()) {
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
        }
        Err(e) => tracing::warn!("releasing the network of {}: {e}", dir.display()),
    }
}

/// Releases the networks of VMs that are not running (after crashes): called when a VM is
/// found dead and by `ignite` on recovery.
pub fn recover(store: &Store, vm: &Vm) {
    if !vm.status.running {
        release(&store.dir::<Vm>(&vm.uid()));
    }
}

/// Refuses host ports that another running VM publishes or that a host process listens on.
pub fn check_ports(store: &Store, vm: &Vm) -> Result<(), String> {
    // Running means a live supervisor (a record whose supervisor died holds no port).
    let others = store.list::<Vm>().map_err(|e| e.to_string())?;
    let live = |o: &Vm| o.status.supervisor().is_some_and(|p| crate::sys::is_supervisor_alive(p, &o.uid()));
    for p in &vm.spec.network.ports {
        for o in others.iter().filter(|o| o.status.running && o.uid() != vm.uid() && live(o)) {
            if o.spec.network.ports.iter().any(|q| q.host_port == p.host_port && q.protocol == p.protocol) {
                return Err(format!(
                    "host port {}/{} is already published by VM {:?}",
                    p.host_port, p.protocol, o.metadata.name
                ));
            }
        }
        let bind = p.bind_address.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let busy = match p.protocol {
            ignite_api::Protocol::Tcp => std::net::TcpListener::bind((bind, p.host_port)).is_err(),
            ignite_api::Protocol::Udp => std::net::UdpSocket::bind((bind, p.host_port)).is_err(),
        };
        if busy {
            return Err(format!("host port {}/{} is in use on this host", p.host_port, p.protocol));
        }
    }
    Ok(())
}
