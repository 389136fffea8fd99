//! `start`: everything between a stored VM and a running supervisor — the kernel and root
//! disk it boots, the accelerator, the per-VM initramfs (hostname, hosts, resolv.conf, ssh
//! key, copy-files: applied into the VM's own disk layer at boot), the boot configuration,
//! and the order of it all: what is checked before anything is allocated, what is allocated
//! in which order, what a failure releases. The host side (network, the `ignite-spawn`
//! process) is a [`Host`]'s.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignite_api::{Kernel, Vm};
use ignite_store::Store;

use ignite_vmm::{AccelChoice, AccelVerdict, Backend, DiskFormat, Drive, Machine, Nic};

use crate::boot::{BootConfig, BootJail};
use crate::config::LoadedConfig;
use crate::host::{Host, System};
use crate::lease::Lease;
use crate::recover::refresh_on;
use crate::start_error::prep;
pub use crate::start_error::StartError;
use crate::vmdir::VmDir;

/// The kernel file inside a kernel object's directory.
pub const VMLINUX: &str = "vmlinux";

#[derive(Debug, Clone)]
pub struct StartOptions {
    pub accel: AccelChoice,
    pub stop_grace: Duration,
    /// Preflight checks whose failures are only warnings (check names, Ignite's names such as
    /// `BinaryInPath`, or `all`).
    pub ignore_preflight: Vec<String>,
    /// The supervisor logs at debug level (`ignite start -d`).
    pub debug: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            accel: AccelChoice::Auto,
            stop_grace: Duration::from_secs(10),
            ignore_preflight: Vec::new(),
            debug: false,
        }
    }
}

/// A VM that is now running.
#[derive(Debug)]
pub struct Started {
    pub vm: Vm,
    pub accel: AccelVerdict,
    pub vmm_pid: u32,
}

/// The kernel file a VM boots.
pub fn kernel_for(store: &Store, vm: &Vm) -> Result<PathBuf, StartError> {
    let want = vm.spec.kernel.oci.as_ref().map(|r| r.normalized()).unwrap_or_default();
    let k = store
        .list::<Kernel>()?
        .into_iter()
        .find(|k| k.metadata.name == want || k.spec.oci.as_ref().map(|r| r.normalized()) == Some(want.clone()))
        .ok_or(StartError::KernelMissing { kernel: want })?;
    Ok(store.dir::<Kernel>(&k.uid()).join(VMLINUX))
}

/// How long a start waits for the supervisor of the VM's previous run, its end recorded, to
/// exit (it stops its VMM and joins its threads first), or for one not recorded yet to run
/// the VM or give up.
pub const LEAVING_WAIT: Duration = Duration::from_secs(10);

/// How long a removal or a stop waits for a start of the VM in progress in another process
/// (longer than any start waits for anything itself).
pub const START_WAIT: Duration = Duration::from_secs(180);

/// Why [`wait_start_lock`] ended without the lock.
#[derive(Debug)]
pub enum StartWaitError {
    /// The VM's directory is gone (the VM was removed).
    Gone,
    /// A start in another process did not finish within [`START_WAIT`].
    StillStarting,
    Lock(std::io::Error),
}

/// Takes the start lock of the VM in `dir`, waiting (up to [`START_WAIT`]) for a start in
/// progress in another process; `fault` is the fault point passed once it waits.
pub fn wait_start_lock(dir: &VmDir, fault: &str) -> Result<File, StartWaitError> {
    let f = match dir.open_start_lock() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StartWaitError::Gone),
        Err(e) => return Err(StartWaitError::Lock(e)),
    };
    let deadline = std::time::Instant::now() + START_WAIT;
    let mut waiting = false;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                if !waiting {
                    waiting = true;
                    ignite_proc::fault::point(fault);
                }
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StartWaitError::StillStarting),
            Err(std::fs::TryLockError::Error(e)) => return Err(StartWaitError::Lock(e)),
        }
    }
}

/// Whether a start of the VM in `dir` is in progress in another process: its start lock held,
/// or a supervisor on its way (its lease held while the VM `vm` is not recorded running: a
/// start killed after it spawned it, or a VM's end being recorded). Makes no file (a VM never
/// started has no start lock, and was never on its way); asks the lease under the start lock.
pub fn in_progress(dir: &VmDir, vm: &Vm) -> bool {
    let Ok(lock) = File::options().write(true).open(dir.start_lock()) else { return false };
    match lock.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
        Ok(()) => !vm.status.running && dir.supervisor_lock().exists() && crate::lease::supervisor_held(dir),
    }
}

/// The VM `uid` once no supervisor is on its way to running it or out (its lease held, the VM
/// not recorded running), waited for up to [`LEAVING_WAIT`], as a start waits for one. Called
/// under the VM's start lock (see `lease::supervisor_held`).
pub fn settled_on(host: &dyn Host, store: &Store, dir: &VmDir, uid: &str) -> Result<Vm, ignite_store::StoreError> {
    let mut vm = refresh_on(host, store, store.get::<Vm>(uid)?)?;
    let deadline = std::time::Instant::now() + LEAVING_WAIT;
    while !vm.status.running && crate::lease::supervisor_held(dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        vm = refresh_on(host, store, store.get::<Vm>(uid)?)?;
    }
    Ok(vm)
}

/// Starts `vm` and returns once its supervisor runs the VMM.
pub fn start(store: &Store, config: &LoadedConfig, vm: Vm, opts: &StartOptions) -> Result<Started, StartError> {
    start_on(&System, store, config, vm, opts)
}

/// [`start`] through `host`.
pub fn start_on(
    host: &dyn Host,
    store: &Store,
    config: &LoadedConfig,
    vm: Vm,
    opts: &StartOptions,
) -> Result<Started, StartError> {
    let uid = vm.uid();
    let name = vm.metadata.name.clone();
    let dir = VmDir::of(store, &uid);
    // One start at a time per VM; the second finds it running.
    let lock = dir.open_start_lock().map_err(prep(&name, format!("cannot open {}", dir.start_lock().display())))?;
    lock.lock().map_err(prep(&name, "cannot lock the VM"))?;
    let vm = refresh_on(host, store, store.get::<Vm>(&uid)?)?;
    if vm.status.running {
        return Err(StartError::AlreadyRunning { name });
    }
    // No supervisor may live while this start allocates. One that has recorded its VM's end
    // (the guest powered off or rebooted, the VMM died) still holds the lease while it stops
    // its VMM and exits; one whose start was killed before it reported ready may still be on
    // its way to running, or on its way out (killed before its go-ahead). All are waited for,
    // as long as the VM is not recorded running.
    let deadline = std::time::Instant::now() + LEAVING_WAIT;
    let supervisor_lease = loop {
        match crate::lease::supervisor(&dir).map_err(prep(&name, "cannot take the VM's supervisor lease"))? {
            Some(l) => break l,
            None if std::time::Instant::now() >= deadline || store.get::<Vm>(&uid)?.status.running => {
                return Err(StartError::AlreadyRunning { name })
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    // Nothing runs for this VM now: what a killed start or a crash left allocated is released
    // before anything is allocated anew.
    host.release_network(&dir);
    let Checked { plugin, jailed, backend_name, backend, binaries, kernel, root, want, verdict, extra_ifs, restore } =
        check(host, store, config, &vm, &dir, opts)?;
    // The VMM's own uid, reserved host-wide for its life, before anything it will own exists.
    let uid_lease = if jailed {
        let j = &config.spec.jail;
        Some(
            crate::lease::vm_uid(&uid, (j.uid_base, j.uid_count))
                .map_err(|m| StartError::Jail { name: name.clone(), message: m })?,
        )
    } else {
        None
    };
    let jail_uid = uid_lease.as_ref().map(|(_, u)| *u);
    // Host ports are reserved host-wide (other state roots included) for the VM's life.
    let port_leases = crate::lease::host_ports(store.root(), &vm)
        .map_err(|m| StartError::Network { name: name.clone(), message: m })?;
    // Network: attached before a boot, so that the guest gets its address on the kernel
    // command line. A resumed guest is told its address once it runs: its supervisor attaches
    // it (planned and recorded here) while the VMM loads the snapshot.
    let mut vm = vm;
    let (attachment, extra_nics, planned) = match plugin.as_str() {
        "cni" if restore.is_some() && extra_ifs.is_empty() => {
            (None, Vec::new(), Some(host.plan_network(store, &dir, &vm, jail_uid)?))
        }
        "cni" => {
            let (att, extra) = host.attach_network(store, &dir, &vm, jail_uid, &extra_ifs)?;
            (Some(att), extra, None)
        }
        "none" => (None, Vec::new(), None),
        other => {
            return Err(StartError::Network {
                name,
                message: format!("unknown network plugin {other:?} (use cni or none)"),
            })
        }
    };
    let mut leases = vec![supervisor_lease];
    leases.extend(port_leases);
    leases.extend(uid_lease.map(|(l, _)| l));
    // From here on, a failure releases the network again.
    let nets = (attachment.as_ref(), extra_nics, planned);
    let jail = jail_uid.map(|u| BootJail { uid: u, gid: u });
    let target = (backend.as_ref(), backend_name.as_str(), &binaries, &verdict);
    let tcg_cache = config.spec.tcg_cache.map(|s| s.mib());
    let boot = (kernel.as_path(), &root, want, restore.as_ref(), tcg_cache);
    let res = boot_and_spawn(host, store, &mut vm, &dir, boot, target, nets, opts, &leases, jail);
    if res.is_err() {
        host.release_network(&dir);
        let _ = store.modify::<Vm, _>(&uid, |v| {
            if !v.status.running {
                v.status.network = None;
            }
        });
    }
    let vmm_pid = res?;
    drop(lock);
    let vm = store.get::<Vm>(&uid)?;
    Ok(Started { vm, accel: verdict, vmm_pid })
}

/// What a start found before it allocates anything.
struct Checked {
    plugin: String,
    jailed: bool,
    backend_name: String,
    backend: std::sync::Arc<dyn Backend>,
    /// Where its binary is (recorded for the supervisor).
    binaries: ignite_vmm::Settings,
    kernel: PathBuf,
    root: crate::rootdisk::Root,
    want: u64,
    verdict: AccelVerdict,
    extra_ifs: Vec<String>,
    /// The snapshot it resumes instead of booting (a clone's first start).
    restore: Option<crate::snapshot::Restore>,
}

/// Everything a start checks before it allocates anything: the backend and its host, the
/// preflight checks, the jail, the kernel, the root disk and its base, memory, the accelerator
/// and the network plugin's extra interfaces. A failure here leaves nothing to release.
fn check(
    host: &dyn Host,
    store: &Store,
    config: &LoadedConfig,
    vm: &Vm,
    dir: &VmDir,
    opts: &StartOptions,
) -> Result<Checked, StartError> {
    let name = vm.metadata.name.clone();
    let plugin = crate::network::plugin_for(vm, config);
    let backend_name = crate::boot::backend_name(vm, &config.spec);
    let binaries = crate::boot::settings(&config.spec);
    let backend = host.backend(&backend_name, &binaries)?;
    let caps = backend.capabilities();
    // The jail: the VM's choice, else the Configuration's where the backend runs in it. A
    // backend that does not (yet) is refused when asked for explicitly, and said so when not.
    let jailed = match vm.spec.jail {
        Some(true) if !caps.jail => {
            return Err(StartError::Jail {
                name,
                message: format!("the {backend_name} backend does not run in ignite's jail yet"),
            })
        }
        Some(j) => j,
        None if config.spec.jail.enabled && !caps.jail => {
            tracing::warn!(
                "VM {name}: the {backend_name} backend does not run in ignite's jail yet: its VMM runs unconfined by it (with its own seccomp filters); --jail=false says so explicitly"
            );
            false
        }
        None => config.spec.jail.enabled,
    };
    let mut failed = Vec::new();
    for (c, ignite_name) in host.preflight(&plugin, jailed, backend.as_ref()) {
        if c.level != crate::preflight::Level::Error {
            continue;
        }
        let ignored = opts.ignore_preflight.iter().any(|i| i == "all" || i == c.name || i == ignite_name);
        if ignored {
            tracing::warn!("preflight check {} ({ignite_name}) failed, ignored: {}", c.name, c.detail);
        } else {
            failed.push((c.name.to_string(), c.detail));
        }
    }
    if !failed.is_empty() {
        return Err(StartError::Preflight(failed));
    }
    backend.binary()?;
    let restore = crate::snapshot::pending_restore(store, dir)
        .map_err(|message| StartError::Machine { name: name.clone(), message })?;
    if let Some(r) = restore.as_ref().filter(|r| r.vmm != backend_name) {
        return Err(StartError::Machine {
            name,
            message: format!(
                "its snapshot {:?} was saved by {} and it would start on {backend_name}: a saved machine resumes on the VMM that saved it",
                r.snapshot, r.vmm
            ),
        });
    }
    let kernel = match &restore {
        Some(r) => r.dir.join(crate::snapshot::KERNEL),
        None => kernel_for(store, vm)?,
    };
    let root = match crate::rootdisk::read(dir) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(StartError::DiskMissing { name, path: dir.root_disk() }),
        Err(e) => return Err(prep(&name, "cannot read its root disk")(e)),
    };
    match &root.base {
        Some(base) if !base.is_file() => return Err(StartError::BaseMissing { name, path: base.clone() }),
        _ => {}
    }
    if !caps.root_disks.contains(&root.layout) {
        return Err(StartError::Machine {
            name,
            message: format!(
                "its root disk is {}, which the {backend_name} backend cannot boot: create the VM again for this backend",
                crate::rootdisk::name(root.layout)
            ),
        });
    }
    let want = vm.spec.memory().mib();
    if let Some(have) = host.memory_mib() {
        if want > have {
            return Err(StartError::Memory { name, want, have });
        }
    }
    let verdict = match &restore {
        // The saved state is of one accelerator's machine.
        Some(r) => AccelVerdict { accel: r.machine.accel, reason: crate::snapshot::accel_reason(r) },
        None => backend
            .choose_accel(store.root(), opts.accel, &kernel, &|p| {
                crate::provision::probe_initramfs(p).map_err(|e| e.to_string())
            })
            .map_err(StartError::Accel)?,
    };
    let extra_ifs =
        crate::network::extra_interfaces(vm).map_err(|m| StartError::Network { name: name.clone(), message: m })?;
    if !extra_ifs.is_empty() && plugin != "cni" {
        return Err(StartError::Network {
            name,
            message: "extra interfaces (ignite.weave.works/interface/...) need the cni network plugin".into(),
        });
    }
    Ok(Checked { plugin, jailed, backend_name, backend, binaries, kernel, root, want, verdict, extra_ifs, restore })
}

#[allow(clippy::too_many_arguments)]
fn boot_and_spawn(
    host: &dyn Host,
    store: &Store,
    vm: &mut Vm,
    dir: &VmDir,
    (kernel, root, want, restore, tcg_cache_mib): (
        &Path,
        &crate::rootdisk::Root,
        u64,
        Option<&crate::snapshot::Restore>,
        Option<u64>,
    ),
    (backend, backend_name, binaries, verdict): (&dyn Backend, &str, &ignite_vmm::Settings, &AccelVerdict),
    (att, extra_nics, planned): (Option<&ignite_net::Attachment>, Vec<Nic>, Option<ignite_net::Attachment>),
    opts: &StartOptions,
    leases: &[Lease],
    jail: Option<BootJail>,
) -> Result<u32, StartError> {
    let uid = vm.uid();
    let name = vm.metadata.name.clone();
    if let Some(a) = att {
        let status = ignite_api::NetworkStatus { plugin: "cni".into(), ip_addresses: vec![std::net::IpAddr::V4(a.ip)] };
        vm.status.network = Some(status.clone());
        store.modify::<Vm, _>(&uid, |v| v.status.network = Some(status))?;
    }
    let initrd = dir.initrd();
    let (agent, why_not) = if vm.spec.agent == Some(false) {
        (None, "it was created with --agent=false".to_string())
    } else {
        match crate::agent::find_binary(store.root()) {
            Ok(p) => (Some(p), String::new()),
            Err(e) => {
                tracing::warn!("VM {name} starts without its guest agent (exec and cp need --ssh): {e}");
                (None, e)
            }
        }
    };
    // Why this boot has no agent, for `ignite exec` to say.
    let why_file = dir.no_agent_reason();
    if agent.is_some() {
        let _ = std::fs::remove_file(&why_file);
    } else {
        ignite_store::write_atomic(&why_file, why_not.as_bytes())?;
    }
    let channel = backend.capabilities().agent;
    let (with_agent, kernel, cmdline) = match restore {
        // A resume: the guest in the saved memory booted with the snapshot's kernel, initramfs
        // and command line; its VMM loads them again (they are overwritten by the state).
        Some(r) => {
            let kernel_copy = dir.join(crate::snapshot::KERNEL);
            crate::snapshot::link_or_copy(&r.dir.join(crate::snapshot::INITRD), &initrd)
                .and_then(|_| crate::snapshot::link_or_copy(kernel, &kernel_copy))
                .map_err(|m| StartError::Machine { name: name.clone(), message: m })?;
            (r.machine.agent_port.is_some(), kernel_copy, r.machine.cmdline.clone())
        }
        None => {
            let with_agent = agent.is_some();
            let mut cmdline = vm.spec.kernel.cmd_line.clone();
            cmdline.push_str(" rdinit=/init");
            cmdline.push_str(&backend.guest_args(store.root(), verdict.accel, kernel));
            if let Some(a) = att {
                cmdline.push(' ');
                cmdline.push_str(&a.kernel_ip_arg(&name));
            }
            (with_agent, kernel.to_path_buf(), cmdline)
        }
    };
    let mut nics = att.map(|a| vec![Nic { tap: a.tap.clone(), mac: a.mac.clone() }]).unwrap_or_default();
    if let (Some(p), Some(r)) = (&planned, restore) {
        // Its MAC is not known yet: the snapshot's, which its saved state gives the NIC anyway
        // (the guest is given its own with its identity).
        let mac = r.machine.nics.first().map(|n| n.mac.clone()).unwrap_or_default();
        nics.push(Nic { tap: p.tap.clone(), mac });
    }
    nics.extend(extra_nics);
    let mut drives = crate::rootdisk::drives(root);
    for v in &vm.spec.storage.volumes {
        let path = v.block_device.as_ref().map(|b| PathBuf::from(&b.path)).unwrap_or_default();
        if !path.exists() {
            return Err(StartError::VolumeMissing { name: name.clone(), volume: v.name.clone(), path });
        }
        drives.push(Drive { path, format: DiskFormat::Raw, read_only: false, backing: None });
    }
    let machine = Machine {
        uid: uid.clone(),
        name: name.clone(),
        id_prefix: if vm.status.id_prefix.is_empty() { "ignite".into() } else { vm.status.id_prefix.clone() },
        vcpus: vm.spec.cpus,
        memory_mib: want,
        kernel,
        initrd: Some(initrd.clone()),
        cmdline,
        drives,
        nics,
        agent_port: with_agent.then(|| ignite_agent::proto::PORT_NAME.to_string()),
        accel: verdict.accel,
        debug: opts.debug,
        run_dir: dir.to_path_buf(),
        incoming: restore.map(|r| r.dir.join(crate::snapshot::STATE)),
        tcg_cache_mib,
    };
    if let Some(r) = restore {
        crate::snapshot::check_same_devices(&r.machine, &machine)
            .map_err(|message| StartError::Machine { name: name.clone(), message })?;
    }
    // Checked here too, so that a machine the backend cannot run fails the start with the
    // backend's reason before the supervisor exists.
    machine
        .validate(&backend.capabilities())
        .map_err(|e| StartError::Machine { name: name.clone(), message: e.to_string() })?;
    let boot = BootConfig {
        vmm: backend_name.to_string(),
        binaries: binaries.clone(),
        machine,
        stop_grace_secs: opts.stop_grace.as_secs(),
        netns: att.or(planned.as_ref()).map(|a| a.netns.clone()),
        dhcp: att.and_then(|a| crate::boot::dhcp_lease(a, &name)),
        jail,
        identity: restore.map(|r| identity_plan(store, vm, r, att)).transpose()?,
        network: planned,
    };
    let boot_json = serde_json::to_vec_pretty(&boot).map_err(prep(&name, "cannot encode the boot configuration"))?;
    // Made again at every start and read only while this start's supervisor runs (by it, and
    // by a snapshot of the running VM): not synced (two fsyncs, ~0.4 ms of every start).
    ignite_store::write_atomic_unsynced(&dir.boot_config(), &boot_json)?;
    ignite_proc::fault::point("start.before-spawn");
    // A boot's initramfs (~3 ms: busybox and the agent copied in) is written while the
    // supervisor starts; it waits for it before it starts the VMM.
    let mut agent = agent.map(|a| (a, channel));
    let vm: &Vm = vm;
    let mut prepare = || match restore {
        Some(_) => Ok(()),
        None => crate::provision::vm_initramfs(store, vm, &initrd, root.layout, agent.take())
            .map_err(prep(&name, "cannot build the VM's initramfs")),
    };
    host.spawn_supervisor(store.root(), dir, &uid, &name, leases, &mut prepare)
}

/// The identity a resumed guest is given: a clone's own (new SSH host keys of the types its
/// snapshot's guest had, its own `--ssh` key), or its own VM's.
fn identity_plan(
    store: &Store,
    vm: &Vm,
    r: &crate::snapshot::Restore,
    att: Option<&ignite_net::Attachment>,
) -> Result<crate::boot::IdentityPlan, StartError> {
    let name = &vm.metadata.name;
    let mut plan = crate::boot::IdentityPlan::new(name, att, r.new_machine);
    if r.new_machine {
        plan.ssh_host_keys = r.ssh_host_keys.clone();
        plan.authorized_keys =
            crate::provision::ensure_ssh_key(store, vm).map_err(prep(name, "cannot make the VM's SSH key"))?;
    }
    Ok(plan)
}
