//! [`Host`]: what `start` and `stop` do outside the store — choosing the backend, the
//! preflight checks, the VM's network, the supervisor process and its signals. Start and stop
//! decide; a `Host` acts. [`System`] is this machine; the orchestration tests
//! (`tests/orchestration.rs`) script one, so that those decisions (what is released on which
//! failure, when a stop escalates) are tested without a VM, next to the real-VM tests.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ignite_api::Vm;
use ignite_store::Store;
use ignite_vmm::{Backend, Nic, VmmError};

use crate::lease::Lease;
use crate::preflight::Check;
use crate::start_error::{prep, StartError};
use crate::vmdir::VmDir;

/// The line on a supervisor's stdin that lets it start the VMM (see [`Host::spawn_supervisor`]).
pub const GO_AHEAD: &[u8] = b"boot\n";

/// How long a start waits for a VM's extra interfaces to appear in its network namespace.
const EXTRA_INTERFACE_WAIT: Duration = Duration::from_secs(120);

/// What `stop` and `kill` send a supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM: shut the guest down gracefully.
    Terminate,
    /// SIGINT: stop the VMM now, and record it.
    Interrupt,
    /// SIGKILL: the supervisor is wedged.
    Kill,
}

/// The host side of start and stop.
pub trait Host: Sync {
    /// The backend called `name`.
    fn backend(&self, name: &str, binaries: &ignite_vmm::Settings) -> Result<Arc<dyn Backend>, VmmError>;
    /// The preflight checks of a VM on `plugin`, jailed or not, with their Weave Ignite names.
    fn preflight(&self, plugin: &str, jailed: bool, backend: &dyn Backend) -> Vec<(Check, &'static str)>;
    /// Host memory, MiB.
    fn memory_mib(&self) -> Option<u64>;
    /// Attaches the VM to its CNI network (recorded in `dir` before anything is allocated) and
    /// connects its extra interfaces; on failure, what it allocated is released again.
    fn attach_network(
        &self,
        store: &Store,
        dir: &VmDir,
        vm: &Vm,
        jail_uid: Option<u32>,
        extra_ifs: &[String],
    ) -> Result<(ignite_net::Attachment, Vec<Nic>), StartError>;
    /// Plans the VM's CNI attachment and records it in `dir`, allocating nothing: the
    /// supervisor of a resumed VM attaches it while its VMM loads the snapshot.
    fn plan_network(
        &self,
        store: &Store,
        dir: &VmDir,
        vm: &Vm,
        jail_uid: Option<u32>,
    ) -> Result<ignite_net::Attachment, StartError>;
    /// Releases the network recorded in `dir`, if any.
    fn release_network(&self, dir: &VmDir);
    /// Runs the VM's supervisor (`ignite-spawn`), handing it `leases`; runs `prepare` (the
    /// boot's files that only its VMM reads: the initramfs) while the supervisor starts, which
    /// waits for it before it starts the VMM; then waits for its readiness line and returns
    /// the pid it gives. When `prepare` fails, the supervisor is stopped before it started
    /// anything, and that error is returned.
    fn spawn_supervisor(
        &self,
        root: &Path,
        dir: &VmDir,
        uid: &str,
        name: &str,
        leases: &[Lease],
        prepare: &mut dyn FnMut() -> Result<(), StartError>,
    ) -> Result<u32, StartError>;
    /// Whether `pid` is the live supervisor of VM `uid`.
    fn supervisor_alive(&self, pid: u32, uid: &str) -> bool;
    /// Signals a supervisor.
    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()>;
}

/// This machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct System;

impl Host for System {
    fn backend(&self, name: &str, binaries: &ignite_vmm::Settings) -> Result<Arc<dyn Backend>, VmmError> {
        ignite_vmm::backend(name, binaries)
    }

    fn preflight(&self, plugin: &str, jailed: bool, backend: &dyn Backend) -> Vec<(Check, &'static str)> {
        crate::preflight::preflight(plugin, jailed, backend)
    }

    fn memory_mib(&self) -> Option<u64> {
        crate::sys::host_memory_mib()
    }

    fn attach_network(
        &self,
        store: &Store,
        dir: &VmDir,
        vm: &Vm,
        jail_uid: Option<u32>,
        extra_ifs: &[String],
    ) -> Result<(ignite_net::Attachment, Vec<Nic>), StartError> {
        attach_cni(store, dir, vm, jail_uid, extra_ifs)
    }

    fn plan_network(
        &self,
        store: &Store,
        dir: &VmDir,
        vm: &Vm,
        jail_uid: Option<u32>,
    ) -> Result<ignite_net::Attachment, StartError> {
        plan_cni(store, dir, vm, jail_uid).map(|(plan, _)| plan)
    }

    fn release_network(&self, dir: &VmDir) {
        crate::network::release(dir)
    }

    fn spawn_supervisor(
        &self,
        root: &Path,
        dir: &VmDir,
        uid: &str,
        name: &str,
        leases: &[Lease],
        prepare: &mut dyn FnMut() -> Result<(), StartError>,
    ) -> Result<u32, StartError> {
        let log_path = dir.spawn_log();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(prep(name, format!("cannot open {}", log_path.display())))?;
        let mut cmd = Command::new(spawn_binary());
        // Known by this name whatever its file is called (`IGNITE_SPAWN` may name a copy under
        // another): liveness checks look for it (`sys::is_supervisor_alive`), and so does the
        // supervisor's own process name, which it sets itself.
        std::os::unix::process::CommandExt::arg0(&mut cmd, crate::sys::SUPERVISOR_NAME);
        cmd.arg("--root").arg(root);
        let fds: Vec<i32> = leases.iter().map(crate::lease::Lease::fd).collect();
        for fd in &fds {
            cmd.arg("--hold-fd").arg(fd.to_string());
        }
        crate::sys::inherit_fds(&mut cmd, fds);
        let mut child = cmd
            .arg(uid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(prep(name, "cannot run ignite-spawn (install it beside ignite, or set IGNITE_SPAWN)"))?;
        // The go-ahead: one line on the supervisor's stdin once the boot's files are whole. Its
        // end without that line (an error here, this process killed) makes it exit before it
        // starts anything.
        let go_ahead = child.stdin.take();
        let out = child
            .stdout
            .take()
            .ok_or_else(|| StartError::Supervisor { name: name.to_string(), message: "no readiness pipe".into() })?;
        ignite_proc::fault::point("start.supervisor-waiting");
        if let Err(e) = prepare() {
            drop(go_ahead);
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        if let Some(mut go) = go_ahead {
            // A supervisor that failed already has closed its end: its readiness line says why.
            let _ = go.write_all(GO_AHEAD);
        }
        ignite_proc::fault::point("start.supervisor-spawned");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let line = line.trim();
        if let Some(pid) = line.strip_prefix("ready ") {
            return pid.parse().map_err(|_| StartError::Supervisor {
                name: name.into(),
                message: format!("bad readiness line {line:?}"),
            });
        }
        let _ = child.kill();
        let _ = child.wait();
        let message = match line.strip_prefix("error: ") {
            Some(m) => m.to_string(),
            None => format!("it exited without reporting (see {})", log_path.display()),
        };
        Err(StartError::Supervisor { name: name.into(), message })
    }

    fn supervisor_alive(&self, pid: u32, uid: &str) -> bool {
        crate::sys::is_supervisor_alive(pid, uid)
    }

    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()> {
        match sig {
            Sig::Terminate => crate::sys::terminate(pid),
            Sig::Interrupt => crate::sys::interrupt(pid),
            Sig::Kill => crate::sys::kill(pid),
        }
    }
}

/// The VM's CNI network, recorded before anything is allocated (a kill at any later step
/// leaves a record that the next start, stop, rm or recovery releases), and its extra
/// interfaces. On failure, what was allocated is released again.
fn attach_cni(
    store: &Store,
    dir: &VmDir,
    vm: &Vm,
    jail_uid: Option<u32>,
    extra_ifs: &[String],
) -> Result<(ignite_net::Attachment, Vec<Nic>), StartError> {
    let name = vm.metadata.name.clone();
    let mut extra_nics = Vec::new();
    let t = std::time::Instant::now();
    let (plan, opts) = plan_cni(store, dir, vm, jail_uid)?;
    let att = match ignite_net::attach_planned(plan, &opts) {
        Ok(a) => a,
        Err(e) => {
            crate::network::release(dir);
            return Err(StartError::Network { name: name.clone(), message: ignite_net::error_chain(&e) });
        }
    };
    tracing::debug!(
        "network of VM {name}: {} in {} after {:.1} ms",
        att.ip,
        att.netns,
        t.elapsed().as_secs_f64() * 1000.0
    );
    if let Err(e) = crate::network::save(dir, &att) {
        crate::network::release(dir);
        return Err(e.into());
    }
    ignite_proc::fault::point("start.network-attached");
    // Weave Ignite's extra interfaces: created in the VM's namespace by someone else
    // once it exists; each becomes the guest's eth1, eth2, ... (sorted by name).
    for (i, ifname) in extra_ifs.iter().enumerate() {
        let connected = ignite_net::wait_for_interface(&att.netns, ifname, EXTRA_INTERFACE_WAIT)
            .and_then(|_| ignite_net::redirect_extra(&att.netns, ifname, &format!("tap{}", i + 1), jail_uid));
        match connected {
            Ok(mac) => extra_nics.push(Nic { tap: format!("tap{}", i + 1), mac }),
            Err(e) => {
                crate::network::release(dir);
                return Err(StartError::Network { name: name.clone(), message: ignite_net::error_chain(&e) });
            }
        }
    }
    Ok((att, extra_nics))
}

/// The VM's CNI attachment as planned, and how to attach it; recorded in `dir` before
/// anything is allocated: a kill at any later step leaves a record that the next start, stop,
/// rm or recovery releases.
fn plan_cni(
    store: &Store,
    dir: &VmDir,
    vm: &Vm,
    jail_uid: Option<u32>,
) -> Result<(ignite_net::Attachment, ignite_net::AttachOptions), StartError> {
    let net_err = |message: String| StartError::Network { name: vm.metadata.name.clone(), message };
    let opts = crate::network::options_for_start(vm, jail_uid).map_err(net_err)?;
    crate::network::check_ports(store, vm).map_err(net_err)?;
    let plan = ignite_net::plan(&vm.uid(), &opts).map_err(|e| net_err(ignite_net::error_chain(&e)))?;
    crate::network::save(dir, &plan)?;
    ignite_proc::fault::point("start.network-planned");
    Ok((plan, opts))
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
