//! The Firecracker backend: an unmodified upstream `firecracker` binary, configured through
//! its API socket after it starts — machine config, boot source (the uncompressed vmlinux and
//! the VM's initramfs), drives, network interfaces (taps in the VM's network namespace), the
//! vsock device the guest agent listens on, then `InstanceStart`. Everything ignite knows
//! about Firecracker is here.
//!
//! - **Disks**: Firecracker reads raw images only, so its VMs have the `raw-layered` root: the
//!   image's shared base read-only plus the VM's writable layer (see `ignite-runtime`'s
//!   `rootdisk`); volumes are raw block devices or files.
//! - **Console**: the guest's serial port is Firecracker's stdin/stdout, as QEMU's is: logs and
//!   attach work the same.
//! - **Its own files** are in the `firecracker/` directory of the run directory: its API
//!   socket, its log (`firecracker.log`), its metrics (`firecracker.metrics`, emptied at each
//!   read) and the vsock socket. Firecracker binds its sockets itself (it takes no
//!   descriptors), so in the jail that directory is the one place it can write.
//! - **Agent**: over vsock (`PUT /vsock`): host side a Unix socket where a connection starts
//!   with `CONNECT <port>`.
//! - **Stop**: `SendCtrlAltDel` (the guest's i8042) for a graceful stop; Firecracker has no
//!   "quit" call, so a forced stop is the supervisor's SIGKILL.
//! - **Snapshots**: `PATCH /vm` Paused, the caller's disk copy, `PUT /snapshot/create` (a full
//!   snapshot: the device state and the guest memory, two files Firecracker writes by path in
//!   its files directory, then copied out of the VMM's reach), Resumed. A resume is a new
//!   Firecracker's `PUT /snapshot/load` of those files (bound read-only in its jail; the
//!   memory file is mapped, not read, and shared by every clone of a snapshot) with this
//!   machine's taps and vsock socket in place of the saved ones, then, outside the jail, its
//!   drives' paths (`PATCH /drives`: the saved state names the source VM's files; jailed,
//!   they are the same `/disks/<key>` in every VM), then Resumed.
//! - **Accelerator**: KVM only. No probe: whether KVM boots a Linux guest shows in the
//!   console and in how the VM ended (Firecracker's reason, from its log).
//! - **Jail**: ignite's own (see `ignite-supervisor`'s `jail`), as for QEMU: its own uid,
//!   namespaces, cgroup, a root holding only its binary, the kernel and initramfs (at
//!   [`JAIL_KERNEL`], [`JAIL_INITRD`]), its drives (Firecracker opens them by path, at
//!   `/disks/<key>`, as the VM's uid: the VM's own writable disk is made that uid's, a volume
//!   must be accessible to it) and its files directory. Firecracker's own seccomp filters stay
//!   on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::accel::{Accel, AccelChoice, AccelVerdict};
use crate::{
    AgentChannel, AgentEndpoint, Backend, Capabilities, Control, DiskFormat, HostInfo, Instance, JailProfile, Launcher,
    Machine, RootDisk, VmmCommand, VmmDisk, VmmError, AGENT_VMM_SOCKET, AGENT_VSOCK_PORT, JAIL_INITRD, JAIL_KERNEL,
};

/// The directory of Firecracker's own files in a VM's run directory (the jailed VMM's only
/// writable place).
pub const FILES_DIR: &str = "firecracker";
/// Firecracker's API socket in [`FILES_DIR`].
pub const API_SOCKET: &str = "firecracker.sock";
/// Its log (`--log-path`).
pub const LOG_FILE: &str = "firecracker.log";
/// Its metrics, one JSON object per flush (`--metrics-path`).
pub const METRICS_FILE: &str = "firecracker.metrics";
/// The guest's vsock context id (any value ≥ 3; each VM has its own device).
pub const GUEST_CID: u32 = 3;
/// How long Firecracker may take to open its API socket.
const API_WAIT: Duration = Duration::from_secs(10);
/// How long one API call may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the metrics file's end is read (one object is a few KiB).
const METRICS_TAIL: u64 = 256 * 1024;
/// Beside a saved state (see [`Backend::saved_files`]): the guest memory saved with it.
pub const MEMORY_FILE: &str = "memory";
/// In [`FILES_DIR`]: where Firecracker writes a snapshot's device state and memory (the one
/// place a jailed Firecracker can write), before they are copied out.
const SAVING_STATE: &str = "snapshot.vmstate";
const SAVING_MEMORY: &str = "snapshot.memory";
/// The most a device state file Firecracker wrote may hold (tens of KiB for ignite's
/// machines): what is taken from a VMM is bounded.
const MAX_VMSTATE: u64 = 64 << 20;
/// Where a jailed Firecracker finds the state and memory it resumes.
const JAIL_STATE: &str = "/snapshot/vmstate";
const JAIL_MEMORY: &str = "/snapshot/memory";

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct Firecracker {
    pub binary: PathBuf,
}

impl Firecracker {
    /// `binary`, else `firecracker` from PATH.
    pub fn new(binary: Option<PathBuf>) -> Firecracker {
        Firecracker { binary: binary.unwrap_or_else(|| "firecracker".into()) }
    }

    fn found(&self) -> Result<PathBuf, VmmError> {
        crate::find_program(&self.binary).ok_or_else(|| VmmError::Missing {
            what: format!("the Firecracker binary {}", self.binary.display()),
            hint: "install firecracker from its release page (github.com/firecracker-microvm/firecracker/releases) on PATH, or name it with --firecracker, IGNITE_FIRECRACKER or the Configuration's spec.vmmBinaries.firecracker",
        })
    }

    /// Where Firecracker's own files are for a VM whose run directory is `run_dir`.
    pub fn files_dir(run_dir: &Path) -> PathBuf {
        run_dir.join(FILES_DIR)
    }

    /// The memory file saved beside the state `state`.
    pub fn memory_file(state: &Path) -> PathBuf {
        state.with_file_name(MEMORY_FILE)
    }

    /// The `PUT /snapshot/load` that loads `m`'s saved state (its [`Machine::incoming`] is
    /// `state`) paused, with its own taps and vsock socket in place of the saved machine's; a
    /// `jailed` Firecracker finds the files at [`JAIL_STATE`] and [`JAIL_MEMORY`].
    pub fn load_call(m: &Machine, state: &Path, jailed: bool) -> Value {
        let (state, memory) = match jailed {
            true => (PathBuf::from(JAIL_STATE), PathBuf::from(JAIL_MEMORY)),
            false => (state.to_path_buf(), Firecracker::memory_file(state)),
        };
        let overrides: Vec<Value> = m
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"iface_id": format!("eth{i}"), "host_dev_name": n.tap}))
            .collect();
        let mut load = json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": memory},
            "resume_vm": false,
            "network_overrides": overrides,
        });
        if m.agent_port.is_some() {
            load["vsock_override"] = json!({"uds_path": Firecracker::files_dir(&m.run_dir).join(AGENT_VMM_SOCKET)});
        }
        load
    }

    /// The API calls that configure `m`, in order: (method, path, body). A `jailed` Firecracker
    /// names its kernel, initramfs and drives by their paths in the jail.
    pub fn configuration(m: &Machine, jailed: bool) -> Vec<(&'static str, String, Value)> {
        let mut calls = vec![(
            "PUT",
            "/machine-config".to_string(),
            json!({"vcpu_count": m.vcpus, "mem_size_mib": m.memory_mib, "smt": false}),
        )];
        let (kernel, initrd) = match jailed {
            true => (PathBuf::from(JAIL_KERNEL), m.initrd.as_ref().map(|_| PathBuf::from(JAIL_INITRD))),
            false => (m.kernel.clone(), m.initrd.clone()),
        };
        let mut boot = json!({"kernel_image_path": kernel, "boot_args": m.cmdline});
        if let Some(i) = initrd {
            boot["initrd_path"] = json!(i);
        }
        calls.push(("PUT", "/boot-source".into(), boot));
        for (i, d) in m.drives.iter().enumerate() {
            let id = format!("disk{i}");
            let path = if jailed { VmmDisk::jail_path(&id) } else { d.path.clone() };
            calls.push((
                "PUT",
                format!("/drives/{id}"),
                json!({"drive_id": id, "path_on_host": path, "is_root_device": false, "is_read_only": d.read_only}),
            ));
        }
        for (i, n) in m.nics.iter().enumerate() {
            let id = format!("eth{i}");
            calls.push((
                "PUT",
                format!("/network-interfaces/{id}"),
                json!({"iface_id": id, "host_dev_name": n.tap, "guest_mac": n.mac}),
            ));
        }
        if m.agent_port.is_some() {
            calls.push((
                "PUT",
                "/vsock".into(),
                json!({"guest_cid": GUEST_CID, "uds_path": Firecracker::files_dir(&m.run_dir).join(AGENT_VMM_SOCKET)}),
            ));
        }
        calls.push(("PUT", "/actions".into(), json!({"action_type": "InstanceStart"})));
        calls
    }

    /// Why Firecracker stopped the VM, from its log (for the run directory `run_dir`): the
    /// first error it logged (the cause, e.g. `Received KVM_EXIT_INTERNAL_ERROR signal`) and
    /// the last (its verdict).
    pub fn logged_error(run_dir: &Path) -> Option<String> {
        let mut log = Vec::new();
        crate::open_vmm_file(&Firecracker::files_dir(run_dir).join(LOG_FILE), false)
            .and_then(|mut f| f.read_to_end(&mut log))
            .ok()?;
        let log = String::from_utf8_lossy(&log[log.len().saturating_sub(64 * 1024)..]).into_owned();
        // "<time> [<id>:<thread>(:<level>)] <message>"
        let errors: Vec<&str> = log
            .lines()
            .map(|l| l.split_once("] ").map_or(l, |(_, m)| m).trim())
            .filter(|m| m.to_ascii_lowercase().contains("error") && !m.contains("exiting with error"))
            .collect();
        let (first, last) = (errors.first()?, errors.last()?);
        let said = if first == last { first.to_string() } else { format!("{first}; {last}") };
        Some(said.chars().take(400).collect())
    }
}

/// One API call over the Unix socket at `sock` (HTTP/1.1, one connection per call). A refusal
/// carries Firecracker's `fault_message`.
pub fn api_call(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, VmmError> {
    api_call_within(sock, method, path, body, API_TIMEOUT)
}

/// [`api_call`], for a call that may take up to `timeout` (a snapshot's memory written).
fn api_call_within(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, VmmError> {
    let control = |source| VmmError::Control { path: sock.to_path_buf(), source };
    let mut s = crate::connect_vmm_socket(sock).map_err(control)?;
    s.set_read_timeout(Some(timeout)).map_err(control)?;
    s.set_write_timeout(Some(timeout)).map_err(control)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(control)?;
    let (status, reply) = read_response(&mut s).map_err(control)?;
    let value: Value = if reply.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&reply).unwrap_or(Value::String(reply.clone()))
    };
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value.get("fault_message").and_then(Value::as_str).map(str::to_string).unwrap_or(reply);
    Err(VmmError::Refused { command: format!("{method} {path}"), message: format!("{message} (HTTP {status})") })
}

/// Reads one HTTP response: status code and body (by Content-Length).
fn read_response(s: &mut UnixStream) -> std::io::Result<(u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("response headers too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad("no HTTP status line"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if len > 1024 * 1024 {
        return Err(bad("response body too long"));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// How long writing or mapping the state of a guest of `memory_mib` may take: its memory at
/// 50 MiB/s, beyond the API's own time.
fn snapshot_budget(memory_mib: u64) -> Duration {
    API_TIMEOUT + Duration::from_millis(memory_mib.saturating_mul(20))
}

/// Copies a file the VMM made in its directory (`from`, at most `max_len` bytes) to `to`, a
/// new file of the caller's, readable by all (a resumed VMM reads it as its own uid, through
/// its jail, where nothing else of the state root is visible), then removes `from`. A copy,
/// not a rename: a VMM compromised later could still hold the file it wrote open, and write
/// into a snapshot that the clones of it map (their pages not yet written would change under
/// them). Only a regular file with one link is taken (a jailed VMM could leave a symlink, a
/// FIFO or a link to another file there, or swap one in at any moment: it is opened without
/// following a symlink, without blocking, and checked through that descriptor). Blocks of
/// zeroes are left as holes: Firecracker writes a guest's whole memory, most of which a guest
/// never touched (a toy guest's 32 MiB took 60 KiB). Returns the copy.
fn take_file(from: &Path, to: &Path, max_len: u64) -> Result<std::fs::File, VmmError> {
    use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    const BLOCK: usize = 4096;
    static ZEROES: [u8; BLOCK] = [0; BLOCK];
    let fail = |e: String| VmmError::Launch(format!("{}: {e}", from.display()));
    let src = std::fs::File::options()
        .read(true)
        // (Non-blocking: a FIFO in its place would hold the open forever.)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(from)
        .map_err(|e| fail(format!("{e} (not a regular file of its own: not taken)")))?;
    let meta = src.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(fail("not a regular file of its own: not taken".into()));
    }
    let len = meta.len();
    if len > max_len {
        return Err(fail(format!("{len} bytes, more than the {max_len} it can hold: not taken")));
    }
    let dst = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(to)
        .map_err(|e| VmmError::Launch(format!("{}: {e}", to.display())))?;
    let copied = (|| -> std::io::Result<()> {
        // (Whatever the umask: another uid reads it.)
        dst.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < len {
            let want = buf.len().min(usize::try_from(len - at).unwrap_or(usize::MAX));
            let n = src.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "it shrank while copied"));
            }
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                if block != &ZEROES[..block.len()] {
                    dst.write_all_at(block, at + (i * BLOCK) as u64)?;
                }
            }
            at += n as u64;
        }
        dst.set_len(len)
    })();
    match copied {
        Ok(()) => {
            let _ = std::fs::remove_file(from);
            Ok(dst)
        }
        Err(e) => {
            let _ = std::fs::remove_file(to);
            Err(fail(format!("copying it to {}: {e}", to.display())))
        }
    }
}

/// Firecracker's controls.
#[derive(Debug)]
struct Api {
    sock: PathBuf,
}

impl Control for Api {
    fn request_shutdown(&self) -> Result<(), VmmError> {
        api_call(&self.sock, "PUT", "/actions", Some(&json!({"action_type": "SendCtrlAltDel"}))).map(drop)
    }
    fn force_stop(&self) -> Result<(), VmmError> {
        Err(VmmError::Refused { command: "force stop".into(), message: "Firecracker has no stop call".into() })
    }
}

impl Backend for Firecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            root_disks: &[RootDisk::RawLayered],
            drive_formats: &[DiskFormat::Raw],
            agent: AgentChannel::Vsock,
            accels: &[Accel::Kvm],
            // Firecracker's virtio-mmio devices share the legacy IRQ range: a handful per VM.
            max_devices: 16,
            max_vcpus: 32,
            jail: true,
        }
    }

    fn binary(&self) -> Result<PathBuf, VmmError> {
        self.found()
    }

    fn check_host(&self) -> Result<HostInfo, VmmError> {
        let binary = self.found()?;
        let out = std::process::Command::new(&binary)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| VmmError::Launch(format!("{}: {e}", binary.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.lines().find(|l| l.starts_with("Firecracker v")).map(str::to_string);
        if version.is_none() {
            return Err(VmmError::Launch(format!(
                "{} --version did not print a Firecracker version: is it Firecracker?",
                binary.display()
            )));
        }
        Ok(HostInfo { binary, version, seccomp: Ok("Firecracker's own filters (built in)".into()) })
    }

    fn choose_accel(
        &self,
        _state_dir: &Path,
        choice: AccelChoice,
        _kernel: &Path,
        _probe_initrd: &dyn Fn(&Path) -> Result<(), String>,
    ) -> Result<AccelVerdict, String> {
        if choice == AccelChoice::Tcg {
            return Err("Firecracker runs on KVM only: use --vmm qemu for TCG".into());
        }
        match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => {
                Ok(AccelVerdict { accel: Accel::Kvm, reason: "Firecracker runs on KVM (/dev/kvm is usable)".into() })
            }
            Err(e) => Err(format!("Firecracker needs KVM and /dev/kvm cannot be opened ({e}): use --vmm qemu")),
        }
    }

    fn jail_profile(&self, _machine: &Machine) -> JailProfile {
        JailProfile { overhead_mib: 64, seccomp: "Firecracker's own filters".into() }
    }

    fn runtime_files(&self, run_dir: &Path) -> Vec<PathBuf> {
        let dir = Firecracker::files_dir(run_dir);
        vec![dir.join(API_SOCKET), dir.join(AGENT_VMM_SOCKET)]
    }

    fn saved_files(&self, state: &Path) -> Vec<PathBuf> {
        vec![state.to_path_buf(), Firecracker::memory_file(state)]
    }

    fn save(
        &self,
        run_dir: &Path,
        state: &Path,
        memory_mib: u64,
        while_paused: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<Duration, VmmError> {
        let dir = Firecracker::files_dir(run_dir);
        let api = dir.join(API_SOCKET);
        let (vmstate, memory) = (dir.join(SAVING_STATE), dir.join(SAVING_MEMORY));
        for f in [&vmstate, &memory] {
            let _ = std::fs::remove_file(f);
        }
        let t0 = Instant::now();
        api_call(&api, "PATCH", "/vm", Some(&json!({"state": "Paused"})))?;
        let saved = (|| {
            // Paused: Firecracker has flushed what the guest wrote to its drives.
            while_paused().map_err(VmmError::Launch)?;
            let create = json!({"snapshot_type": "Full", "snapshot_path": vmstate, "mem_file_path": memory});
            api_call_within(&api, "PUT", "/snapshot/create", Some(&create), snapshot_budget(memory_mib))?;
            ignite_proc::fault::point("snapshot.saving");
            Ok(())
        })();
        let resumed = api_call(&api, "PATCH", "/vm", Some(&json!({"state": "Resumed"})));
        let paused = t0.elapsed();
        let taken = saved.and(resumed).and_then(|_| {
            take_file(&vmstate, state, MAX_VMSTATE)?;
            let taken = take_file(&memory, &Firecracker::memory_file(state), memory_mib << 20);
            if taken.is_err() {
                let _ = std::fs::remove_file(state);
            }
            taken.map(drop)
        });
        if taken.is_err() {
            for f in [&vmstate, &memory] {
                let _ = std::fs::remove_file(f);
            }
        }
        taken.map(|_| paused)
    }

    fn resume(&self, run_dir: &Path) -> Result<bool, VmmError> {
        let dir = Firecracker::files_dir(run_dir);
        let api = dir.join(API_SOCKET);
        // (A snapshot being written still: Firecracker answers once it is.)
        let info = api_call_within(&api, "GET", "/", None, 3 * API_TIMEOUT)?;
        let paused = info.get("state").and_then(Value::as_str) == Some("Paused");
        if paused {
            api_call(&api, "PATCH", "/vm", Some(&json!({"state": "Resumed"})))?;
        }
        // What the abandoned snapshot wrote (the memory is the guest's size).
        for f in [SAVING_STATE, SAVING_MEMORY] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        Ok(paused)
    }

    fn launch(&self, m: &Machine, launcher: &mut dyn Launcher) -> Result<Instance, VmmError> {
        m.validate(&self.capabilities())?;
        let jailed = launcher.jailed();
        let program = self.found()?;
        // A fresh directory each launch: a jailed Firecracker owns it, and whatever a previous
        // one left there (a symlink in place of its log...) is not to be trusted.
        let dir = Firecracker::files_dir(&m.run_dir);
        let fresh = || {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::create_dir(&dir)
        };
        fresh().map_err(|e| VmmError::Launch(format!("{}: {e}", dir.display())))?;
        let runtime_files = self.runtime_files(&m.run_dir);
        let api = dir.join(API_SOCKET);
        let (log, metrics) = (dir.join(LOG_FILE), dir.join(METRICS_FILE));
        // Firecracker opens them; it does not create them. One run's log at a time.
        for f in [&log, &metrics] {
            std::fs::write(f, b"").map_err(|e| VmmError::Launch(format!("{}: {e}", f.display())))?;
        }
        let mut files = m.jail_files();
        if let Some(state) = &m.incoming {
            files.push((state.clone(), JAIL_STATE.to_string()));
            files.push((Firecracker::memory_file(state), JAIL_MEMORY.to_string()));
        }
        let disks = m.vmm_disks(true);
        let path = |p: &Path| p.display().to_string();
        let mut args = vec!["--api-sock".into(), path(&api), "--id".into(), format!("{}-{}", m.id_prefix, m.uid)];
        args.extend(["--log-path".into(), path(&log), "--level".into(), "Info".into()]);
        args.extend(["--metrics-path".into(), path(&metrics)]);
        let mut child =
            launcher.spawn(VmmCommand { program, args, files, disks, kvm: true, rw_dir: Some(dir.clone()) })?;
        let configured = (|| {
            let deadline = Instant::now() + API_WAIT;
            while crate::connect_vmm_socket(&api).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(VmmError::Launch(format!(
                        "firecracker exited ({status}) before its API socket was up: {}",
                        Firecracker::logged_error(&m.run_dir).unwrap_or_else(|| "see vmm.log".into())
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(VmmError::Launch(format!(
                        "firecracker did not open {} within {} s",
                        api.display(),
                        API_WAIT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(state) = &m.incoming {
                let load = Firecracker::load_call(m, state, jailed);
                api_call_within(&api, "PUT", "/snapshot/load", Some(&load), snapshot_budget(m.memory_mib)).map_err(
                    |e| match jailed {
                        true => e,
                        // It opened the drives the state names before it is told this
                        // machine's.
                        false => VmmError::Launch(format!(
                            "{e}: outside ignite's jail Firecracker opens the saved machine's drives (its files at the time of the snapshot) before it is given this VM's"
                        )),
                    },
                )?;
                if !jailed {
                    for (i, d) in m.drives.iter().enumerate() {
                        let id = format!("disk{i}");
                        let patch = json!({"drive_id": id, "path_on_host": d.path});
                        api_call(&api, "PATCH", &format!("/drives/{id}"), Some(&patch))?;
                    }
                }
                return api_call(&api, "PATCH", "/vm", Some(&json!({"state": "Resumed"}))).map(drop);
            }
            for (method, path, body) in Firecracker::configuration(m, jailed) {
                api_call(&api, method, &path, Some(&body))?;
            }
            Ok(())
        })();
        if let Err(e) = configured {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Instance {
            child,
            control: Arc::new(Api { sock: api }),
            runtime_files,
            agent: m
                .agent_port
                .as_ref()
                .map(|_| AgentEndpoint { path: dir.join(AGENT_VMM_SOCKET), vsock_port: Some(AGENT_VSOCK_PORT) }),
        })
    }

    fn explain_exit(&self, run_dir: &Path) -> Option<String> {
        Firecracker::logged_error(run_dir).map(|e| format!("Firecracker: {e}"))
    }

    /// Asks Firecracker to flush its metrics (`FlushMetrics`), reads the last object it wrote
    /// to `firecracker.metrics`, and empties the file: Firecracker writes on at its own offset,
    /// so what it wrote before becomes a hole that takes no disk (the file would otherwise grow
    /// by one object per flush for the VM's life).
    fn metrics(&self, run_dir: &Path) -> Vec<(String, String, f64)> {
        let dir = Firecracker::files_dir(run_dir);
        let _ = api_call(&dir.join(API_SOCKET), "PUT", "/actions", Some(&json!({"action_type": "FlushMetrics"})));
        let read = || -> std::io::Result<Vec<u8>> {
            use std::io::Seek;
            let mut f = crate::open_vmm_file(&dir.join(METRICS_FILE), true)?;
            let len = f.metadata()?.len();
            f.seek(std::io::SeekFrom::Start(len.saturating_sub(METRICS_TAIL)))?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail)?;
            f.set_len(0)?;
            Ok(tail)
        };
        read().map(|b| parse_metrics(&b)).unwrap_or_default()
    }
}

/// The numbers of the last metrics object in `bytes` (Firecracker appends one JSON object per
/// flush; its counters count since the previous flush), as (group, name, value): nested
/// objects are named by their path (`latencies_us`, `read_count`, `min_us_sum`...).
pub fn parse_metrics(bytes: &[u8]) -> Vec<(String, String, f64)> {
    let tail = &bytes[bytes.len().saturating_sub(METRICS_TAIL as usize)..];
    let text = String::from_utf8_lossy(tail);
    // A hole left by emptying the file reads as NUL bytes before the next object.
    let object = |l: &str| serde_json::from_str::<Value>(l.trim_matches(|c: char| c == '\0' || c.is_whitespace())).ok();
    let Some(last) = text.lines().rev().find_map(object) else {
        return Vec::new();
    };
    fn walk(prefix: &str, v: &Value, group: &str, out: &mut Vec<(String, String, f64)>) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.push((group.to_string(), prefix.to_string(), f));
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}_{k}") };
                    walk(&name, v, group, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Value::Object(groups) = last {
        for (group, v) in &groups {
            if group != "utc_timestamp_ms" {
                walk("", v, group, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::machine;
    use crate::{Drive, Nic};

    #[test]
    fn the_configuration_names_every_device() {
        let mut m = machine();
        m.drives = vec![
            Drive { path: "/base.ext4".into(), format: DiskFormat::Raw, read_only: true, backing: None },
            Drive { path: "/vm/upper.ext4".into(), format: DiskFormat::Raw, read_only: false, backing: None },
        ];
        m.nics = vec![Nic { tap: "tap0".into(), mac: "02:00:00:00:00:01".into() }];
        m.agent_port = Some("org.ignite.agent.0".into());
        let calls = Firecracker::configuration(&m, false);
        let paths: Vec<&str> = calls.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/machine-config",
                "/boot-source",
                "/drives/disk0",
                "/drives/disk1",
                "/network-interfaces/eth0",
                "/vsock",
                "/actions"
            ]
        );
        assert_eq!(calls[2].2["is_read_only"], json!(true));
        assert_eq!(calls[4].2["host_dev_name"], json!("tap0"));
        assert_eq!(calls[6].2["action_type"], json!("InstanceStart"));
        assert_eq!(calls[3].2["path_on_host"], json!("/vm/upper.ext4"));
        assert_eq!(calls[5].2["uds_path"], json!(m.run_dir.join("firecracker/agent-vmm.sock")));
        // Jailed, it names no host path but its own files directory (bound at the same path).
        let jailed = Firecracker::configuration(&m, true);
        assert_eq!(jailed[1].2["kernel_image_path"], json!(JAIL_KERNEL));
        assert_eq!(jailed[1].2["initrd_path"], json!(JAIL_INITRD));
        assert_eq!(jailed[2].2["path_on_host"], json!("/disks/disk0"));
        assert_eq!(jailed[3].2["path_on_host"], json!("/disks/disk1"));
        assert_eq!(jailed[5].2, calls[5].2);
    }

    #[test]
    fn a_resume_loads_the_state_paused_with_this_machines_taps_and_socket() {
        let mut m = machine();
        m.nics = vec![
            Nic { tap: "tap0".into(), mac: "02:00:00:00:00:01".into() },
            Nic { tap: "vm-extra1".into(), mac: "02:00:00:00:00:02".into() },
        ];
        let state = Path::new("/s/abc/state");
        assert_eq!(Firecracker::memory_file(state), Path::new("/s/abc/memory"));
        assert_eq!(
            Firecracker::new(None).saved_files(state),
            [PathBuf::from("/s/abc/state"), PathBuf::from("/s/abc/memory")]
        );
        let load = Firecracker::load_call(&m, state, false);
        assert_eq!(load["snapshot_path"], json!("/s/abc/state"));
        assert_eq!(load["mem_backend"], json!({"backend_type": "File", "backend_path": "/s/abc/memory"}));
        // Resumed by a call of its own, once its drives are this machine's.
        assert_eq!(load["resume_vm"], json!(false));
        assert_eq!(
            load["network_overrides"],
            json!([{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "eth1", "host_dev_name": "vm-extra1"}])
        );
        assert_eq!(load["vsock_override"]["uds_path"], json!(m.run_dir.join("firecracker/agent-vmm.sock")));
        let jailed = Firecracker::load_call(&m, state, true);
        assert_eq!(jailed["snapshot_path"], json!(JAIL_STATE));
        assert_eq!(jailed["mem_backend"]["backend_path"], json!(JAIL_MEMORY));
        assert_eq!(jailed["vsock_override"], load["vsock_override"]);
        m.agent_port = None;
        assert!(Firecracker::load_call(&m, state, true).get("vsock_override").is_none());
    }

    #[test]
    fn what_the_vmm_leaves_in_its_directory_is_taken_only_as_a_file_of_its_own() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("made"), d.path().join("taken"));
        std::fs::write(&from, b"state").unwrap();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The VMM keeps the file it wrote open: what it writes later is not in what was taken.
        let held = std::fs::File::options().write(true).open(&from).unwrap();
        let made = std::fs::metadata(&from).unwrap().ino();
        drop(take_file(&from, &to, 1024).unwrap());
        assert!(!from.exists());
        assert_ne!(std::fs::metadata(&to).unwrap().ino(), made);
        std::os::unix::fs::FileExt::write_all_at(&held, b"EVIL!", 0).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"state");
        assert_eq!(std::fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o644);
        // More than it can hold: refused, nothing made.
        std::fs::write(&from, vec![1u8; 2048]).unwrap();
        let e = take_file(&from, &d.path().join("t6"), 1024).unwrap_err().to_string();
        assert!(e.contains("more than the 1024"), "{e}");
        assert!(!d.path().join("t6").exists());
        std::fs::remove_file(&from).unwrap();
        // A symlink (to a host file) or a second link to another file is refused, and left.
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"host").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&secret, &from).unwrap();
        let e = take_file(&from, &d.path().join("t2"), 1024).unwrap_err().to_string();
        assert!(e.contains("not a regular file of its own"), "{e}");
        std::fs::remove_file(&from).unwrap();
        std::fs::hard_link(&secret, &from).unwrap();
        assert!(take_file(&from, &d.path().join("t3"), 1024).is_err());
        assert!(!d.path().join("t2").exists() && !d.path().join("t3").exists());
        std::fs::remove_file(&from).unwrap();
        // Nor a FIFO (an open of it for reading would wait for a writer).
        rustix::fs::mkfifoat(rustix::fs::CWD, &from, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        assert!(take_file(&from, &d.path().join("t5"), 1024).is_err());
        // The host file behind them is untouched.
        assert_eq!(std::fs::read(&secret).unwrap(), b"host");
        assert_eq!(std::fs::symlink_metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(take_file(&d.path().join("none"), &d.path().join("t4"), 1024).is_err());
    }

    #[test]
    fn zero_blocks_are_left_as_holes_and_the_copy_reads_the_same() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (p, q) = (d.path().join("memory"), d.path().join("taken"));
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1; // block 1
        data[(3 << 20) + 4095] = 2; // the last byte of a block
        data[(8 << 20) - 1] = 3; // the file's last block
        std::fs::write(&p, &data).unwrap();
        take_file(&p, &q, 8 << 20).unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), data);
        assert!(std::fs::metadata(&q).unwrap().blocks() * 512 <= 64 * 1024);
        // A file whose length is not a whole number of blocks, all zeroes: all holes.
        std::fs::write(&p, vec![0u8; 10_000]).unwrap();
        let r = d.path().join("odd");
        take_file(&p, &r, 8 << 20).unwrap();
        assert_eq!(std::fs::read(&r).unwrap(), vec![0u8; 10_000]);
        assert_eq!(std::fs::metadata(&r).unwrap().blocks(), 0);
    }

    #[test]
    fn the_last_metrics_flush_is_read_flat() {
        let bytes = br#"{"utc_timestamp_ms":1,"block":{"read_count":1}}
{"utc_timestamp_ms":2,"block":{"read_count":7,"read_bytes":4096},"vcpu":{"exit_io_in":3,"exit_io_in_agg":{"min_us":2,"max_us":9}},"vmm":{"panic_count":0}}
{"truncated"#;
        let m = parse_metrics(bytes);
        let get = |g: &str, n: &str| m.iter().find(|(a, b, _)| a == g && b == n).map(|x| x.2);
        assert_eq!(get("block", "read_count"), Some(7.0));
        assert_eq!(get("block", "read_bytes"), Some(4096.0));
        assert_eq!(get("vcpu", "exit_io_in_agg_max_us"), Some(9.0));
        assert_eq!(get("vmm", "panic_count"), Some(0.0));
        assert!(m.iter().all(|(g, _, _)| g != "utc_timestamp_ms"));
        assert!(parse_metrics(b"not json").is_empty());
        // After the file was emptied, Firecracker's next object follows a hole.
        let mut holed = vec![0u8; 5000];
        holed.extend_from_slice(br#"{"block":{"read_count":2}}"#);
        holed.push(b'\n');
        assert_eq!(parse_metrics(&holed), vec![("block".to_string(), "read_count".to_string(), 2.0)]);
    }

    #[test]
    fn its_logged_errors_explain_the_end() {
        let d = tempfile::tempdir().unwrap();
        let log = Firecracker::files_dir(d.path()).join(LOG_FILE);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(
            &log,
            "2026-12-01T18:33:27.6 [ignite-x:main] Artificially kick devices\n\
             2026-12-01T18:33:49.3 [ignite-x:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal\n\
             2026-12-01T18:33:49.3 [ignite-x:main] Vmm is stopping.\n\
             2026-12-01T18:33:49.4 [ignite-x:main] RunWithApiError error: MicroVM stopped with an error: GenericError\n\
             2026-12-01T18:33:49.4 [ignite-x:main] Firecracker exiting with error. exit_code=1\n",
        )
        .unwrap();
        assert_eq!(
            Firecracker::logged_error(d.path()).as_deref(),
            Some("Received KVM_EXIT_INTERNAL_ERROR signal; RunWithApiError error: MicroVM stopped with an error: GenericError")
        );
        std::fs::write(&log, "2026-12-01T18:33:27.6 [ignite-x:main] Artificially kick devices\n").unwrap();
        assert_eq!(Firecracker::logged_error(d.path()), None);
    }
}
