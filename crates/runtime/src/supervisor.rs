//! `ignite-spawn`: the one supervisor process per VM (Weave Ignite's ignite-spawn, without a
//! container). It detaches from the terminal, starts the VMM through its backend (the VMM
//! dies with it), owns the serial console (rotated log file + attach socket), records the real
//! state in the store, turns SIGTERM into a graceful guest shutdown and SIGINT into an
//! immediate stop, and records how the VM ended.
//!
//! Protocol with the process that started it: one line on stdout, `ready <vmm-pid>` or
//! `error: <message>`, then stdout is not used again. Diagnostics go to stderr
//! (`vm/<uid>/spawn.log`).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_api::{ExitStatus, RuntimeStatus, Vm};
use ignite_store::Store;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::backend::{self, BootConfig};
use crate::console::{GuestEvent, LineScanner, RotatingLog, CONSOLE_LOG, DEFAULT_MAX_LOG_BYTES};
use crate::sys;

/// Boot configuration file in a VM's directory.
pub const BOOT_FILE: &str = "boot.json";
/// Attach socket in a VM's directory.
pub const ATTACH_SOCKET: &str = "attach.sock";

// Why the VM is ending, most specific first.
const END_NONE: u8 = 0;
const END_STOP: u8 = 1;
const END_KILL: u8 = 2;
const END_POWEROFF: u8 = 3;
const END_REBOOT: u8 = 4;
const END_PANIC: u8 = 5;
const END_INIT: u8 = 6;

struct Shared {
    end: AtomicU8,
    detail: Mutex<String>,
    clients: Mutex<Vec<UnixStream>>,
    stdin: Mutex<Option<ChildStdin>>,
}

/// Runs the supervisor for VM `uid` under `root`; returns the process exit code.
pub fn run(root: &Path, uid: &str) -> i32 {
    let mut ready_out = std::io::stdout();
    match supervise(root, uid, &mut ready_out) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(ready_out, "error: {e}");
            let _ = ready_out.flush();
            eprintln!("ignite-spawn: {e}");
            1
        }
    }
}

fn supervise(root: &Path, uid: &str, ready_out: &mut impl Write) -> Result<i32, String> {
    sys::detach_session().map_err(|e| format!("setsid: {e}"))?;
    let store = Store::open(root).map_err(|e| e.to_string())?;
    let dir = store.dir::<Vm>(uid);
    let mut boot: BootConfig = serde_json::from_slice(
        &std::fs::read(dir.join(BOOT_FILE))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(BOOT_FILE).display()))?,
    )
    .map_err(|e| format!("invalid {}: {e}", BOOT_FILE))?;
    let vm_name = boot.name.clone();
    let backend_name = store.get::<Vm>(uid).map_err(|e| e.to_string())?.spec.vmm.unwrap_or_else(|| "qemu".to_string());
    let backend = backend::by_name(&backend_name).map_err(|e| e.to_string())?;

    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| e.to_string())?;
    let log =
        RotatingLog::open(&dir.join(CONSOLE_LOG), DEFAULT_MAX_LOG_BYTES).map_err(|e| format!("console log: {e}"))?;
    let vmm_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("vmm.log"))
        .map_err(|e| format!("vmm log: {e}"))?;
    let _ = std::fs::remove_file(dir.join("qmp.sock"));
    let _ = std::fs::remove_file(dir.join(crate::agent::AGENT_VMM_SOCKET));
    let _ = std::fs::remove_file(dir.join(crate::agent::AGENT_SOCKET));
    let attach_path = dir.join(ATTACH_SOCKET);
    let _ = std::fs::remove_file(&attach_path);
    let listener =
        UnixListener::bind(&attach_path).map_err(|e| format!("attach socket {}: {e}", attach_path.display()))?;

    // The VMM's control sockets, bound here and handed over: it needs no path to make them.
    let qmp_listener = UnixListener::bind(dir.join("qmp.sock")).map_err(|e| format!("QMP socket: {e}"))?;
    let agent_listener = if boot.agent {
        Some(
            UnixListener::bind(dir.join(crate::agent::AGENT_VMM_SOCKET))
                .map_err(|e| format!("the agent's socket: {e}"))?,
        )
    } else {
        None
    };
    let mut pass: Vec<i32> = vec![qmp_listener.as_raw_fd()];
    boot.fds.qmp = Some(qmp_listener.as_raw_fd());
    if let Some(l) = &agent_listener {
        boot.fds.agent = Some(l.as_raw_fd());
        pass.push(l.as_raw_fd());
    }
    let mut cmd = backend.command(&boot).map_err(|e| e.to_string())?;
    // The jail (see `jail`): its cgroup here, everything else in the jailer.
    let mut jail_status = None;
    let mut cgroup = None;
    let mut alive_writer = None;
    if let Some(j) = boot.jail {
        let limits = crate::cgroup::Limits {
            memory_max: (boot.memory_mib + crate::backend::qemu::Qemu::overhead_mib(boot.accel)) << 20,
            cpus: boot.vcpus,
        };
        let cg = crate::cgroup::plan_and_record(uid, &dir.join(crate::cgroup::RECORD))?;
        let (alive_r, alive_w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
        pass.push(std::os::fd::AsRawFd::as_raw_fd(&alive_r));
        let mut spec = jail_spec(&boot, &cmd, uid, j, &cg, std::os::fd::AsRawFd::as_raw_fd(&alive_r))?;
        spec.limits = Some((limits.memory_max, limits.cpus));
        // The VMM's own command line, as the jailer will exec it.
        eprintln!("ignite-spawn: jailed vmm argv {}", serde_json::to_string(&spec.argv).unwrap_or_default());
        let spec_path = dir.join("jail.json");
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
        crate::cgroup::write_runtime_file(&spec_path, &json)?;
        jail_status = Some(ignite_api::JailStatus {
            uid: j.uid,
            cgroups: cg.dirs.iter().map(|d| d.display().to_string()).collect(),
            memory_max: Some(limits.memory_max),
            cpu_max: limits.cpu_max(),
            seccomp: "QEMU -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        });
        let me = std::env::current_exe().map_err(|e| format!("cannot find ignite-spawn: {e}"))?;
        cmd = std::process::Command::new(me);
        cmd.arg("--jailer").arg(&spec_path);
        cgroup = Some(cg);
        alive_writer = Some((alive_r, alive_w));
    } else if let Some(ns) = &boot.netns {
        // The VMM opens its taps inside the VM's network namespace.
        let mut wrapped = std::process::Command::new("ip");
        wrapped.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
        cmd = wrapped;
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(vmm_log));
    sys::inherit_fds(&mut cmd, pass);
    sys::die_with_parent(&mut cmd);
    // For benchmarks and debugging: the exact VMM command line and when it was spawned.
    let argv: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    eprintln!("ignite-spawn: argv {}", serde_json::to_string(&argv).unwrap_or_default());
    let spawn_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut child: Child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", backend.name()))?;
    eprintln!("ignite-spawn: timing vmm_spawn_unix_ns={spawn_ns}");
    let vmm_pid = child.id();
    // The listening sockets live on in the VMM; the jailer's end of the liveness pipe too.
    drop(qmp_listener);
    drop(agent_listener);
    let _alive = alive_writer.map(|(r, w)| {
        drop(r);
        w
    });
    ignite_proc::fault::point("spawn.vmm-started");
    if boot.agent {
        if let Err(e) = crate::agent::start_mux(&dir, crate::agent::DEAD_AFTER) {
            eprintln!("ignite-spawn: the guest agent's socket: {e}");
        }
    }
    let stdout = child.stdout.take().ok_or("no VMM stdout")?;
    let shared = Arc::new(Shared {
        end: AtomicU8::new(END_NONE),
        detail: Mutex::new(String::new()),
        clients: Mutex::new(Vec::new()),
        stdin: Mutex::new(child.stdin.take()),
    });

    // Record the running state before reporting ready: `start` returns a VM that is running.
    let my_pid = std::process::id();
    let started = chrono::Utc::now();
    let accel = boot.accel.to_string();
    let bname = backend.name().to_string();
    store
        .modify::<Vm, _>(uid, |vm| {
            vm.status.running = true;
            vm.status.start_time = Some(started);
            vm.status.exit = None;
            vm.status.runtime = Some(RuntimeStatus {
                id: uid.to_string(),
                name: bname,
                pid: Some(my_pid),
                accel: Some(accel),
                jail: jail_status,
            });
        })
        .map_err(|e| e.to_string())?;
    let _ = writeln!(ready_out, "ready {vmm_pid}");
    let _ = ready_out.flush();
    eprintln!("ignite-spawn: VM {vm_name} ({uid}): {} pid {vmm_pid}", backend.name());

    // Console: VMM stdout -> log, attached clients, event scanner.
    let boot_arc = Arc::new(boot);
    {
        let shared = shared.clone();
        let boot = boot_arc.clone();
        let backend_name = backend_name.clone();
        std::thread::spawn(move || console_pump(stdout, log, &shared, &boot, &backend_name));
    }
    // Attach: each client sees console output and types into the console.
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Ok(out) = conn.try_clone() {
                    shared.clients.lock().map(|mut c| c.push(out)).ok();
                }
                let shared = shared.clone();
                std::thread::spawn(move || attach_input(conn, &shared));
            }
        });
    }
    // DHCP for guests that run a client: the same lease as the kernel's ip= argument.
    if let (Some(ns), Some((lease, server))) = (boot_arc.netns.clone(), boot_arc.dhcp.clone()) {
        std::thread::spawn(move || {
            if let Err(e) = ignite_net::dhcp::serve(&ns, lease, server) {
                eprintln!("ignite-spawn: DHCP responder stopped: {e}");
            }
        });
    }
    // Signals: TERM = graceful, INT = now.
    {
        let shared = shared.clone();
        let boot = boot_arc.clone();
        let backend_name = backend_name.clone();
        let mut signals = signals;
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let Ok(backend) = backend::by_name(&backend_name) else { return };
                match sig {
                    SIGTERM => {
                        let _ = shared.end.compare_exchange(END_NONE, END_STOP, Ordering::SeqCst, Ordering::SeqCst);
                        if let Err(e) = backend.request_shutdown(&boot) {
                            eprintln!("ignite-spawn: graceful shutdown request failed: {e}; stopping the VMM");
                            if backend.force_stop(&boot).is_err() {
                                let _ = sys::kill(vmm_pid);
                            }
                        }
                    }
                    SIGINT => {
                        shared.end.store(END_KILL, Ordering::SeqCst);
                        if backend.force_stop(&boot).is_err() {
                            let _ = sys::kill(vmm_pid);
                        }
                        let pid = vmm_pid;
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(3));
                            let _ = sys::kill(pid);
                        });
                    }
                    _ => {}
                }
            }
        });
    }

    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let code = status.code();
    let detail = shared.detail.lock().map(|d| d.clone()).unwrap_or_default();
    let reason = match shared.end.load(Ordering::SeqCst) {
        END_STOP => "stopped".to_string(),
        END_KILL => "killed".to_string(),
        END_POWEROFF => "guest powered off".to_string(),
        END_REBOOT => "guest rebooted".to_string(),
        END_PANIC => format!("guest kernel panic: {detail}"),
        END_INIT => format!("guest init failed: {detail}"),
        _ => match code {
            Some(0) => "VMM exited".to_string(),
            Some(c) => format!("VMM exited with code {c} (see vmm.log)"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("VMM killed by signal {}", status.signal().unwrap_or(0))
            }
        },
    };
    eprintln!("ignite-spawn: VM {vm_name} ({uid}) ended: {reason}");
    if cgroup.is_some() {
        crate::cgroup::release(&dir.join(crate::cgroup::RECORD));
    }
    let _ = std::fs::remove_dir(crate::jail::root_for(uid));
    ignite_proc::fault::point("spawn.vmm-ended");
    finish(&store, uid, my_pid, code, &reason, &dir);
    Ok(0)
}

/// Records that the VM ended (only if the status still names this supervisor).
pub fn finish(store: &Store, uid: &str, pid: u32, code: Option<i32>, reason: &str, dir: &Path) {
    // Release first, then say "stopped": while the store says running, no start can attach
    // the VM anew, so the release cannot hit a newer attachment.
    let ours = |vm: &Vm| vm.status.running && vm.status.runtime.as_ref().and_then(|r| r.pid) == Some(pid);
    if store.get::<Vm>(uid).map(|vm| ours(&vm)).unwrap_or(false) {
        release_resources(dir);
    }
    let _ = store.modify::<Vm, _>(uid, |vm| {
        if ours(vm) {
            vm.status.running = false;
            if let Some(rt) = vm.status.runtime.as_mut() {
                rt.pid = None;
            }
            vm.status.exit = Some(ExitStatus { code, reason: reason.to_string(), time: Some(chrono::Utc::now()) });
            vm.status.network = None;
        }
    });
}

/// The jailer's instructions for this VM's VMM (see `jail`).
fn jail_spec(
    boot: &BootConfig,
    cmd: &std::process::Command,
    uid: &str,
    j: crate::backend::BootJail,
    cg: &crate::cgroup::VmCgroup,
    alive_fd: i32,
) -> Result<crate::jail::JailSpec, String> {
    // The VMM binary by its absolute path: /usr is in every jail; a binary elsewhere is
    // bind-mounted at its own path.
    let program = cmd.get_program().to_string_lossy().into_owned();
    let program = if program.starts_with('/') {
        std::path::PathBuf::from(&program)
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(&program))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("{program} not found on PATH"))?
    };
    let program = std::fs::canonicalize(&program).map_err(|e| format!("{}: {e}", program.display()))?;
    let mut files = vec![(boot.kernel.clone(), crate::backend::JAIL_KERNEL.to_string())];
    if let Some(i) = &boot.initrd {
        files.push((i.clone(), crate::backend::JAIL_INITRD.to_string()));
    }
    if !program.starts_with("/usr/") {
        files.push((program.clone(), program.display().to_string()));
    }
    let mut devices = crate::jail::base_devices();
    if boot.accel == crate::backend::Accel::Kvm {
        devices.push(crate::jail::kvm_device());
    }
    let disks = boot
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| crate::jail::JailDisk {
            key: format!("disk{i}"),
            path: d.path.clone(),
            read_only: d.read_only,
            backing: if d.format == "qcow2" { ignite_disk::backing_file(&d.path).ok().flatten() } else { None },
        })
        .collect();
    let mut argv = vec![program.display().to_string()];
    argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    Ok(crate::jail::JailSpec {
        uid: j.uid,
        gid: j.gid,
        root: crate::jail::root_for(uid),
        netns: boot.netns.as_ref().map(|n| std::path::PathBuf::from(format!("/run/netns/{n}"))),
        cgroups: cg.dirs.clone(),
        files,
        devices,
        disks,
        argv,
        alive_fd: Some(alive_fd),
        vm: uid.to_string(),
        limits: None,
    })
}

/// What a VM holds only while it runs: its network and its sockets.
pub fn release_resources(dir: &Path) {
    crate::network::release(dir);
    // The jail's cgroup and root (a supervisor killed before it removed them).
    crate::cgroup::release(&dir.join(crate::cgroup::RECORD));
    if let Some(uid) = dir.file_name() {
        let _ = std::fs::remove_dir(crate::jail::root_for(&uid.to_string_lossy()));
    }
    for f in [ATTACH_SOCKET, "qmp.sock", crate::agent::AGENT_SOCKET, crate::agent::AGENT_VMM_SOCKET] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

fn console_pump(
    mut stdout: impl Read,
    mut log: RotatingLog,
    shared: &Arc<Shared>,
    boot: &Arc<BootConfig>,
    backend_name: &str,
) {
    let mut scanner = LineScanner::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let data = &buf[..n];
        if let Err(e) = log.write(data) {
            eprintln!("ignite-spawn: console log write failed: {e}");
        }
        if let Ok(mut clients) = shared.clients.lock() {
            // A slow or gone client is dropped, never allowed to block the console.
            clients.retain_mut(|c| {
                let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                c.write_all(data).is_ok()
            });
        }
        scanner.feed(data, |ev| {
            let (code, detail) = match ev {
                GuestEvent::PowerOff => (END_POWEROFF, String::new()),
                GuestEvent::Reboot => (END_REBOOT, String::new()),
                GuestEvent::Panic(d) => (END_PANIC, d),
                GuestEvent::InitError(d) => (END_INIT, d),
            };
            // A stop or kill in progress keeps its reason; the guest's own words refine "none".
            let cur = shared.end.load(Ordering::SeqCst);
            if cur == END_NONE || (cur >= END_POWEROFF && code >= END_PANIC) {
                shared.end.store(code, Ordering::SeqCst);
                if !detail.is_empty() {
                    if let Ok(mut d) = shared.detail.lock() {
                        *d = detail;
                    }
                }
            }
            if code == END_POWEROFF {
                // The guest halted: nothing will make the VMM exit by itself.
                if let Ok(b) = backend::by_name(backend_name) {
                    let _ = b.force_stop(boot);
                }
            }
        });
    }
}

fn attach_input(mut conn: UnixStream, shared: &Arc<Shared>) {
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(mut stdin) = shared.stdin.lock() else { return };
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&buf[..n]).and_then(|_| s.flush()).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Path of the supervisor binary: `$IGNITE_SPAWN`, else `ignite-spawn` beside the running
/// executable, else from PATH.
pub fn spawn_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("IGNITE_SPAWN") {
        return p.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("ignite-spawn");
        if beside.is_file() {
            return beside;
        }
    }
    "ignite-spawn".into()
}
