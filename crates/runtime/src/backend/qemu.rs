//! The QEMU `microvm` backend (Debian's `qemu-system-x86`).
//!
//! Machine: `-M microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off` — no firmware
//! option ROMs, the legacy serial port for the console, the RTC (under TCG the guest has no
//! other clock source and hangs without it, FACTS.md), and ACPI off so that QEMU appends the
//! `virtio_mmio.device=` arguments a kernel without ACPI needs. An `i8042` keyboard controller
//! is added so that a Ctrl-Alt-Del (QMP `send-key`) reaches the guest's init, the graceful
//! stop every init understands, and so that `reboot=k` resets the machine; `-no-reboot` turns
//! a guest reboot into a VMM exit. Disks are virtio-blk on qcow2 overlays, NICs virtio-net on
//! taps. Control through a QMP socket in the VM's directory.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Accel, Backend, BackendError, BootConfig};

/// A jailed TCG VMM's translation cache, MiB (bounded: the VMM's memory is limited).
const TCG_TB_MIB: u64 = 256;

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
}

impl Qemu {
    /// Uses `$IGNITE_QEMU` or `qemu-system-x86_64` from PATH.
    pub fn from_env() -> Qemu {
        Qemu {
            binary: std::env::var_os("IGNITE_QEMU").map(PathBuf::from).unwrap_or_else(|| "qemu-system-x86_64".into()),
        }
    }

    pub fn qmp_path(run_dir: &Path) -> PathBuf {
        run_dir.join("qmp.sock")
    }

    /// The full argument list (without the binary).
    pub fn args(boot: &BootConfig) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-name", &format!("{}-{}", boot.id_prefix, boot.uid)]);
        push(&["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"]);
        match (boot.accel, boot.jail.is_some()) {
            (Accel::Kvm, _) => push(&["-accel", "kvm", "-cpu", "host"]),
            // In a jail the VMM's memory is limited: its translation cache too (QEMU's default
            // reserves up to 1 GiB; it is flushed and refilled when full).
            (Accel::Tcg, true) => push(&["-accel", &format!("tcg,tb-size={TCG_TB_MIB}"), "-cpu", "max"]),
            (Accel::Tcg, false) => push(&["-accel", "tcg", "-cpu", "max"]),
        }
        push(&["-smp", &boot.vcpus.to_string(), "-m", &format!("{}M", boot.memory_mib)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        if boot.debug {
            // Guest accesses to devices that are not there or not implemented, into vmm.log.
            push(&["-d", "guest_errors,unimp"]);
        }
        push(&["-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0"]);
        push(&["-device", "i8042"]);
        if boot.jail.is_some() {
            // QEMU's own seccomp filter: no obsolete calls, no privilege changes, no processes,
            // no scheduler or affinity changes.
            push(&["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
            push(&["-kernel", super::JAIL_KERNEL]);
            if boot.initrd.is_some() {
                push(&["-initrd", super::JAIL_INITRD]);
            }
        } else {
            push(&["-kernel", &boot.kernel.to_string_lossy()]);
            if let Some(i) = &boot.initrd {
                push(&["-initrd", &i.to_string_lossy()]);
            }
        }
        push(&["-append", &boot.cmdline]);
        // Every virtio-mmio device, in order (see `with_irq_filler`).
        let mut devices: Vec<Vec<String>> = Vec::new();
        for (i, d) in boot.disks.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            let mut dev: Vec<String> = Vec::new();
            let file = if boot.jail.is_some() {
                // The jailer opened the disk (and its backing file): descriptors, no paths.
                let set = 2 * i + 1;
                if !d.read_only {
                    dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.rw}},set={set}")]);
                }
                dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.ro}},set={set}")]);
                let mut file = format!("/dev/fdset/{set}");
                if d.format == "qcow2" {
                    if let Some(b) = ignite_disk::backing_file(&d.path).ok().flatten() {
                        let _ = b;
                        dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.backing}},set={}", set + 1)]);
                        file.push_str(&format!(
                            ",backing.driver=raw,backing.file.driver=file,backing.file.filename=/dev/fdset/{}",
                            set + 1
                        ));
                    }
                }
                file
            } else {
                qemu_path(&d.path)
            };
            dev.extend([
                "-drive".into(),
                format!("id=disk{i},file={file},format={},if=none,cache=unsafe,discard=unmap{ro}", d.format),
                "-device".into(),
                format!("virtio-blk-device,drive=disk{i}"),
            ]);
            devices.push(dev);
        }
        for (i, n) in boot.nics.iter().enumerate() {
            devices.push(vec![
                "-netdev".into(),
                format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap),
                "-device".into(),
                format!("virtio-net-device,netdev=net{i},mac={}", n.mac),
            ]);
        }
        if boot.agent {
            let sock = boot.run_dir.join(crate::agent::AGENT_VMM_SOCKET);
            let chardev = match boot.fds.agent {
                Some(fd) => format!("socket,id=agent0,fd={fd},server=on,wait=off"),
                None => format!("socket,id=agent0,path={},server=on,wait=off", qemu_path(&sock)),
            };
            devices.push(vec![
                "-device".into(),
                "virtio-serial-device,max_ports=2".into(),
                "-chardev".into(),
                chardev,
                "-device".into(),
                format!("virtserialport,chardev=agent0,name={}", ignite_agent::proto::PORT_NAME),
            ]);
        }
        for d in Self::with_irq_filler(devices) {
            push(&d.iter().map(String::as_str).collect::<Vec<_>>());
        }
        match boot.fds.qmp {
            Some(fd) => push(&[
                "-chardev",
                &format!("socket,id=qmp,fd={fd},server=on,wait=off"),
                "-mon",
                "chardev=qmp,mode=control",
            ]),
            None => push(&["-qmp", &format!("unix:{},server=on,wait=off", qemu_path(&Self::qmp_path(&boot.run_dir)))]),
        }
        a
    }

    /// QEMU microvm (without ACPI) gives virtio-mmio devices IRQs 12, 11, 10, 9, 8, ... in
    /// the order they are created; IRQ 8 is the RTC's, and a guest driver that claims it
    /// takes the guest's clock away. When there is a fifth device, a balloon device (no driver
    /// in ignite's kernel, so its IRQ is never requested) takes that slot instead.
    fn with_irq_filler(mut devices: Vec<Vec<String>>) -> Vec<Vec<String>> {
        if devices.len() > 4 {
            devices.insert(4, vec!["-device".into(), "virtio-balloon-device".into()]);
        }
        devices
    }

    /// Translation cache of a jailed TCG VMM (MiB).
    pub const TB_MIB: u64 = TCG_TB_MIB;

    /// What a jailed QEMU takes besides guest memory (measured: ~70 MiB of its own, plus the
    /// translation cache under TCG), with room to spare; the cgroup's memory limit is guest
    /// memory plus this.
    pub fn overhead_mib(accel: Accel) -> u64 {
        match accel {
            Accel::Kvm => 192,
            Accel::Tcg => 192 + TCG_TB_MIB,
        }
    }

    /// Most virtio-mmio devices a VM can have: microvm's 8 transports, one of them the IRQ
    /// filler once there are more than four.
    pub const MAX_DEVICES: usize = 7;

    fn qmp(&self, boot: &BootConfig, command: &str, arguments: Option<serde_json::Value>) -> Result<(), BackendError> {
        let path = Self::qmp_path(&boot.run_dir);
        let ctl = |source| BackendError::Control { path: path.clone(), source };
        let s = UnixStream::connect(&path).map_err(ctl)?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(ctl)?;
        let mut w = s.try_clone().map_err(ctl)?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(ctl)?; // greeting
        let mut send = |v: serde_json::Value| -> Result<serde_json::Value, BackendError> {
            w.write_all(format!("{v}\n").as_bytes()).map_err(ctl)?;
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).map_err(ctl)? == 0 {
                    return Err(ctl(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed")));
                }
                let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
                if v.get("return").is_some() || v.get("error").is_some() {
                    return Ok(v);
                }
            }
        };
        send(serde_json::json!({"execute": "qmp_capabilities"}))?;
        let mut req = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        let resp = send(req)?;
        if let Some(e) = resp.get("error") {
            return Err(BackendError::Refused { command: command.into(), message: e.to_string() });
        }
        Ok(())
    }
}

/// QEMU option values use `,` as separator; a literal comma is doubled.
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn command(&self, boot: &BootConfig) -> Result<Command, BackendError> {
        let mut c = Command::new(&self.binary);
        c.args(Self::args(boot));
        Ok(c)
    }

    fn request_shutdown(&self, boot: &BootConfig) -> Result<(), BackendError> {
        let keys = serde_json::json!({"keys": [
            {"type": "qcode", "data": "ctrl"},
            {"type": "qcode", "data": "alt"},
            {"type": "qcode", "data": "delete"}
        ]});
        self.qmp(boot, "send-key", Some(keys))
    }

    fn force_stop(&self, boot: &BootConfig) -> Result<(), BackendError> {
        self.qmp(boot, "quit", None)
    }
}

/// Finds the QEMU binary, or says which package provides it.
pub fn check_installed(q: &Qemu) -> Result<PathBuf, BackendError> {
    let found = if q.binary.is_absolute() {
        q.binary.is_file().then(|| q.binary.clone())
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(&q.binary)).find(|p| p.is_file()))
    };
    found.ok_or_else(|| BackendError::Missing {
        what: format!("{}", q.binary.display()),
        hint: "install the qemu-system-x86 package (apt-get install qemu-system-x86)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{DiskConfig, NicConfig};

    #[test]
    fn command_line() {
        let boot = BootConfig {
            uid: "0123456789abcdef".into(),
            name: "t".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: "/k/vmlinux".into(),
            initrd: Some("/v/initrd.cpio".into()),
            cmdline: "console=ttyS0".into(),
            disks: vec![DiskConfig { path: "/v/a,b.qcow2".into(), format: "qcow2".into(), read_only: false }],
            nics: vec![NicConfig { tap: "tap0".into(), mac: "02:00:00:00:00:01".into() }],
            accel: Accel::Tcg,
            run_dir: "/v".into(),
            stop_grace_secs: 10,
            netns: None,
            dhcp: None,
            agent: true,
            id_prefix: "acme".into(),
            debug: false,
            jail: None,
            fds: Default::default(),
        };
        let a = Qemu::args(&boot).join(" ");
        assert!(a.contains("-name acme-0123456789abcdef"), "{a}");
        assert!(a.contains("-accel tcg -cpu max"), "{a}");
        assert!(a.contains("-smp 2 -m 256M"));
        assert!(a.contains("file=/v/a,,b.qcow2,format=qcow2"), "{a}");
        assert!(a.contains("virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"));
        assert!(a.contains("-qmp unix:/v/qmp.sock,server=on,wait=off"));
        assert!(a.contains("acpi=off"));
        assert!(a.contains("virtserialport,chardev=agent0,name=org.ignite.agent.0"), "{a}");
        assert!(!a.contains("balloon"), "{a}");
        // Three NICs: the fifth device (the third NIC) would take IRQ 8; the filler takes it.
        let mut three = boot.clone();
        three.nics =
            (0..3).map(|i| NicConfig { tap: format!("tap{i}"), mac: format!("02:00:00:00:00:0{i}") }).collect();
        three.disks.push(DiskConfig { path: "/v/vol".into(), format: "raw".into(), read_only: false });
        let a = Qemu::args(&three);
        let devices: Vec<&String> = a.iter().filter(|x| x.starts_with("virtio-")).collect();
        assert_eq!(devices[4], "virtio-balloon-device", "{devices:?}");
        assert!(devices[5].starts_with("virtio-net-device,netdev=net2"), "{devices:?}");
    }
}
