//! The QEMU `microvm` backend (Debian's `qemu-system-x86`): everything ignite knows about
//! QEMU is here — its argv, its QMP control socket, its KVM probe.
//!
//! Machine: [`MACHINE`] — no firmware option ROMs, the legacy serial port for the console,
//! the RTC (under TCG the guest has no other clock source and hangs without it, FACTS.md),
//! and ACPI off so that QEMU appends the `virtio_mmio.device=` arguments a kernel without
//! ACPI needs. An `i8042` keyboard controller is added so that a Ctrl-Alt-Del (QMP
//! `send-key`) reaches the guest's init, the graceful stop every init understands, and so that
//! `reboot=k` resets the machine; `-no-reboot` turns a guest reboot into a VMM exit. Drives
//! are virtio-blk (the root disk a qcow2 overlay on the image's raw base), NICs virtio-net on
//! taps, the agent a virtio-serial port. Control through a QMP socket in the VM's run
//! directory, bound by the launcher and inherited (`-chardev socket,fd=N`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accel::{self, Accel, AccelChoice, AccelVerdict, PROBE_BUDGET, PROBE_MARKER};
use crate::{
    AgentChannel, AgentEndpoint, Backend, Capabilities, Control, DiskFormat, HostInfo, Instance, JailProfile, Launcher,
    Machine, RootDisk, VmmCommand, VmmError, AGENT_VMM_SOCKET, JAIL_INITRD, JAIL_KERNEL,
};

/// The machine type and its options (shared by VMs and the KVM probe).
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off";
/// QEMU's QMP socket in a VM's run directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// A TCG VMM's translation cache, MiB, unless the machine says (bounded: a jailed VMM's
/// memory is limited; QEMU's own default reserves up to 1 GiB).
pub const TB_MIB: u64 = 256;
/// The emulated CPU under TCG: QEMU's `max` without ERMS and FSRM ("fast `rep movsb`"). With
/// them the guest's kernel and C library copy and clear memory with `rep movsb`/`stosb`,
/// which TCG runs one byte per step; without them, with loops of 8- and 16-byte moves (the
/// kernel's unpacking of the initramfs, page clearing, user space's memcpy). Measured here,
/// bare QEMU with ignite's machine, 16 alternating boots (with `noreplace-smp`, see
/// [`Qemu::guest_args`]): to init 616.6 → 545.5 ms p50, to the busybox image's ready line
/// 1202.1 → 1103.1 ms.
pub const TCG_CPU: &str = "max,-erms,-fsrm";
/// Most virtio-mmio devices a VM can have: microvm's 8 transports, one of them the IRQ
/// filler once there are more than four (see [`with_irq_filler`]).
pub const MAX_DEVICES: usize = 7;
/// QEMU's seccomp filter in a jail: no obsolete calls, no privilege changes, no processes,
/// no scheduler or affinity changes.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The clock of QEMU's emulated local APIC timer, kHz: it counts nanoseconds (1 GHz) with a
/// divider of 1.
pub const APIC_TIMER_KHZ: u64 = 1_000_000;

/// The host TSC frequency in kHz, for `tsc_early_khz=`, from /proc/cpuinfo's "cpu MHz".
fn host_tsc_khz() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = s.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
}

impl Qemu {
    /// `binary`, else `qemu-system-x86_64` from PATH.
    pub fn new(binary: Option<PathBuf>) -> Qemu {
        Qemu { binary: binary.unwrap_or_else(|| "qemu-system-x86_64".into()) }
    }

    pub(crate) fn capabilities_const(&self) -> Capabilities {
        Capabilities {
            root_disks: &[RootDisk::Qcow2Overlay, RootDisk::RawLayered],
            drive_formats: &[DiskFormat::Qcow2, DiskFormat::Raw],
            agent: AgentChannel::VirtioSerial,
            accels: &[Accel::Kvm, Accel::Tcg],
            max_devices: MAX_DEVICES,
            max_vcpus: 255,
            jail: true,
        }
    }

    /// The full argument list (without the binary). `fds`: the QMP and agent sockets'
    /// inherited descriptors (else QEMU binds paths in the run directory itself).
    pub fn args(m: &Machine, jailed: bool, fds: Fds) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-name", &format!("{}-{}", m.id_prefix, m.uid)]);
        push(&["-M", MACHINE]);
        match (m.accel, jailed, m.tcg_cache_mib) {
            (Accel::Kvm, _, _) => push(&["-accel", "kvm", "-cpu", "host"]),
            // In a jail the VMM's memory is limited: its translation cache too (QEMU's default
            // reserves up to 1 GiB; it is flushed and refilled when full).
            (Accel::Tcg, true, None) => push(&["-accel", &format!("tcg,tb-size={TB_MIB}"), "-cpu", TCG_CPU]),
            (Accel::Tcg, _, Some(mib)) => push(&["-accel", &format!("tcg,tb-size={mib}"), "-cpu", TCG_CPU]),
            (Accel::Tcg, false, None) => push(&["-accel", "tcg", "-cpu", TCG_CPU]),
        }
        push(&["-smp", &m.vcpus.to_string(), "-m", &format!("{}M", m.memory_mib)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        if m.debug {
            // Guest accesses to devices that are not there or not implemented, into vmm.log.
            push(&["-d", "guest_errors,unimp"]);
        }
        push(&["-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0"]);
        push(&["-device", "i8042"]);
        if jailed {
            push(&["-sandbox", SANDBOX]);
            push(&["-kernel", JAIL_KERNEL]);
            if m.initrd.is_some() {
                push(&["-initrd", JAIL_INITRD]);
            }
        } else {
            push(&["-kernel", &m.kernel.to_string_lossy()]);
            if let Some(i) = &m.initrd {
                push(&["-initrd", &i.to_string_lossy()]);
            }
        }
        push(&["-append", &m.cmdline]);
        // Every virtio-mmio device, in order (see `with_irq_filler`).
        let mut devices: Vec<Vec<String>> = Vec::new();
        for (i, d) in m.drives.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            let mut dev: Vec<String> = Vec::new();
            let file = if jailed {
                // The launcher opened the disk (and its backing file): descriptors, no paths.
                let set = 2 * i + 1;
                if !d.read_only {
                    dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.rw}},set={set}")]);
                }
                dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.ro}},set={set}")]);
                let mut file = format!("/dev/fdset/{set}");
                if d.backing.is_some() {
                    dev.extend(["-add-fd".into(), format!("fd={{fd:disk{i}.backing}},set={}", set + 1)]);
                    file.push_str(&format!(
                        ",backing.driver=raw,backing.file.driver=file,backing.file.filename=/dev/fdset/{},backing.file.locking=off",
                        set + 1
                    ));
                }
                // No image locks: the descriptors are the jail's (two open files of one disk,
                // read-write and read-only, whose locks would conflict when QEMU takes its
                // drives back after saving its state, see `Qmp::save`); the supervisor's lease
                // is what keeps a disk to one VMM.
                file.push_str(",file.locking=off");
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
        for (i, n) in m.nics.iter().enumerate() {
            devices.push(vec![
                "-netdev".into(),
                format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap),
                "-device".into(),
                format!("virtio-net-device,netdev=net{i},mac={}", n.mac),
            ]);
        }
        if let Some(port) = &m.agent_port {
            let chardev = match fds.agent {
                Some(fd) => format!("socket,id=agent0,fd={fd},server=on,wait=off"),
                None => {
                    format!("socket,id=agent0,path={},server=on,wait=off", qemu_path(&m.run_dir.join(AGENT_VMM_SOCKET)))
                }
            };
            devices.push(vec![
                "-device".into(),
                "virtio-serial-device,max_ports=2".into(),
                "-chardev".into(),
                chardev,
                "-device".into(),
                format!("virtserialport,chardev=agent0,name={port}"),
            ]);
        }
        for d in with_irq_filler(devices) {
            push(&d.iter().map(String::as_str).collect::<Vec<_>>());
        }
        match fds.qmp {
            Some(fd) => push(&[
                "-chardev",
                &format!("socket,id=qmp,fd={fd},server=on,wait=off"),
                "-mon",
                "chardev=qmp,mode=control",
            ]),
            None => push(&["-qmp", &format!("unix:{},server=on,wait=off", qemu_path(&m.run_dir.join(QMP_SOCKET)))]),
        }
        if m.incoming.is_some() {
            // Paused until the saved state is loaded through QMP (`Qmp::restore`).
            push(&["-incoming", "defer"]);
        }
        a
    }

    /// What a jailed QEMU takes besides guest memory (measured: ~70 MiB of its own, plus the
    /// translation cache under TCG), with room to spare.
    pub fn overhead_mib(m: &Machine) -> u64 {
        match m.accel {
            Accel::Kvm => 192,
            Accel::Tcg => 192 + m.tcg_cache_mib.unwrap_or(TB_MIB),
        }
    }

    fn found(&self) -> Result<PathBuf, VmmError> {
        crate::find_program(&self.binary).ok_or_else(|| VmmError::Missing {
            what: format!("{}", self.binary.display()),
            hint: "install the qemu-system-x86 package (apt-get install qemu-system-x86), or name it with IGNITE_QEMU or the Configuration's spec.vmmBinaries.qemu",
        })
    }

    /// Boots `kernel` under KVM with the probe initramfs: KVM if the guest reaches init.
    fn probe(qemu: &Path, kernel: &Path, initrd: &Path) -> AccelVerdict {
        let start = Instant::now();
        let mut child = match Command::new(qemu)
            .args(["-M", MACHINE, "-accel", "kvm", "-cpu", "host"])
            .args(["-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-device", "i8042", "-kernel"])
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 reboot=k panic=-1 pci=off rdinit=/init quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return AccelVerdict { accel: Accel::Tcg, reason: format!("KVM probe could not start QEMU: {e}") }
            }
        };
        let mut out = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.take(1 << 20).read_to_end(&mut s);
            }
            s
        });
        let mut status = None;
        while start.elapsed() < PROBE_BUDGET {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).to_string();
        if out.contains(PROBE_MARKER) {
            return AccelVerdict {
                accel: Accel::Kvm,
                reason: format!(
                    "KVM boots Linux guests here (probe reached init in {} ms)",
                    start.elapsed().as_millis()
                ),
            };
        }
        let why = if err.contains("KVM internal error") || err.contains("KVM_EXIT_INTERNAL_ERROR") {
            "the guest died with a KVM internal error (nested/limited KVM)".to_string()
        } else if status.is_none() {
            format!("the guest did not reach init within {} s", PROBE_BUDGET.as_secs())
        } else {
            let first = err.lines().next().unwrap_or("QEMU exited early").to_string();
            format!("the guest did not reach init ({first})")
        };
        AccelVerdict {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot boot a Linux guest on this host: {why}; using TCG"),
        }
    }
}

/// Inherited control-socket descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fds {
    pub qmp: Option<i32>,
    pub agent: Option<i32>,
}

/// QEMU microvm (without ACPI) gives virtio-mmio devices IRQs 12, 11, 10, 9, 8, ... in the
/// order they are created; IRQ 8 is the RTC's, and a guest driver that claims it takes the
/// guest's clock away. When there is a fifth device, a balloon device (no driver in ignite's
/// kernel, so its IRQ is never requested) takes that slot instead.
fn with_irq_filler(mut devices: Vec<Vec<String>>) -> Vec<Vec<String>> {
    if devices.len() > 4 {
        devices.insert(4, vec!["-device".into(), "virtio-balloon-device".into()]);
    }
    devices
}

/// QEMU option values use `,` as separator; a literal comma is doubled.
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A running QEMU's QMP socket.
#[derive(Debug, Clone)]
pub struct Qmp {
    pub path: PathBuf,
}

/// One QMP connection, past its capabilities negotiation.
#[derive(Debug)]
pub struct QmpSession {
    path: PathBuf,
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl QmpSession {
    /// Connects; QEMU is given `wait` to greet (it greets once its main loop runs).
    pub fn open(path: &Path, wait: Duration) -> Result<QmpSession, VmmError> {
        let ctl = |source| VmmError::Control { path: path.to_path_buf(), source };
        let s = crate::connect_vmm_socket(path).map_err(ctl)?;
        s.set_read_timeout(Some(wait)).map_err(ctl)?;
        let w = s.try_clone().map_err(ctl)?;
        let mut q = QmpSession { path: path.to_path_buf(), w, r: BufReader::new(s) };
        let mut greeting = String::new();
        q.r.read_line(&mut greeting).map_err(ctl)?;
        q.r.get_ref().set_read_timeout(Some(Duration::from_secs(5))).map_err(ctl)?;
        q.call("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs one command; its `return` value.
    pub fn call(&mut self, command: &str, arguments: Option<serde_json::Value>) -> Result<serde_json::Value, VmmError> {
        self.call_passing(command, arguments, None)
    }

    /// Runs one command, passing `fd` along with it (SCM_RIGHTS), as `getfd` wants.
    pub fn call_passing(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<serde_json::Value, VmmError> {
        let ctl = |source| VmmError::Control { path: self.path.clone(), source };
        let mut req = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            req["arguments"] = a;
        }
        let line = format!("{req}\n");
        match fd {
            None => self.w.write_all(line.as_bytes()).map_err(ctl)?,
            Some(fd) => {
                use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
                let fds = [fd];
                let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut anc = SendAncillaryBuffer::new(&mut space);
                anc.push(SendAncillaryMessage::ScmRights(&fds));
                let n = sendmsg(&self.w, &[std::io::IoSlice::new(line.as_bytes())], &mut anc, SendFlags::empty())
                    .map_err(|e| ctl(e.into()))?;
                self.w.write_all(&line.as_bytes()[n..]).map_err(ctl)?;
            }
        }
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).map_err(ctl)? == 0 {
                return Err(ctl(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed")));
            }
            let mut v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            if let Some(e) = v.get("error") {
                let message =
                    e.get("desc").and_then(|d| d.as_str()).map(str::to_string).unwrap_or_else(|| e.to_string());
                return Err(VmmError::Refused { command: command.into(), message });
            }
            if let Some(r) = v.get_mut("return") {
                return Ok(r.take());
            }
        }
    }

    /// Asks QEMU to announce each change of a migration's state (its `MIGRATION` event), so
    /// that [`QmpSession::wait_migration`] wakes when it ends instead of polling for it.
    fn announce_migration(&mut self) -> Result<(), VmmError> {
        let events = serde_json::json!({"capabilities": [{"capability": "events", "state": true}]});
        self.call("migrate-set-capabilities", Some(events)).map(|_| ())
    }

    /// Waits for the migration in progress (outgoing or incoming) to complete: asks once, then
    /// reads QEMU's `MIGRATION` events (see [`QmpSession::announce_migration`]) and asks again
    /// only when none came for a while. Events sent before an answer are skipped by
    /// [`QmpSession::call`], but that answer already gives the state they announced, so no end
    /// is missed.
    fn wait_migration(&mut self, what: &str, budget: Duration) -> Result<(), VmmError> {
        const ASK_AGAIN: Duration = Duration::from_millis(200);
        let deadline = Instant::now() + budget;
        let ctl = |path: &Path, source| VmmError::Control { path: path.to_path_buf(), source };
        let mut status = self.call("query-migrate", None)?.get("status").and_then(|s| s.as_str()).map(str::to_string);
        let mut line = Vec::new();
        loop {
            match status.as_deref().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    // The reason is in the state QEMU keeps, not in the event.
                    let r = self.call("query-migrate", None)?;
                    let s = r.get("status").and_then(|s| s.as_str()).unwrap_or("failed");
                    let why = r.get("error-desc").and_then(|d| d.as_str()).unwrap_or(s);
                    return Err(VmmError::Launch(format!("{what} failed: {why}")));
                }
                _ => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.call("migrate_cancel", None);
                return Err(VmmError::Launch(format!("{what} did not finish within {}s", budget.as_secs())));
            }
            self.r.get_ref().set_read_timeout(Some(left.min(ASK_AGAIN))).map_err(|e| ctl(&self.path, e))?;
            let read = self.r.read_until(b'\n', &mut line);
            // Questions asked from here on get QMP's usual time to answer.
            self.r.get_ref().set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| ctl(&self.path, e))?;
            status = match read {
                Ok(0) => {
                    return Err(ctl(&self.path, std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QMP closed")))
                }
                Ok(_) if line.ends_with(b"\n") => {
                    let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
                    line.clear();
                    match (v.get("event").and_then(|e| e.as_str()), v.pointer("/data/status").and_then(|s| s.as_str()))
                    {
                        (Some("MIGRATION"), Some(s)) => Some(s.to_string()),
                        _ => status,
                    }
                }
                Ok(_) => status,
                // Nothing for a while, and no line begun: ask (an answer to a question never
                // interleaves with a half-read line).
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if !line.is_empty() {
                        continue;
                    }
                    self.call("query-migrate", None)?.get("status").and_then(|s| s.as_str()).map(str::to_string)
                }
                Err(e) => return Err(ctl(&self.path, e)),
            };
        }
    }

    /// Waits (up to `budget`) until QEMU is out of its `finish-migrate` run state. QEMU
    /// announces a saved state's end before it leaves that state, and refuses `cont` until it
    /// has ("Migration is not finalized yet"): every `cont` after an outgoing migration waits
    /// for this first.
    fn until_finalized(&mut self, budget: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + budget;
        loop {
            let status = self.call("query-status", None)?;
            if status.get("status").and_then(|s| s.as_str()) != Some("finish-migrate") || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Where QEMU writes the state that becomes `state`: beside it.
fn written_state(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".written");
    state.with_file_name(name)
}

/// A migration's bandwidth limit that is no limit: 1 TiB/s.
const UNTHROTTLED: u64 = 1 << 40;

/// How long saving or loading a machine's state may take: generous, for a slow disk and a
/// large guest.
fn migration_budget(memory_mib: u64) -> Duration {
    Duration::from_secs(30 + memory_mib / 16)
}

impl Qmp {
    /// Runs one QMP command.
    pub fn execute(&self, command: &str, arguments: Option<serde_json::Value>) -> Result<(), VmmError> {
        QmpSession::open(&self.path, Duration::from_secs(5))?.call(command, arguments).map(|_| ())
    }

    /// Pauses the guest, runs `while_paused` (the caller copies the disks), writes the machine's
    /// state (memory and devices, QEMU's migration stream) to `state`, and resumes the guest
    /// whatever happened. Returns how long the guest was paused. The state is written, not
    /// synced: making it durable is the caller's, once the guest runs again.
    pub fn save(
        &self,
        state: &Path,
        memory_mib: u64,
        while_paused: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Duration, VmmError> {
        let mut q = QmpSession::open(&self.path, Duration::from_secs(5))?;
        let t0 = Instant::now();
        q.call("stop", None)?;
        // Stopped: QEMU has drained and flushed its drives (qcow2's caches reach the file).
        // QEMU writes the state to a file of its own, copied to `state` once the guest runs
        // again (a copy, not a rename: a VMM compromised later could still hold the file it
        // wrote, and change the snapshot its clones load; it keeps the removed one). Piped
        // instead, the guest's pause grew from 24.5 to 32 ms p50 (10 snapshots each).
        let written = written_state(state);
        let _ = std::fs::remove_file(&written);
        let saved = (|| {
            while_paused().map_err(VmmError::Launch)?;
            let f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&written)
                .map_err(|e| VmmError::Launch(format!("{}: {e}", written.display())))?;
            q.call_passing("getfd", Some(serde_json::json!({"fdname": "ignite-state"})), Some(f.as_fd()))?;
            q.announce_migration()?;
            // QEMU throttles a migration to 128 MiB/s unless told otherwise (a live migration
            // must leave the network to others); to a local file, with the guest paused, that
            // throttle was the pause: 21 MB written in ~110 ms, ~25 ms without it (measured).
            q.call("migrate-set-parameters", Some(serde_json::json!({"max-bandwidth": UNTHROTTLED})))?;
            q.call("migrate", Some(serde_json::json!({"uri": "fd:ignite-state"})))?;
            ignite_proc::fault::point("snapshot.saving");
            q.wait_migration("saving the machine's state", migration_budget(memory_mib))
        })();
        // QEMU announces the end before it leaves its finish-migrate state, and refuses `cont`
        // until it has ("Migration is not finalized yet": seen once the state's sync no longer
        // came in between).
        let _ = q.until_finalized(Duration::from_secs(10));
        let resumed = q.call("cont", None);
        let paused = t0.elapsed();
        let copied = saved.and(resumed).and_then(|_| {
            std::fs::copy(&written, state)
                .map_err(|e| VmmError::Launch(format!("copying {} to {}: {e}", written.display(), state.display())))
        });
        let _ = std::fs::remove_file(&written);
        copied.map(|_| paused)
    }

    /// Loads the machine state `state` into a QEMU started with `-incoming defer`, then lets
    /// the guest run.
    fn restore(
        &self,
        state: &Path,
        memory_mib: u64,
        child: &mut std::process::Child,
        run_dir: &Path,
    ) -> Result<(), VmmError> {
        let f = std::fs::File::open(state).map_err(|e| VmmError::Launch(format!("{}: {e}", state.display())))?;
        let mut q = QmpSession::open(&self.path, Duration::from_secs(30)).map_err(|e| exited(child, run_dir, e))?;
        q.call_passing("getfd", Some(serde_json::json!({"fdname": "ignite-state"})), Some(f.as_fd()))
            .and_then(|_| q.announce_migration())
            // No self-announcement once loaded: QEMU would send RARPs with the saved MAC, and
            // ask the guest to send gratuitous ARPs, 5 times over ~0.5 s, the first before
            // its agent has given it its own MAC and address: a clone claimed its source's
            // MAC and IPv4 address on the bridge (seen on ignite0), and every round is work
            // for a guest that has just resumed. Its new address is learnt as any VM's is.
            .and_then(|_| q.call("migrate-set-parameters", Some(serde_json::json!({"announce-rounds": 0}))))
            .and_then(|_| q.call("migrate-incoming", Some(serde_json::json!({"uri": "fd:ignite-state"}))))
            .and_then(|_| q.wait_migration("loading the snapshot's machine state", migration_budget(memory_mib)))
            .and_then(|_| q.call("cont", None))
            .map(|_| ())
            .map_err(|e| exited(child, run_dir, e))
    }
}

/// `e`, or, when QEMU has exited meanwhile, that with QEMU's own reason from `vmm.log` (a state
/// it cannot load: "load of migration failed: Invalid argument"). A lost control connection
/// means QEMU is on its way out: it is given a moment to be seen gone.
fn exited(child: &mut std::process::Child, run_dir: &Path, e: VmmError) -> VmmError {
    let deadline =
        Instant::now() + if matches!(e, VmmError::Control { .. }) { Duration::from_secs(3) } else { Duration::ZERO };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return e,
        }
    };
    let log = std::fs::read(run_dir.join(crate::VMM_LOG)).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log.len().saturating_sub(16 * 1024)..]).into_owned();
    // QEMU's own lines: "qemu-system-x86_64: <what>" (its program name first).
    let said: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(": ").filter(|(p, _)| p.contains("qemu-system")).map(|(_, m)| m))
        .collect();
    let why = said.iter().rev().take(2).rev().copied().collect::<Vec<_>>().join("; ");
    let why: String = if why.is_empty() { e.to_string() } else { why.chars().take(400).collect() };
    VmmError::Launch(format!("QEMU exited ({status}) while loading the snapshot's state: {why}"))
}

impl Control for Qmp {
    fn request_shutdown(&self) -> Result<(), VmmError> {
        let keys = serde_json::json!({"keys": [
            {"type": "qcode", "data": "ctrl"},
            {"type": "qcode", "data": "alt"},
            {"type": "qcode", "data": "delete"}
        ]});
        self.execute("send-key", Some(keys))
    }

    fn force_stop(&self) -> Result<(), VmmError> {
        self.execute("quit", None)
    }
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities_const()
    }

    fn binary(&self) -> Result<PathBuf, VmmError> {
        self.found()
    }

    fn check_host(&self) -> Result<HostInfo, VmmError> {
        let binary = self.found()?;
        let version = Command::new(&binary)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string));
        let seccomp = match Command::new(&binary).args(["-sandbox", "help"]).stdin(Stdio::null()).output() {
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("seccomp support is disabled") => {
                Err("this QEMU has no seccomp sandbox (built without libseccomp)".to_string())
            }
            Ok(_) => Ok("QEMU's -sandbox (seccomp) is available".to_string()),
            Err(e) => Err(format!("cannot run {}: {e}", binary.display())),
        };
        Ok(HostInfo { binary, version, seccomp })
    }

    fn choose_accel(
        &self,
        state_dir: &Path,
        choice: AccelChoice,
        kernel: &Path,
        probe_initrd: &dyn Fn(&Path) -> Result<(), String>,
    ) -> Result<AccelVerdict, String> {
        let key = accel::cache_key(&self.binary, kernel);
        accel::choose_cached(state_dir, choice, &key, probe_initrd, |initrd| {
            Qemu::probe(&self.found().unwrap_or_else(|_| self.binary.clone()), kernel, initrd)
        })
    }

    /// Under TCG each argument saves an emulated guest work, or a failure, that hardware would
    /// not cost it; under KVM none is needed.
    fn guest_args(&self, state_dir: &Path, accel: Accel, kernel: &Path) -> String {
        if accel != Accel::Tcg {
            return String::new();
        }
        let mut args = String::new();
        // The host's TSC frequency: no calibration against the emulated PIT (which sometimes
        // hangs under TCG; FACTS.md).
        if let Some(khz) = host_tsc_khz() {
            args.push_str(&format!(" tsc_early_khz={khz}"));
        }
        // An emulated CPU on a loaded host runs unevenly: the kernel's check that the timer
        // interrupt ticks during a busy loop then fails and it panics ("IO-APIC + timer
        // doesn't work!", seen with 30 VMs booting at once on 2 cores). QEMU's timer works;
        // the check only finds broken hardware.
        args.push_str(" no_timer_check");
        // Parameters given only to a kernel that registers them (another would hand the words
        // on to init), in this order: (the name it registers, what ignite passes).
        // - `noreplace-smp` (upstream): a one-vCPU kernel rewrites every `lock` prefix of its
        //   text (~4000 here) into a no-op prefix at boot, each through `text_poke` with a
        //   switch of page tables, which flushes TCG's TLB: ~0.1 s of a TCG boot (sampled:
        //   `__text_poke`, `load_new_mm_cr3`). TCG runs a locked instruction of a one-vCPU
        //   machine as a plain one, so keeping them costs nothing.
        // - `lapic_timer_khz=` (images/kernel/patches): the local APIC timer's clock, QEMU's
        //   ([`APIC_TIMER_KHZ`]), instead of its calibration against the PIT (100 ms of guest
        //   time, ~0.3 s here; TCG has no TSC-deadline timer, which lets KVM guests skip it).
        //   `noapictimer` would skip it too, but an idle guest then costs ~4x the host CPU
        //   (2.1% vs 0.5% of a core, measured).
        // - `keep_initmem` (patch): no poisoning of the freed init sections (~0.35 s: stores
        //   into pages of translated code).
        // - `zero_freed_initmem` (patch): the boot memory the kernel frees (the initrd, the
        //   image's gaps, ~6 MiB) filled with zeroes, not 0xcc: a snapshot carries them as zero
        //   pages (nothing to load or make resident in a clone; a busybox VM's state 25.2 →
        //   20.9 MB).
        let timer = format!(" lapic_timer_khz={APIC_TIMER_KHZ}");
        let patched = [
            ("noreplace-smp", " noreplace-smp"),
            ("lapic_timer_khz", timer.as_str()),
            ("keep_initmem", " keep_initmem"),
            ("zero_freed_initmem", " zero_freed_initmem"),
        ];
        let names: Vec<&str> = patched.iter().map(|(name, _)| *name).collect();
        let handled = crate::kernel::handled(state_dir, kernel, &names);
        for ((_, arg), has) in patched.iter().zip(handled) {
            if has {
                args.push_str(arg);
            }
        }
        args
    }

    fn jail_profile(&self, m: &Machine) -> JailProfile {
        JailProfile { overhead_mib: Qemu::overhead_mib(m), seccomp: format!("QEMU -sandbox {SANDBOX}") }
    }

    fn runtime_files(&self, run_dir: &Path) -> Vec<PathBuf> {
        vec![run_dir.join(QMP_SOCKET), run_dir.join(AGENT_VMM_SOCKET)]
    }

    fn save(
        &self,
        run_dir: &Path,
        state: &Path,
        memory_mib: u64,
        while_paused: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Duration, VmmError> {
        Qmp { path: run_dir.join(QMP_SOCKET) }.save(state, memory_mib, while_paused)
    }

    fn resume(&self, run_dir: &Path) -> Result<bool, VmmError> {
        let mut q = QmpSession::open(&run_dir.join(QMP_SOCKET), Duration::from_secs(5))?;
        // A state write whose taker was killed may still run: its end would pause the guest
        // again after a `cont` (seen: a snapshot killed 0.1 s in left the guest in
        // "postmigrate" for good). It is cancelled, and its end awaited, first.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = q.call("query-migrate", None)?;
            match m.get("status").and_then(|s| s.as_str()) {
                Some("setup" | "active" | "pre-switchover" | "device" | "wait-unplug") => {
                    q.call("migrate_cancel", None)?;
                }
                Some("cancelling") => {}
                _ => break,
            }
            if std::time::Instant::now() >= deadline {
                return Err(VmmError::Launch("an abandoned snapshot's state write did not end within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A write that completed may not have left finish-migrate yet (see `until_finalized`).
        q.until_finalized(Duration::from_secs(10))?;
        let status = q.call("query-status", None)?;
        if status.get("running").and_then(|r| r.as_bool()) == Some(true) {
            return Ok(false);
        }
        q.call("cont", None).map(|_| true)
    }

    fn launch(&self, m: &Machine, launcher: &mut dyn Launcher) -> Result<Instance, VmmError> {
        m.validate(&self.capabilities())?;
        let program = self.found()?;
        let runtime_files = self.runtime_files(&m.run_dir);
        for f in &runtime_files {
            let _ = std::fs::remove_file(f);
        }
        // The control sockets are bound before QEMU starts: nothing can connect to a socket
        // that is not there yet, and a jailed QEMU needs no path to make them.
        let qmp_path = m.run_dir.join(QMP_SOCKET);
        let fds = Fds {
            qmp: Some(launcher.listen(&qmp_path)?),
            agent: match m.agent_port {
                Some(_) => Some(launcher.listen(&m.run_dir.join(AGENT_VMM_SOCKET))?),
                None => None,
            },
        };
        let jailed = launcher.jailed();
        let files = m.jail_files();
        let disks = m.vmm_disks(false);
        let cmd = VmmCommand {
            program,
            args: Qemu::args(m, jailed, fds),
            files,
            disks,
            kvm: m.accel == Accel::Kvm,
            rw_dir: None,
        };
        let mut child = launcher.spawn(cmd)?;
        let qmp = Qmp { path: qmp_path };
        if let Some(state) = &m.incoming {
            if let Err(e) = qmp.restore(state, m.memory_mib, &mut child, &m.run_dir) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        Ok(Instance {
            child,
            control: Arc::new(qmp),
            runtime_files,
            agent: m
                .agent_port
                .as_ref()
                .map(|_| AgentEndpoint { path: m.run_dir.join(AGENT_VMM_SOCKET), vsock_port: None }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::machine;
    use crate::{Drive, Nic};

    #[test]
    fn command_line() {
        let mut m = machine();
        m.id_prefix = "acme".into();
        m.drives[0].path = "/v/a,b.qcow2".into();
        let a = Qemu::args(&m, false, Fds::default()).join(" ");
        assert!(a.contains("-name acme-0123456789abcdef"), "{a}");
        assert!(a.contains("-accel tcg -cpu max,-erms,-fsrm"), "{a}");
        assert!(a.contains("-smp 2 -m 256M"));
        assert!(a.contains("file=/v/a,,b.qcow2,format=qcow2"), "{a}");
        assert!(a.contains("virtio-net-device,netdev=net0,mac=02:00:00:00:00:01"));
        assert!(a.contains("-qmp unix:/v/qmp.sock,server=on,wait=off"));
        assert!(a.contains("acpi=off"));
        assert!(a.contains("virtserialport,chardev=agent0,name=org.ignite.agent.0"), "{a}");
        assert!(!a.contains("balloon"), "{a}");
        assert!(!a.contains("-sandbox"), "{a}");
        // Three NICs: the fifth device (the third NIC) would take IRQ 8; the filler takes it.
        let mut three = m.clone();
        three.nics = (0..3).map(|i| Nic { tap: format!("tap{i}"), mac: format!("02:00:00:00:00:0{i}") }).collect();
        three.drives.push(Drive { path: "/v/vol".into(), format: DiskFormat::Raw, read_only: false, backing: None });
        let a = Qemu::args(&three, false, Fds::default());
        let devices: Vec<&String> = a.iter().filter(|x| x.starts_with("virtio-")).collect();
        assert_eq!(devices[4], "virtio-balloon-device", "{devices:?}");
        assert!(devices[5].starts_with("virtio-net-device,netdev=net2"), "{devices:?}");
    }

    #[test]
    fn jailed_command_line_names_no_host_path() {
        let mut m = machine();
        m.drives[0].backing = Some("/base/raw".into());
        let a = Qemu::args(&m, true, Fds { qmp: Some(7), agent: Some(8) }).join(" ");
        assert!(a.contains(&format!("-sandbox {SANDBOX}")), "{a}");
        assert!(a.contains("-kernel /boot/vmlinux -initrd /boot/initrd"), "{a}");
        assert!(a.contains("tcg,tb-size=256"), "{a}");
        assert!(a.contains("fd={fd:disk0.rw},set=1") && a.contains("fd={fd:disk0.backing},set=2"), "{a}");
        assert!(a.contains("socket,id=qmp,fd=7") && a.contains("socket,id=agent0,fd=8"), "{a}");
        for host in ["/k/vmlinux", "/v/", "/base/raw"] {
            assert!(!a.contains(host), "{host} in {a}");
        }
    }

    #[test]
    fn the_translation_cache_is_the_machines_and_so_is_the_jails_limit() {
        let mut m = machine();
        assert_eq!(Qemu::overhead_mib(&m), 192 + TB_MIB);
        m.tcg_cache_mib = Some(16);
        for jailed in [true, false] {
            let a = Qemu::args(&m, jailed, Fds::default()).join(" ");
            assert!(a.contains("-accel tcg,tb-size=16 "), "{a}");
        }
        assert_eq!(Qemu::overhead_mib(&m), 192 + 16);
        m.accel = Accel::Kvm;
        assert!(!Qemu::args(&m, true, Fds::default()).join(" ").contains("tb-size"));
        // A resume: paused until its state is loaded.
        m.incoming = Some("/s/state".into());
        assert!(Qemu::args(&m, false, Fds::default()).join(" ").ends_with("-incoming defer"));
    }

    /// A launcher that records what it was asked and starts `true` in place of QEMU.
    #[derive(Default)]
    struct Recorder {
        listened: Vec<PathBuf>,
        spawned: Option<VmmCommand>,
        listeners: Vec<std::os::unix::net::UnixListener>,
    }

    impl Launcher for Recorder {
        fn jailed(&self) -> bool {
            true
        }
        fn listen(&mut self, path: &Path) -> Result<i32, VmmError> {
            let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| VmmError::Launch(e.to_string()))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
            self.listeners.push(l);
            self.listened.push(path.to_path_buf());
            Ok(fd)
        }
        fn spawn(&mut self, cmd: VmmCommand) -> Result<std::process::Child, VmmError> {
            self.spawned = Some(cmd);
            Command::new("true")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| VmmError::Launch(e.to_string()))
        }
    }

    #[test]
    fn launch_binds_the_control_sockets_and_describes_what_the_vmm_needs() {
        let d = tempfile::tempdir().unwrap();
        let mut m = machine();
        m.run_dir = d.path().to_path_buf();
        m.accel = Accel::Kvm;
        // A stale socket from a previous run does not stop the launch.
        std::fs::write(d.path().join(QMP_SOCKET), b"").unwrap();
        let q = Qemu::new(Some("/bin/sh".into()));
        let mut r = Recorder::default();
        let mut inst = q.launch(&m, &mut r).unwrap();
        assert_eq!(r.listened, vec![d.path().join(QMP_SOCKET), d.path().join(AGENT_VMM_SOCKET)]);
        let cmd = r.spawned.unwrap();
        assert_eq!(cmd.program, PathBuf::from("/bin/sh"));
        assert!(cmd.kvm);
        assert_eq!(cmd.files[0], ("/k/vmlinux".into(), JAIL_KERNEL.to_string()));
        assert_eq!(cmd.disks[0].key, "disk0");
        assert_eq!(inst.agent.clone().map(|a| (a.path, a.vsock_port)), Some((d.path().join(AGENT_VMM_SOCKET), None)));
        assert!(inst.take_console().is_some());
        assert!(inst.wait().unwrap().success());
        // An invalid machine is refused before anything is bound or started.
        let mut bad = m.clone();
        bad.vcpus = 0;
        let mut r = Recorder::default();
        assert!(matches!(q.launch(&bad, &mut r), Err(VmmError::Invalid(_))));
        assert!(r.listened.is_empty() && r.spawned.is_none());
    }

    #[test]
    fn a_missing_binary_says_which_package() {
        let q = Qemu::new(Some("/nonexistent/qemu".into()));
        let e = q.check_host().unwrap_err().to_string();
        assert!(e.contains("qemu-system-x86"), "{e}");
    }
}
