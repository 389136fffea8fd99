//! What a VM's initramfs carries: its hostname, `/etc/hosts`, the host's resolver
//! configuration, its SSH public key, the guest agent and, on its first boot, its `--copy-files`. The guest's
//! init shim copies them into the VM's own disk layer and hands over to the image's
//! `/sbin/init` (see `ignite_disk` for the archive and the shim).

use std::path::{Path, PathBuf};
use std::process::Command;

use ignite_api::{Ssh, Vm};
use ignite_disk::{build_vm_initramfs, DiskError, GuestAgent, VmBoot};
use ignite_store::Store;

use ignite_vmm::accel::PROBE_MARKER;

/// Static busybox used by the guest init shim (Debian's busybox-static).
pub fn busybox() -> PathBuf {
    std::env::var_os("IGNITE_BUSYBOX").map(PathBuf::from).unwrap_or_else(|| "/bin/busybox".into())
}

/// `/etc/hosts` of a VM.
pub fn hosts_file(name: &str, ips: &[std::net::IpAddr]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if ips.is_empty() {
        s.push_str(&format!("127.0.1.1\t{name}\n"));
    }
    for ip in ips {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// The host's resolver configuration, skipping systemd-resolved's loopback stub (a guest
/// cannot reach the host's 127.0.0.53) in favour of the upstream list it maintains.
pub fn host_resolv_conf() -> Option<String> {
    let main = std::fs::read_to_string("/etc/resolv.conf").ok();
    let stub = main.as_deref().map(|m| m.lines().any(|l| l.trim().starts_with("nameserver 127."))).unwrap_or(false);
    if stub {
        if let Ok(up) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return Some(up);
        }
    }
    main
}

/// Builds `vm`'s initramfs at `out`, with `agent` (the static guest agent) when given.
/// The per-boot initramfs of `vm`, whose root disk is in `layout`, with the guest agent (and
/// the channel it is reached by) when it runs one.
pub fn vm_initramfs(
    store: &Store,
    vm: &Vm,
    out: &Path,
    layout: ignite_vmm::RootDisk,
    agent: Option<(PathBuf, ignite_vmm::AgentChannel)>,
) -> Result<(), DiskError> {
    let name = vm.metadata.name.clone();
    let authorized_keys =
        ensure_ssh_key(store, vm).map_err(|e| DiskError::Io { path: store.dir::<Vm>(&vm.uid()), source: e })?;
    let ips: Vec<std::net::IpAddr> = vm.status.network.as_ref().map(|n| n.ip_addresses.clone()).unwrap_or_default();
    let first_boot = vm.status.start_time.is_none();
    let copy_files = if first_boot {
        vm.spec.copy_files.iter().map(|c| (PathBuf::from(&c.host_path), c.vm_path.clone())).collect()
    } else {
        Vec::new()
    };
    let (root_device, root_upper) = crate::rootdisk::guest_root(layout);
    // The CNI attachment's network: IPv6 is off on its interface when it gives no IPv6 address.
    let ipv4_only = if !ips.is_empty() && ips.iter().all(std::net::IpAddr::is_ipv4) {
        vec![ignite_net::attach::IFNAME.to_string()]
    } else {
        Vec::new()
    };
    let boot = VmBoot {
        busybox: busybox(),
        hostname: name.clone(),
        hosts: hosts_file(&name, &ips),
        resolv_conf: host_resolv_conf(),
        authorized_keys,
        copy_files,
        init: "/sbin/init".into(),
        root_device,
        root_upper,
        mounts: volume_mounts(vm, crate::rootdisk::drive_count(layout)),
        agent: agent.map(|(binary, channel)| GuestAgent {
            binary,
            vsock_port: (channel == ignite_vmm::AgentChannel::Vsock).then_some(ignite_vmm::AGENT_VSOCK_PORT),
        }),
        ipv4_only,
    };
    build_vm_initramfs(&boot, out)
}

/// The KVM probe's initramfs: prints the marker and powers off.
pub fn probe_initramfs(out: &Path) -> Result<(), DiskError> {
    let mut i = ignite_disk::Initramfs::new();
    i.add_dir("bin", 0o755)?;
    i.add_file_from("bin/busybox", &busybox(), 0o755)?;
    i.add_file(
        "init",
        format!("#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARKER}\n/bin/busybox poweroff -f\n").as_bytes(),
        0o755,
    )?;
    i.write_to(out)
}

/// Guest devices of a VM's volumes, in attach order after the root disk (`/dev/vdb`, ...),
/// with their mount paths.
pub fn volume_mounts(vm: &Vm, root_drives: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, v) in vm.spec.storage.volumes.iter().enumerate() {
        let dev = crate::rootdisk::guest_device(root_drives + i);
        for m in vm.spec.storage.volume_mounts.iter().filter(|m| m.name == v.name) {
            out.push((dev.clone(), m.mount_path.clone()));
        }
    }
    out
}

/// Generates the VM's SSH key pair (`vm/<uid>/id_<uid>`, 0600) when `ssh: true` and none exists.
pub fn ensure_ssh_key(store: &Store, vm: &Vm) -> Result<Option<String>, std::io::Error> {
    let dir = crate::vmdir::VmDir::of(store, &vm.uid());
    match &vm.spec.ssh {
        None => Ok(None),
        Some(Ssh::PublicKeyPath(p)) => std::fs::read_to_string(p).map(Some),
        Some(Ssh::Generate) => {
            let key = dir.ssh_key();
            let pubkey = key.with_extension("pub");
            if !pubkey.is_file() {
                ssh_keygen("ed25519", &format!("ignite-{}", vm.uid()), &key).map_err(std::io::Error::other)?;
            }
            std::fs::read_to_string(&pubkey).map(Some)
        }
    }
}

/// Makes an SSH key pair of type `kind` without a passphrase: `key` (0600) and `key.pub`,
/// commented `comment` (the host's `ssh-keygen`, with a deadline).
pub fn ssh_keygen(kind: &str, comment: &str, key: &Path) -> Result<(), String> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"]).arg(key);
    let out = ignite_proc::output(&mut cmd, None, ignite_proc::QUICK).map_err(|e| {
        let hint = if e.is_not_found() { " (install openssh-client)" } else { "" };
        format!("ssh-keygen: {e}{hint}")
    })?;
    if !out.status.success() {
        return Err(format!("ssh-keygen -t {kind} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}
