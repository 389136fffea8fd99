//! The machine a backend is asked to run: typed devices (drives, NICs, the agent's port, the
//! serial console is always there), validated at the edge against what the backend can do —
//! as Firecracker's `vmm_config` validates each device before the VM exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Accel, Capabilities, VmmError};

/// A drive's on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        })
    }
}

/// A block device; the first is the root disk (`/dev/vda`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
    /// The raw file a qcow2 drive's data falls through to (opened read-only).
    #[serde(default)]
    pub backing: Option<PathBuf>,
}

/// A network interface backed by a tap device in the VMM's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
}

/// Everything a backend needs to run a guest. Settings of the supervisor (network namespace,
/// DHCP, stop grace, jail identity) are not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The VM's UID (names the VMM process: `<id_prefix>-<uid>`).
    pub uid: String,
    pub name: String,
    pub id_prefix: String,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub drives: Vec<Drive>,
    pub nics: Vec<Nic>,
    /// The guest agent's port name, when the VM runs its agent.
    pub agent_port: Option<String>,
    pub accel: Accel,
    /// The VMM logs the guest's errors (`ignite run -d`).
    pub debug: bool,
    /// Directory of the VM's control sockets and runtime files.
    pub run_dir: PathBuf,
    /// A saved machine state (a snapshot's) the VMM resumes instead of booting; the machine
    /// must have the devices of the one it was saved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<PathBuf>,
    /// The VMM's translation cache under TCG, MiB (`None`: the backend's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcg_cache_mib: Option<u64>,
}

/// Smallest guest memory a Linux guest boots in.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Longest kernel command line (x86's COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;

impl Machine {
    /// The host files a VMM reads (kernel, initramfs) and where a jailed one finds them.
    pub fn jail_files(&self) -> Vec<(PathBuf, String)> {
        let mut files = vec![(self.kernel.clone(), crate::JAIL_KERNEL.to_string())];
        if let Some(i) = &self.initrd {
            files.push((i.clone(), crate::JAIL_INITRD.to_string()));
        }
        files
    }

    /// The drives as the VMM opens them, keyed `disk<N>`; `by_path`: it opens them itself
    /// ([`crate::VmmDisk::by_path`]).
    pub fn vmm_disks(&self, by_path: bool) -> Vec<crate::VmmDisk> {
        self.drives
            .iter()
            .enumerate()
            .map(|(i, d)| crate::VmmDisk {
                key: format!("disk{i}"),
                path: d.path.clone(),
                read_only: d.read_only,
                backing: d.backing.clone(),
                by_path,
            })
            .collect()
    }

    /// Virtio devices the machine has: drives, NICs and the agent's port.
    pub fn devices(&self) -> usize {
        self.drives.len() + self.nics.len() + usize::from(self.agent_port.is_some())
    }

    /// Checks the machine against what a backend can do; the error says what is wrong and how
    /// to fix it.
    pub fn validate(&self, caps: &Capabilities) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::Invalid(m));
        if self.uid.is_empty() || !self.uid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return bad(format!("VM id {:?} must be non-empty and alphanumeric", self.uid));
        }
        if self.vcpus == 0 || self.vcpus > caps.max_vcpus {
            return bad(format!("{} vCPUs: this VMM runs 1 to {}", self.vcpus, caps.max_vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad(format!("{} MiB of memory: a guest needs at least {MIN_MEMORY_MIB} MiB", self.memory_mib));
        }
        if !caps.accels.contains(&self.accel) {
            return bad(format!("accelerator {} is not supported by this VMM", self.accel));
        }
        if self.cmdline.len() > MAX_CMDLINE || self.cmdline.contains('\0') {
            return bad(format!("kernel command line of {} bytes (at most {MAX_CMDLINE}, no NUL)", self.cmdline.len()));
        }
        if self.drives.is_empty() {
            return bad("no root drive".into());
        }
        for (i, d) in self.drives.iter().enumerate() {
            if !caps.drive_formats.contains(&d.format) {
                return bad(format!(
                    "drive {i} ({}) is {}: this VMM reads {:?}",
                    d.path.display(),
                    d.format,
                    caps.drive_formats
                ));
            }
            if d.backing.is_some() && d.format != DiskFormat::Qcow2 {
                return bad(format!("drive {i} ({}): only a qcow2 drive has a backing file", d.path.display()));
            }
        }
        for n in &self.nics {
            if n.tap.is_empty() || n.tap.len() > 15 || n.tap.contains(['/', ',', ' ', '\0']) {
                return bad(format!("tap name {:?}: 1 to 15 characters, no '/', ',' or spaces", n.tap));
            }
            if !valid_unicast_mac(&n.mac) {
                return bad(format!("MAC address {:?}: six hex pairs, unicast (e.g. 02:00:00:00:00:01)", n.mac));
            }
        }
        if let Some(p) = &self.agent_port {
            if p.is_empty() || p.contains([',', '\0']) {
                return bad(format!("agent port name {p:?}"));
            }
        }
        if self.devices() > caps.max_devices {
            return bad(format!(
                "{} virtio devices (root disk, volumes, NICs, agent): this VMM takes at most {}; use fewer volumes or extra interfaces",
                self.devices(),
                caps.max_devices
            ));
        }
        Ok(())
    }
}

fn valid_unicast_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).map(|b| b & 1 == 0).unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn machine() -> Machine {
        Machine {
            uid: "0123456789abcdef".into(),
            name: "t".into(),
            id_prefix: "ignite".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/v/initrd.cpio".into()),
            cmdline: "console=ttyS0".into(),
            drives: vec![Drive {
                path: "/v/a.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
                backing: None,
            }],
            nics: vec![Nic { tap: "tap0".into(), mac: "02:00:00:00:00:01".into() }],
            agent_port: Some("org.ignite.agent.0".into()),
            accel: Accel::Tcg,
            debug: false,
            run_dir: "/v".into(),
            incoming: None,
            tcg_cache_mib: None,
        }
    }

    fn caps() -> Capabilities {
        crate::qemu::Qemu::new(None).capabilities_const()
    }

    #[test]
    fn a_good_machine_passes() {
        machine().validate(&caps()).unwrap();
    }

    #[test]
    fn each_bad_device_is_named() {
        type Change = fn(&mut Machine);
        let cases: Vec<(Change, &str)> = vec![
            (|m| m.vcpus = 0, "0 vCPUs"),
            (|m| m.vcpus = 1000, "1000 vCPUs"),
            (|m| m.memory_mib = 1, "1 MiB"),
            (|m| m.drives.clear(), "no root drive"),
            (|m| m.nics[0].mac = "01:00:00:00:00:01".into(), "unicast"),
            (|m| m.nics[0].mac = "02:00:00:00:00".into(), "six hex pairs"),
            (|m| m.nics[0].tap = "a-very-long-tap-name".into(), "tap name"),
            (|m| m.cmdline = "x".repeat(5000), "command line"),
            (|m| m.uid = "../x".into(), "alphanumeric"),
            (|m| m.drives[0].backing = Some("/b".into()), ""),
            (
                |m| {
                    for i in 0..6 {
                        m.drives.push(Drive {
                            path: format!("/v/{i}").into(),
                            format: DiskFormat::Raw,
                            read_only: false,
                            backing: None,
                        });
                    }
                },
                "at most 7",
            ),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            let mut m = machine();
            change(&mut m);
            let r = m.validate(&caps());
            if want.is_empty() {
                assert!(r.is_ok(), "case {i}: {r:?}");
            } else {
                let e = r.expect_err(&format!("case {i} passed")).to_string();
                assert!(e.contains(want), "case {i}: {e}");
            }
        }
        let mut raw_backed = machine();
        raw_backed.drives[0].format = DiskFormat::Raw;
        raw_backed.drives[0].backing = Some("/b".into());
        assert!(raw_backed.validate(&caps()).unwrap_err().to_string().contains("only a qcow2 drive"));
    }
}
