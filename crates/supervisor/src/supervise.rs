//! `ignite-spawn`: the one supervisor process per VM (Weave Ignite's ignite-spawn, without a
//! container). It detaches from the terminal, starts the VMM through its backend (the VMM
//! dies with it), attaches a guest resumed from a snapshot to its network while the VMM loads
//! it and gives it its own identity before anything sees it running, owns the serial console
//! (rotated log file + attach socket), records the real state in the store, turns SIGTERM
//! into a graceful guest shutdown and SIGINT into an immediate stop, and records how the VM
//! ended.
//!
//! Protocol with the process that started it: it writes the boot's last files (the
//! initramfs) while this process starts, then one line on its stdin, the go-ahead
//! (`ignite_runtime::host::GO_AHEAD`); the VMM is started only after it (stdin's end
//! without it: the start failed or was killed, and this process exits having started
//! nothing). Then one line on stdout, `ready <vmm-pid>` or `error: <message>`, then stdout
//! is not used again. Diagnostics go to stderr (`vm/<uid>/spawn.log`).

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ChildStdin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_api::{Ending, RuntimeStatus, Vm};
use ignite_store::Store;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::console::{GuestEvent, LineScanner, RotatingLog, DEFAULT_MAX_LOG_BYTES};
use ignite_runtime::boot::BootConfig;
use ignite_runtime::sys;
use ignite_runtime::vmdir::VmDir;

/// How long the end of a VM waits for the rest of its console to be read.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);
/// How long a resumed guest's agent may take to answer (within the 30 s `start` waits for
/// the readiness line).
const IDENTITY_WAIT: Duration = Duration::from_secs(20);

struct Shared {
    /// How the run is ending, as far as known (see [`Ending::refined_by`]).
    end: Mutex<Option<Ending>>,
    clients: Mutex<Vec<UnixStream>>,
    stdin: Mutex<Option<ChildStdin>>,
}

/// Runs the supervisor for VM `uid` under `root`; returns the process exit code.
pub fn run(root: &Path, uid: &str) -> i32 {
    let mut ready_out = std::io::stdout();
    let res = sys::detach_session().map_err(|e| format!("setsid: {e}")).and_then(|()| {
        let store = Store::open(root).map_err(|e| e.to_string())?;
        let boot = read_boot(&store, uid)?;
        let backend = ignite_vmm::backend(&boot.vmm, &boot.binaries).map_err(|e| e.to_string())?;
        supervise(&store, uid, &boot, backend, &mut ready_out, &mut read_go_ahead)
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(ready_out, "error: {e}");
            let _ = ready_out.flush();
            eprintln!("ignite-spawn: {e}");
            1
        }
    }
}

/// Waits for the go-ahead of the start that ran this process, on stdin.
fn read_go_ahead() -> Result<(), String> {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.as_bytes() == ignite_runtime::host::GO_AHEAD {
        Ok(())
    } else {
        Err("the start that ran this supervisor ended before the VM's boot files were ready".into())
    }
}

/// What `start` asked this supervisor to run.
pub fn read_boot(store: &Store, uid: &str) -> Result<BootConfig, String> {
    let dir = VmDir::of(store, uid);
    serde_json::from_slice(
        &std::fs::read(dir.boot_config()).map_err(|e| format!("cannot read {}: {e}", dir.boot_config().display()))?,
    )
    .map_err(|e| format!("invalid {}: {e}", dir.boot_config().display()))
}

/// The thread attaching a resumed VM's network (CNI ADD) while its VMM starts. Joined when
/// dropped too: no early return leaves it attaching a network that the failed start's
/// clean-up is releasing.
struct Attaching(Option<std::thread::JoinHandle<Result<ignite_net::Attachment, String>>>);

impl Attaching {
    fn join(mut self) -> Result<ignite_net::Attachment, String> {
        match self.0.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err("the thread attaching it panicked".into())),
            None => Err("its network was already attached".into()),
        }
    }
}

impl Drop for Attaching {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

/// Supervises VM `uid` on `backend` until it ends, and records how it ended: its VMM started
/// (jailed or not), "ready <pid>" written to `ready_out` once the store says running, the
/// console logged and served, TERM/INT turned into a graceful or an immediate stop. The VMM
/// is started once `go_ahead` returns (an error: it is not, and that is the error).
pub fn supervise(
    store: &Store,
    uid: &str,
    boot: &BootConfig,
    backend: std::sync::Arc<dyn ignite_vmm::Backend>,
    ready_out: &mut impl Write,
    go_ahead: &mut dyn FnMut() -> Result<(), String>,
) -> Result<i32, String> {
    let dir = VmDir::of(store, uid);
    let machine = &boot.machine;
    let vm_name = machine.name.clone();

    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| e.to_string())?;
    let log = RotatingLog::open(&dir.console_log(), DEFAULT_MAX_LOG_BYTES).map_err(|e| format!("console log: {e}"))?;
    let vmm_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.vmm_log())
        .map_err(|e| format!("vmm log: {e}"))?;
    let _ = std::fs::remove_file(dir.agent_socket());
    let attach_path = dir.attach_socket();
    let _ = std::fs::remove_file(&attach_path);
    let listener =
        UnixListener::bind(&attach_path).map_err(|e| format!("attach socket {}: {e}", attach_path.display()))?;

    let t0 = std::time::Instant::now();
    // A resumed guest's network: the namespace and tap now (the VMM needs them), CNI ADD
    // while the VMM starts and loads the snapshot (the guest is told its address after).
    let attaching = match &boot.network {
        Some(plan) => {
            let vm = store.get::<Vm>(uid).map_err(|e| e.to_string())?;
            let opts = ignite_runtime::network::prepare(&vm, boot.jail.map(|j| j.uid), plan)
                .map_err(|e| format!("cannot attach its network: {e}"))?;
            let (plan, dir) = (plan.clone(), dir.to_path_buf());
            Some(Attaching(Some(std::thread::spawn(move || ignite_runtime::network::complete(&dir, plan, &opts)))))
        }
        None => None,
    };
    let launched = go_ahead().and_then(|()| launch(uid, &dir, boot, backend.as_ref(), vmm_log));
    let Launched { mut instance, jail: jail_status, _alive } = launched?;
    eprintln!("ignite-spawn: timing launched_ms={}", t0.elapsed().as_millis());
    let cgroup = jail_status.is_some();
    let vmm_pid = instance.pid();
    let control = instance.control.clone();
    ignite_proc::fault::point("spawn.vmm-started");
    if let Some(guest) = instance.agent.clone() {
        if let Err(e) = crate::mux::start_mux(&dir, guest, crate::mux::DEAD_AFTER) {
            eprintln!("ignite-spawn: the guest agent's socket: {e}");
        }
    }
    // The console is read from the start: a guest that writes more than a pipe holds would
    // otherwise stall until it is.
    let (stdin, stdout) = instance.take_console().ok_or("no VMM console")?;
    let shared =
        Arc::new(Shared { end: Mutex::new(None), clients: Mutex::new(Vec::new()), stdin: Mutex::new(Some(stdin)) });
    // Console: VMM stdout -> log, attached clients, event scanner. It says when it has read
    // the console to its end.
    let (console_done, console_read) = std::sync::mpsc::channel::<()>();
    {
        let shared = shared.clone();
        let control = control.clone();
        std::thread::spawn(move || {
            console_pump(stdout, log, &shared, control.as_ref());
            let _ = console_done.send(());
        });
    }
    // A VMM whose guest never became this VM: stopped, its jail released, the start failed.
    let abandon = |instance: &mut ignite_vmm::Instance, why: String| {
        let _ = control.force_stop();
        let _ = instance.child.kill();
        let _ = instance.wait();
        let _ = console_read.recv_timeout(CONSOLE_DRAIN);
        if cgroup {
            release_jail(uid, &dir);
        }
        Err(why)
    };
    let mut dhcp = boot.dhcp.clone();
    let mut identity = boot.identity.clone();
    // A resumed guest's agent is reached while its network attaches (each takes tens of ms).
    let mut reaching =
        identity.as_ref().map(|plan| ignite_runtime::snapshot::reach_agent(&dir, &vm_name, plan, IDENTITY_WAIT));
    let mut give_up = |instance: &mut ignite_vmm::Instance, why: String| {
        if let Some(r) = reaching.take() {
            r.abandon(&dir);
        }
        abandon(instance, why)
    };
    // A resumed guest's network, attached but closed until the guest is given its identity.
    // Its address is recorded with its running state (one store write less on its way).
    let mut closed = None;
    let mut network_status = None;
    match attaching.map(Attaching::join) {
        Some(Ok(att)) => {
            network_status = Some(ignite_api::NetworkStatus {
                plugin: "cni".into(),
                ip_addresses: vec![std::net::IpAddr::V4(att.ip)],
            });
            if let Some(plan) = identity.as_mut() {
                plan.interface = Some(ignite_runtime::boot::interface_identity(&att));
            }
            dhcp = ignite_runtime::boot::dhcp_lease(&att, &vm_name);
            closed = Some(att);
            ignite_proc::fault::point("spawn.network-attached");
        }
        Some(Err(e)) => return give_up(&mut instance, format!("cannot attach its network: {e}")),
        None => {}
    }
    // A resumed guest is its snapshot's machine until it has its own identity:
    // given before the VM is reported running, and the VMM stopped if it cannot be.
    if let (Some(plan), Some(reaching)) = (&identity, reaching.take()) {
        if let Err(e) = ignite_runtime::snapshot::give_identity(&dir, &vm_name, plan, reaching, IDENTITY_WAIT) {
            return abandon(
                &mut instance,
                format!("its guest, resumed from a snapshot, could not be given its identity: {e}"),
            );
        }
        eprintln!("ignite-spawn: timing identity_given_ms={}", t0.elapsed().as_millis());
        ignite_runtime::snapshot::clear_restore(&dir);
        ignite_proc::fault::point("spawn.identity-given");
    }
    if let Some(att) = closed {
        if let Err(e) = ignite_runtime::network::open(&att) {
            return abandon(&mut instance, format!("cannot connect its network: {e}"));
        }
    }

    // Record the running state before reporting ready: `start` returns a VM that is running.
    let my_pid = std::process::id();
    let started = chrono::Utc::now();
    let accel = machine.accel.to_string();
    let bname = backend.name().to_string();
    store
        .modify::<Vm, _>(uid, |vm| {
            let runtime = RuntimeStatus {
                id: uid.to_string(),
                name: bname,
                pid: Some(my_pid),
                accel: Some(accel),
                jail: jail_status,
            };
            vm.status.record_running(runtime, started);
            if let Some(n) = network_status {
                vm.status.network = Some(n);
            }
        })
        .map_err(|e| e.to_string())?;
    let _ = writeln!(ready_out, "ready {vmm_pid}");
    let _ = ready_out.flush();
    eprintln!("ignite-spawn: VM {vm_name} ({uid}): {} pid {vmm_pid}", backend.name());

    serve_attach(listener, &shared);
    if let (Some(ns), Some((lease, server))) = (boot.netns.clone(), dhcp) {
        serve_dhcp(ns, lease, server);
    }
    handle_signals(signals, &shared, control.clone(), vmm_pid);

    let status = instance.wait().map_err(|e| format!("wait: {e}"))?;
    // The guest's last words (a panic, a power-off) may still be in the console pipe: how
    // the VM ended is decided once they are read (bounded: a process that inherited the
    // console could keep it open).
    let _ = console_read.recv_timeout(CONSOLE_DRAIN);
    let code = status.code();
    let ending = shared.end.lock().ok().and_then(|e| e.clone()).unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        match code {
            // The guest said nothing: the VMM's own account, when it gives one (whatever its
            // exit code: Firecracker may exit 0 after stopping a failed guest).
            Some(c) => backend.explain_exit(&dir).map_or(Ending::VmmExited(c), Ending::VmmFailed),
            None => Ending::VmmSignal(status.signal().unwrap_or(0)),
        }
    });
    let reason = ending.to_string();
    eprintln!("ignite-spawn: VM {vm_name} ({uid}) ended: {reason}");
    if cgroup {
        ignite_runtime::cgroup::release(&dir.cgroup_record());
    }
    let _ = std::fs::remove_dir(ignite_runtime::jail::root_for(uid));
    ignite_proc::fault::point("spawn.vmm-ended");
    finish(store, uid, my_pid, code, &ending, &dir);
    Ok(0)
}

/// Attach: each client sees console output and types into the console.
fn serve_attach(listener: UnixListener, shared: &Arc<Shared>) {
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

/// DHCP for guests that run a client: the same lease as the kernel's ip= argument.
fn serve_dhcp(ns: String, lease: ignite_net::dhcp::Lease, server: std::net::Ipv4Addr) {
    std::thread::spawn(move || {
        if let Err(e) = ignite_net::dhcp::serve(&ns, lease, server) {
            eprintln!("ignite-spawn: DHCP responder stopped: {e}");
        }
    });
}

/// Signals: TERM asks the guest to shut down, INT stops the VMM now (SIGKILL 3 s later).
fn handle_signals(
    mut signals: signal_hook::iterator::Signals,
    shared: &Arc<Shared>,
    control: Arc<dyn ignite_vmm::Control>,
    vmm_pid: u32,
) {
    let shared = shared.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            match sig {
                SIGTERM => {
                    shared.end_with(Ending::Stopped, |cur, _| cur.is_none());
                    if let Err(e) = control.request_shutdown() {
                        eprintln!("ignite-spawn: graceful shutdown request failed: {e}; stopping the VMM");
                        if control.force_stop().is_err() {
                            let _ = sys::kill(vmm_pid);
                        }
                    }
                }
                SIGINT => {
                    shared.end_with(Ending::Killed, |_, _| true);
                    if control.force_stop().is_err() {
                        let _ = sys::kill(vmm_pid);
                    }
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(3));
                        let _ = sys::kill(vmm_pid);
                    });
                }
                _ => {}
            }
        }
    });
}

/// A VMM started, and what its jail is.
struct Launched {
    instance: ignite_vmm::Instance,
    jail: Option<ignite_api::JailStatus>,
    /// The write end of the jailer's liveness pipe, held for the supervisor's life (the jailer
    /// sees a hang-up once the supervisor is gone).
    _alive: Option<std::os::fd::OwnedFd>,
}

/// Starts the VMM through its backend: jailed (its cgroup recorded here, everything else in
/// the jailer; see `jail`) or not.
fn launch(
    uid: &str,
    dir: &VmDir,
    boot: &BootConfig,
    backend: &dyn ignite_vmm::Backend,
    vmm_log: std::fs::File,
) -> Result<Launched, String> {
    let machine = &boot.machine;
    let Some(j) = boot.jail else {
        let mut launcher = crate::launch::Direct::new(vmm_log, boot.netns.clone());
        let instance = backend.launch(machine, &mut launcher).map_err(|e| e.to_string())?;
        return Ok(Launched { instance, jail: None, _alive: None });
    };
    let profile = backend.jail_profile(machine);
    let limits = ignite_runtime::cgroup::Limits {
        memory_max: (machine.memory_mib + profile.overhead_mib) << 20,
        cpus: machine.vcpus,
    };
    let cg = ignite_runtime::cgroup::plan_and_record(uid, &dir.cgroup_record())?;
    let jail = ignite_api::JailStatus {
        uid: j.uid,
        cgroups: cg.dirs.iter().map(|d| d.display().to_string()).collect(),
        memory_max: Some(limits.memory_max),
        cpu_max: limits.cpu_max(),
        seccomp: profile.seccomp,
    };
    // A backend that waits for its VMM in `launch` (Firecracker's API) fails there when the
    // jailer did: its reason, written to vmm.log during this launch, is the one to give.
    let logged = vmm_log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut launcher =
        crate::launch::Jailed::new(vmm_log, uid, j, boot.netns.clone(), cg, (limits.memory_max, limits.cpus), dir)?;
    let instance = backend.launch(machine, &mut launcher).map_err(|e| {
        // The cgroup the jailer made and the jail's root go now: no end will be recorded to
        // release them later.
        release_jail(uid, dir);
        match jail_error(&dir.vmm_log(), logged) {
            Some(why) => format!("cannot start the VMM in its jail: {why}"),
            None => e.to_string(),
        }
    })?;
    Ok(Launched { instance, jail: Some(jail), _alive: launcher.alive_writer() })
}

/// Removes the jail of a VMM that is gone before the VM ran (no end will be recorded to
/// release it): its cgroup, once the killed VMM has left it (bounded), and its root.
fn release_jail(uid: &str, dir: &VmDir) {
    let record = dir.cgroup_record();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        ignite_runtime::cgroup::release(&record);
        if !record.exists() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(ignite_runtime::jail::root_for(uid));
}

/// The last error the jailer wrote to `vmm.log` after its first `from` bytes (why it did not
/// exec the VMM).
fn jail_error(vmm_log: &Path, from: u64) -> Option<String> {
    let log = std::fs::read(vmm_log).ok()?;
    let from = usize::try_from(from).unwrap_or(usize::MAX).max(log.len().saturating_sub(16 * 1024)).min(log.len());
    let log = String::from_utf8_lossy(&log[from..]).into_owned();
    log.lines().rev().find_map(|l| l.strip_prefix("ignite-jail: error: ")).map(str::to_string)
}

/// Records that the VM ended (only if the status still names this supervisor).
pub fn finish(store: &Store, uid: &str, pid: u32, code: Option<i32>, ending: &Ending, dir: &Path) {
    // Release first, then say "stopped": while the store says running, no start can attach
    // the VM anew, so the release cannot hit a newer attachment.
    let ours = |vm: &Vm| vm.status.is_run_of(Some(pid));
    if store.get::<Vm>(uid).map(|vm| ours(&vm)).unwrap_or(false) {
        ignite_runtime::held::release_resources(dir);
    }
    let _ = store.modify::<Vm, _>(uid, |vm| vm.status.record_ended(Some(pid), code, ending, chrono::Utc::now()));
}

fn console_pump(mut stdout: impl Read, mut log: RotatingLog, shared: &Arc<Shared>, control: &dyn ignite_vmm::Control) {
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
            let ending = match ev {
                GuestEvent::PowerOff => Ending::PoweredOff,
                GuestEvent::Reboot => Ending::Rebooted,
                GuestEvent::Panic(d) => Ending::Panic(d),
                GuestEvent::InitError(d) => Ending::InitFailed(d),
            };
            let halted = ending == Ending::PoweredOff;
            // A stop or kill in progress keeps its reason; the guest's own words refine the rest.
            shared.end_with(ending, |cur, new| cur.is_none_or(|c| c.refined_by(new)));
            if halted {
                // The guest halted: nothing will make the VMM exit by itself.
                let _ = control.force_stop();
            }
        });
    }
}

impl Shared {
    /// Sets how the run ends to `ending` if `replace` says so of the current account.
    fn end_with(&self, ending: Ending, replace: impl FnOnce(Option<&Ending>, &Ending) -> bool) {
        if let Ok(mut cur) = self.end.lock() {
            if replace(cur.as_ref(), &ending) {
                *cur = Some(ending);
            }
        }
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
