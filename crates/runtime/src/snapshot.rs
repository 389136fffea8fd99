//! Snapshots and clones.
//!
//! Owns: a snapshot's directory (`snapshot/<uid>/`, a store object: it appears whole or not at
//! all, and is removed whole): [`STATE`] (the VMM's saved machine state: devices and memory,
//! and the other files its backend saves with it, `Backend::saved_files`), a point-in-time
//! copy of the VM's own root-disk files (`rootdisk::own_files`: QEMU's `disk.qcow2`,
//! Firecracker's sparse writable layer and its record, on the image's shared base), and what
//! a resume needs of the boot it was taken from ([`KERNEL`], [`INITRD`], [`MACHINE`]);
//! taking one ([`create`]: the guest is paused from the disk copy to the end of the state
//! write, and resumed whatever happens; a process killed while the guest is paused leaves
//! [`PAUSE_LOCK`] unlocked, and the next look at the VM resumes it, [`resume_if_abandoned`]);
//! a clone's directory ([`create_clone`]: its own copy of the disk, and [`RESTORE_FROM`], which
//! makes its next start resume the snapshot instead of booting, [`pending_restore`]); and the
//! identity a resumed guest is given by its supervisor before the start reports it running
//! ([`crate::boot::IdentityPlan`]; [`reach_agent`], while the network attaches, then
//! [`give_identity`]: hostname, MAC, address, machine-id, entropy, wall clock).
//!
//! A snapshot that a clone not yet started names is in use: [`remove`] refuses it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ignite_api::{ObjectMeta, Size, Snapshot, SnapshotSpec, Vm};
use ignite_store::{Store, StoreError};
use ignite_vmm::{Accel, Backend, Machine};

use crate::boot::BootConfig;
use crate::vmdir::VmDir;

/// The saved machine state in a snapshot's directory.
pub const STATE: &str = "state";
/// The machine the state was saved from (a resume must have the same devices).
pub const MACHINE: &str = "machine.json";
/// The kernel the saved guest runs (a copy: the kernel object may go).
pub const KERNEL: &str = "vmlinux";
/// The initramfs the VMM loaded when the saved guest booted.
pub const INITRD: &str = "initrd.cpio";
/// In a VM's directory: the snapshot UID its next start resumes.
pub const RESTORE_FROM: &str = "restore-from";
/// In a VM's directory: locked by a snapshot being taken of it (the guest may be paused).
pub const PAUSE_LOCK: &str = "snapshot.lock";

/// Snapshot failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("VM {name:?} is not running: a snapshot is taken of a running VM")]
    NotRunning { name: String },
    #[error("VM {name:?} is running: stop it first")]
    Running { name: String },
    #[error("VM {name:?}: {message}")]
    Unsupported { name: String, message: String },
    #[error("a snapshot of VM {name:?} is being taken already")]
    Busy { name: String },
    #[error("snapshot {name:?} is in use by VM {vm:?}, which has not started from it yet: remove that VM first")]
    InUse { name: String, vm: String },
    #[error("cannot take a snapshot of VM {name:?}: {message}")]
    Failed { name: String, message: String },
    #[error("cannot clone snapshot {name:?}: {message}")]
    Clone { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// In a VM's directory: where a snapshot of it is made before it appears in the store (the
/// store's lock is taken for that step only, not while the guest is paused); owned by the
/// holder of [`PAUSE_LOCK`], and removed by the next one when a taker was killed.
const STAGING: &str = ".snapshot";
/// How long a snapshot waits for the running guest's agent to answer.
const AGENT_WAIT: Duration = Duration::from_secs(30);

/// Takes a snapshot of the running VM `vm`, named `name` (default `<vm>-<time>`).
pub fn create(store: &Store, vm: &Vm, name: Option<&str>) -> Result<Snapshot, SnapshotError> {
    let vm_name = vm.metadata.name.clone();
    let name = match name {
        Some(n) => n.to_string(),
        None => format!("{vm_name}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")),
    };
    ignite_api::names::check_dns1123(&name)
        .map_err(|m| SnapshotError::Invalid(format!("snapshot name {name:?}: {m}")))?;
    let (vm, dir, boot, backend) = snapshottable(store, vm)?;
    // Refused before the guest is paused for nothing (and checked again as it appears).
    if let Some(taken) = store.list::<Snapshot>()?.into_iter().find(|s| s.metadata.name == name) {
        return Err(StoreError::NameTaken { kind: Snapshot::KIND, name, uid: taken.uid() }.into());
    }
    let fail = |message: String| SnapshotError::Failed { name: vm_name.clone(), message };
    let _pause = PauseLock::take(&dir, &vm_name)?;
    // Asked of the running guest before it is paused: its clones get new keys of these types.
    let ssh_host_keys = crate::clone_ssh::host_key_files(&dir, &vm_name, AGENT_WAIT).map_err(fail)?;
    // The copy of the disk references the image's base: it must not be collected meanwhile.
    let _gc = crate::gc::hold(store).map_err(|e| fail(e.to_string()))?;
    let staging = dir.join(STAGING);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| fail(format!("{}: {e}", staging.display())))?;
    let made = stage(&dir, &staging, &boot, backend.as_ref()).map_err(fail).and_then(|staged| {
        let spec = SnapshotSpec {
            vm: vm.uid(),
            vm_name: vm_name.clone(),
            vm_spec: vm.spec.clone(),
            vm_annotations: vm.metadata.annotations.clone(),
            vmm: boot.vmm.clone(),
            image: vm.status.image.clone(),
            kernel: vm.status.kernel.clone(),
        };
        let mut snap = Snapshot::new(ObjectMeta { name, ..Default::default() }, spec);
        snap.status.state_size = Some(Size::from_bytes(staged.state_bytes));
        snap.status.disk_size = Some(Size::from_bytes(staged.disk_bytes));
        snap.status.paused_ms = staged.paused.as_millis() as u64;
        snap.status.ssh_host_keys = ssh_host_keys;
        // Appears with its files, or not at all (a name taken meanwhile: the store's refusal).
        let lock = store.lock()?;
        Ok(store.create_with(&lock, snap, |tmp, _| {
            for f in std::fs::read_dir(&staging)? {
                let f = f?;
                std::fs::rename(f.path(), tmp.join(f.file_name()))?;
            }
            Ok(())
        })?)
    });
    let _ = std::fs::remove_dir_all(&staging);
    made
}

/// What [`stage`] made.
struct Staged {
    /// How long the guest was paused.
    paused: Duration,
    /// What the machine state and the disk's copy take on the host's disk.
    state_bytes: u64,
    disk_bytes: u64,
}

/// Makes a snapshot's files in `staging` (all of them: every file there becomes the
/// snapshot's): what a resume needs of the boot, the disk copied while the guest is paused,
/// and the machine state.
fn stage(dir: &VmDir, staging: &Path, boot: &BootConfig, backend: &dyn Backend) -> Result<Staged, String> {
    let m = &boot.machine;
    link_or_copy(&m.kernel, &staging.join(KERNEL))?;
    link_or_copy(m.initrd.as_deref().ok_or("its machine has no initramfs")?, &staging.join(INITRD))?;
    let machine = serde_json::to_vec_pretty(m).map_err(|e| e.to_string())?;
    ignite_store::write_atomic(&staging.join(MACHINE), &machine).map_err(|e| e.to_string())?;
    let root = crate::rootdisk::read(dir).map_err(|e| e.to_string())?.ok_or("it has no root disk")?;
    let disk_files = crate::rootdisk::own_files(root.layout);
    let mut copy_disk = || {
        // Paused: the disk is as the saved memory knows it. Its holes stay holes (a sparse
        // layer of a 4 GiB disk copies what it holds).
        for f in disk_files {
            ignite_disk::copy_sparse(&dir.join(f), &staging.join(f))
                .map_err(|e| format!("{}: {e}", dir.join(f).display()))?;
        }
        ignite_proc::fault::point("snapshot.paused");
        Ok(())
    };
    let state = staging.join(STATE);
    let paused = backend.save(dir, &state, m.memory_mib, &mut copy_disk).map_err(|e| e.to_string())?;
    // Durable before it appears, synced once the guest runs again: the state's write-back
    // made the pause 30-50 ms longer (measured); the initramfs too (a start writes it
    // unsynced: it makes it again for each boot).
    // What each takes on the host's disk (a sparse copy takes less than its length).
    let sync = |files: &[PathBuf], what: &str| -> Result<u64, String> {
        let mut taken = 0;
        for f in files {
            let file = File::open(f).map_err(|e| format!("{what}: {}: {e}", f.display()))?;
            file.sync_all().map_err(|e| format!("sync {what}: {e}"))?;
            taken += file.metadata().map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).unwrap_or(0);
        }
        Ok(taken)
    };
    let state_bytes = sync(&backend.saved_files(&state), "the machine state")?;
    let disk_bytes = sync(&disk_files.iter().map(|f| staging.join(f)).collect::<Vec<_>>(), "the disk's copy")?;
    File::open(staging.join(INITRD)).and_then(|f| f.sync_all()).map_err(|e| format!("sync the initramfs: {e}"))?;
    Ok(Staged { paused, state_bytes, disk_bytes })
}

/// [`PAUSE_LOCK`], held: one snapshot of a VM at a time, and a guest paused by a snapshot
/// being taken is left alone. The file goes with the lock.
struct PauseLock {
    path: PathBuf,
    _file: File,
}

impl PauseLock {
    fn take(dir: &VmDir, vm_name: &str) -> Result<PauseLock, SnapshotError> {
        let path = dir.join(PAUSE_LOCK);
        let fail = |e: std::io::Error| SnapshotError::Failed { name: vm_name.to_string(), message: e.to_string() };
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(fail)?;
        match file.try_lock() {
            Ok(()) => Ok(PauseLock { path, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(SnapshotError::Busy { name: vm_name.to_string() }),
            Err(std::fs::TryLockError::Error(e)) => Err(fail(e)),
        }
    }
}

impl Drop for PauseLock {
    fn drop(&mut self) {
        // Removed while held (takers only try the lock, and give up when they cannot take it).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The VM as it runs, its directory, how it was started and its backend, if a snapshot can be
/// taken of it.
fn snapshottable(store: &Store, vm: &Vm) -> Result<(Vm, VmDir, BootConfig, Arc<dyn Backend>), SnapshotError> {
    let vm_name = vm.metadata.name.clone();
    let vm = crate::status::observe(store.get::<Vm>(&vm.uid())?);
    if !vm.status.running {
        return Err(SnapshotError::NotRunning { name: vm_name });
    }
    let dir = VmDir::of(store, &vm.uid());
    let unsupported = |message: String| SnapshotError::Unsupported { name: vm_name.clone(), message };
    if !vm.spec.storage.volumes.is_empty() {
        return Err(unsupported(
            "it has volumes: a snapshot holds a VM's own disk only, and a clone cannot share a volume".into(),
        ));
    }
    let boot: BootConfig = serde_json::from_slice(
        &std::fs::read(dir.boot_config()).map_err(|e| unsupported(format!("its boot configuration: {e}")))?,
    )
    .map_err(|e| unsupported(format!("its boot configuration: {e}")))?;
    if boot.machine.agent_port.is_none() {
        return Err(unsupported("it runs without its guest agent: a clone could not be given its own identity".into()));
    }
    // The backend and binary the VM runs on, as its start recorded them.
    let backend = ignite_vmm::backend(&boot.vmm, &boot.binaries).map_err(|e| unsupported(e.to_string()))?;
    Ok((vm, dir, boot, backend))
}

/// Resumes the guest of a running VM whose snapshot was abandoned while it was paused (the
/// process taking it was killed): nothing holds [`PAUSE_LOCK`] any more.
pub fn resume_if_abandoned(dir: &VmDir) {
    let path = dir.join(PAUSE_LOCK);
    let Ok(f) = File::options().write(true).open(&path) else { return };
    if f.try_lock().is_err() {
        return; // a snapshot is being taken
    }
    let backend = std::fs::read(dir.boot_config())
        .ok()
        .and_then(|b| serde_json::from_slice::<BootConfig>(&b).ok())
        .and_then(|b| ignite_vmm::backend(&b.vmm, &b.binaries).ok());
    if let Some(b) = backend {
        match b.resume(dir) {
            Ok(true) => tracing::warn!(
                "resumed the guest of {}: a snapshot of it was abandoned while it was paused",
                dir.display()
            ),
            Ok(false) => {}
            Err(e) => {
                // Left for the next look.
                tracing::warn!("cannot resume the guest of {} after an abandoned snapshot: {e}", dir.display());
                return;
            }
        }
    }
    // What the killed taker made of the snapshot (never listed: it had not appeared).
    let _ = std::fs::remove_dir_all(dir.join(STAGING));
    let _ = std::fs::remove_file(&path);
}

/// Removes the snapshot `snap`, unless a clone that has not started yet needs it.
pub fn remove(store: &Store, snap: &Snapshot) -> Result<(), SnapshotError> {
    let lock = store.lock()?;
    let uid = snap.uid();
    for vm in store.list::<Vm>()? {
        let marker = store.dir::<Vm>(&vm.uid()).join(RESTORE_FROM);
        if std::fs::read_to_string(&marker).map(|s| s.trim() == uid).unwrap_or(false) {
            return Err(SnapshotError::InUse { name: snap.metadata.name.clone(), vm: vm.metadata.name });
        }
    }
    store.remove::<Snapshot>(&lock, &uid)?;
    drop(lock);
    crate::gc::collect_if_idle(store);
    Ok(())
}

/// Creates a clone of `snap`: a new VM with the snapshot's spec under `name` (random when
/// empty) and `ports`, whose disk is a copy of the snapshot's, and whose next start resumes
/// the snapshot.
pub fn create_clone(
    store: &Store,
    snap: &Snapshot,
    name: &str,
    ports: Vec<ignite_api::PortMapping>,
    labels: std::collections::BTreeMap<String, String>,
) -> Result<Vm, SnapshotError> {
    let sdir = store.dir::<Snapshot>(&snap.uid());
    let clone_err = |message: String| SnapshotError::Clone { name: snap.metadata.name.clone(), message };
    let disk_files = disk_files_of(&sdir).map_err(clone_err)?;
    let mut spec = snap.spec.vm_spec.clone();
    spec.network.ports = ports;
    // It resumes in the VMM that saved the state, whatever the host's default is by then.
    spec.vmm = Some(snap.spec.vmm.clone());
    let _gc = crate::gc::hold(store).map_err(|e| clone_err(e.to_string()))?;
    let lock = store.lock()?;
    if store.get::<Snapshot>(&snap.uid()).is_err() {
        return Err(clone_err("it was removed".into()));
    }
    let mut name = name.to_string();
    if name.is_empty() {
        let taken: std::collections::HashSet<String> =
            store.list::<Vm>()?.into_iter().map(|v| v.metadata.name).collect();
        name = ignite_api::names::random_unique_name(|n| taken.contains(n));
    }
    // The source's annotations (network plugin, extra interfaces), but not its fixed address.
    let mut annotations = snap.spec.vm_annotations.clone();
    annotations.remove(crate::network::IP_ANNOTATION);
    let mut vm = Vm::new(ObjectMeta { name, labels, annotations, ..Default::default() }, spec);
    vm.status.image = snap.spec.image.clone();
    vm.status.kernel = snap.spec.kernel.clone();
    vm.status.id_prefix = "ignite".into();
    // Checked as `create` checks a VM (its name above all), before anything is made: a name
    // that cannot be a hostname would otherwise be found out only by the guest's agent,
    // after the clone's VMM had started.
    ignite_api::validate::validate_vm(&vm)
        .map_err(|e| SnapshotError::Invalid(format!("invalid VM {:?}: {e}", vm.metadata.name)))?;
    let mut failure = None;
    let made = store.create_with(&lock, vm, |tmp, _| {
        let res = disk_files
            .iter()
            .try_for_each(|f| {
                ignite_disk::copy_sparse(&sdir.join(f), &tmp.join(f))
                    .map(drop)
                    .map_err(|e| format!("{}: {e}", sdir.join(f).display()))
            })
            .and_then(|_| {
                ignite_store::write_atomic(&tmp.join(RESTORE_FROM), snap.uid().as_bytes()).map_err(|e| e.to_string())
            });
        res.map_err(|m| {
            failure = Some(m.clone());
            std::io::Error::other(m)
        })
    });
    made.map_err(|e| match failure {
        Some(m) => clone_err(m),
        None => e.into(),
    })
}

/// The root-disk files of the snapshot whose directory is `sdir` (its layout is the VM's).
fn disk_files_of(sdir: &Path) -> Result<&'static [&'static str], String> {
    match crate::rootdisk::read(&VmDir::new(sdir)) {
        Ok(Some(root)) => Ok(crate::rootdisk::own_files(root.layout)),
        Ok(None) => Err(format!("{} holds no copy of a disk", sdir.display())),
        Err(e) => Err(e.to_string()),
    }
}

/// Where `revert` keeps a root-disk file `name` it replaced (one: the last), in the VM's
/// directory: `disk.qcow2` -> `disk.before-snapshot.qcow2`.
pub fn replaced_name(name: &str) -> String {
    match name.split_once('.') {
        Some((stem, ext)) => format!("{stem}.before-snapshot.{ext}"),
        None => format!("{name}.before-snapshot"),
    }
}

/// What [`revert`] changed in a VM's directory: undone when the start it prepared fails.
#[derive(Debug)]
#[must_use = "a failed start undoes the revert"]
pub struct Reverted {
    dir: VmDir,
    /// (where a file the VM had is kept, its place).
    kept: Vec<(PathBuf, PathBuf)>,
}

impl Reverted {
    /// The VM has the disk files it had again, and its next start boots them.
    pub fn undo(self) {
        clear_restore(&self.dir);
        for (kept, disk) in self.kept {
            if let Err(e) = std::fs::rename(&kept, &disk) {
                tracing::warn!("cannot put {} back as {}: {e}", kept.display(), disk.display());
            }
        }
    }
}

/// Makes the stopped VM `vm`'s next start resume `snap`, a snapshot of it, on the VMM `vmm`:
/// its disk becomes the snapshot's (the files it had are kept, see [`replaced_name`]).
/// Checked before anything changes: the snapshot is this VM's and was saved by `vmm`, the VM
/// is stopped, its machine is the snapshot's.
pub fn revert(store: &Store, vm: &Vm, snap: &Snapshot, vmm: &str) -> Result<Reverted, SnapshotError> {
    let name = vm.metadata.name.clone();
    if snap.spec.vm != vm.uid() {
        return Err(SnapshotError::Invalid(format!(
            "snapshot {:?} was taken of VM {:?}, not {name:?}: `ignite run --from-snapshot {}` clones it",
            snap.metadata.name, snap.spec.vm_name, snap.metadata.name
        )));
    }
    if snap.spec.vmm != vmm {
        return Err(SnapshotError::Invalid(format!(
            "snapshot {:?} was saved by {} and VM {name:?} starts on {vmm}: a saved machine resumes on the VMM that saved it",
            snap.metadata.name, snap.spec.vmm
        )));
    }
    let lock = store.lock()?;
    let vm = crate::status::observe(store.get::<Vm>(&vm.uid())?);
    if vm.status.running {
        return Err(SnapshotError::Running { name });
    }
    let (was, now) = (&snap.spec.vm_spec, &vm.spec);
    if was.cpus != now.cpus || was.memory() != now.memory() {
        return Err(SnapshotError::Invalid(format!(
            "VM {name:?} has {} vCPUs and {} now, its snapshot {:?} {} and {}: the machine must be the same",
            now.cpus,
            now.memory().human(),
            snap.metadata.name,
            was.cpus,
            was.memory().human()
        )));
    }
    let dir = VmDir::of(store, &vm.uid());
    let fail = |e: String| SnapshotError::Failed { name: name.clone(), message: e };
    let sdir = store.dir::<Snapshot>(&snap.uid());
    let files = disk_files_of(&sdir).map_err(fail)?;
    let staged = |f: &str| dir.join(format!(".{f}.snapshot"));
    for f in files {
        let copied =
            ignite_disk::copy_sparse(&sdir.join(f), &staged(f)).and_then(|_| File::open(staged(f))?.sync_all());
        if let Err(e) = copied {
            for f in files {
                let _ = std::fs::remove_file(staged(f));
            }
            return Err(fail(format!("copy the snapshot's {f}: {e}")));
        }
    }
    let mut reverted = Reverted { dir: dir.clone(), kept: Vec::new() };
    for f in files {
        let disk = dir.join(f);
        if disk.exists() {
            let kept = dir.join(replaced_name(f));
            std::fs::rename(&disk, &kept).map_err(|e| fail(format!("keep {}: {e}", disk.display())))?;
            reverted.kept.push((kept, disk.clone()));
        }
        std::fs::rename(staged(f), &disk).map_err(|e| fail(format!("{}: {e}", disk.display())))?;
    }
    ignite_store::write_atomic(&dir.join(RESTORE_FROM), snap.uid().as_bytes())?;
    drop(lock);
    Ok(reverted)
}

/// What a start resumes instead of booting.
#[derive(Debug, Clone)]
pub struct Restore {
    pub snapshot: String,
    pub dir: PathBuf,
    /// The machine the state was saved from.
    pub machine: Machine,
    /// The backend that saved it (the one that can load it).
    pub vmm: String,
    /// The snapshot is another VM's: the guest is a clone, a new machine.
    pub new_machine: bool,
    /// The SSH host key files of the saved guest.
    pub ssh_host_keys: Vec<String>,
}

/// The snapshot the VM in `dir` resumes at its next start, if it is a clone not yet started.
pub fn pending_restore(store: &Store, dir: &VmDir) -> Result<Option<Restore>, String> {
    let uid = match std::fs::read_to_string(dir.join(RESTORE_FROM)) {
        Ok(u) => u.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.join(RESTORE_FROM).display())),
    };
    let snap = store.get::<Snapshot>(&uid).map_err(|e| format!("the snapshot it was cloned from: {e}"))?;
    let sdir = store.dir::<Snapshot>(&uid);
    let machine: Machine = std::fs::read(sdir.join(MACHINE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("snapshot {:?}: {}: {e}", snap.metadata.name, sdir.join(MACHINE).display()))?;
    let new_machine = snap.spec.vm != dir.uid();
    Ok(Some(Restore {
        snapshot: snap.metadata.name,
        dir: sdir,
        machine,
        vmm: snap.spec.vmm,
        new_machine,
        ssh_host_keys: snap.status.ssh_host_keys,
    }))
}

/// Whether `clone` has the devices of the machine `saved` was (QEMU loads a state into the
/// same devices only).
pub fn check_same_devices(saved: &Machine, clone: &Machine) -> Result<(), String> {
    let what = [
        ("vCPUs", saved.vcpus as usize, clone.vcpus as usize),
        ("MiB of memory", saved.memory_mib as usize, clone.memory_mib as usize),
        ("drives", saved.drives.len(), clone.drives.len()),
        ("network interfaces", saved.nics.len(), clone.nics.len()),
        ("agent ports", usize::from(saved.agent_port.is_some()), usize::from(clone.agent_port.is_some())),
    ];
    for (name, s, c) in what {
        if s != c {
            return Err(format!(
                "the snapshot's machine has {s} {name}, this VM {c}: a clone runs with the snapshot's"
            ));
        }
    }
    Ok(())
}

/// The VM's next start boots its own disk (it resumed the snapshot, or failed to).
pub fn clear_restore(dir: &VmDir) {
    let _ = std::fs::remove_file(dir.join(RESTORE_FROM));
}

/// Why the accelerator of a resume is the snapshot's.
pub fn accel_reason(r: &Restore) -> String {
    let how = match r.machine.accel {
        Accel::Kvm => "KVM",
        Accel::Tcg => "TCG",
    };
    format!("resumed from snapshot {:?}, taken under {how}", r.snapshot)
}

/// Hard-links `from` at `to` (files that are replaced, never changed in place), else copies it.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("{}: {e}", from.display()))
}

/// A resumed guest's agent being reached: its first step of being given its identity, taken
/// while the VM's network is still being attached (the interface part of the identity needs
/// that attachment; reaching the agent does not). Made by [`reach_agent`], used by
/// [`give_identity`], or [`Reaching::abandon`]ed.
pub struct Reaching {
    /// The clone's new SSH host keys, made on the host meanwhile.
    keys: Option<crate::clone_ssh::KeyMaker>,
    session: Result<crate::agent::Session, crate::agent::AgentError>,
}

impl std::fmt::Debug for Reaching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaching").field("answered", &self.session.is_ok()).finish_non_exhaustive()
    }
}

impl Reaching {
    /// The identity will not be given: the keys' scratch copies are removed.
    pub fn abandon(self, dir: &VmDir) {
        crate::clone_ssh::abandon(dir, self.keys);
    }
}

/// Starts making the SSH host keys `plan` asks for and waits (up to `timeout`) for the agent
/// of the guest of the VM in `dir`, just resumed, to answer.
pub fn reach_agent(dir: &VmDir, name: &str, plan: &crate::boot::IdentityPlan, timeout: Duration) -> Reaching {
    let keys = crate::clone_ssh::make_host_keys(dir, &plan.hostname, &plan.ssh_host_keys);
    let t0 = std::time::Instant::now();
    let session = crate::agent::Session::connect(name, dir, timeout);
    if session.is_ok() {
        tracing::debug!("VM {name:?}: its agent answered after {:?}", t0.elapsed());
    }
    Reaching { keys, session }
}

/// Gives the guest of the VM in `dir`, just resumed and its agent `reaching`, the identity
/// `plan`, with fresh entropy, the host's wall clock, and a new machine-id, new SSH host keys
/// and its own authorized key where the plan says.
pub fn give_identity(
    dir: &VmDir,
    name: &str,
    plan: &crate::boot::IdentityPlan,
    reaching: Reaching,
    timeout: Duration,
) -> Result<(), String> {
    let mut random = [0u8; 16 + 64];
    if let Err(e) = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty()) {
        reaching.abandon(dir);
        return Err(format!("getrandom: {e}"));
    }
    let (machine_id, entropy) = random.split_at(16);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let id = ignite_agent::proto::Identity {
        hostname: Some(plan.hostname.clone()),
        interface: plan.interface.clone(),
        machine_id: plan.new_machine_id.then(|| machine_id.iter().map(|b| format!("{b:02x}")).collect()),
        entropy: entropy.to_vec(),
        wall_clock_ns: Some(now.as_nanos() as u64),
    };
    let Reaching { keys, session } = reaching;
    let given = session.and_then(|session| session.set_identity(&id));
    let ssh = plan.authorized_keys.as_deref();
    match given {
        Ok(()) => crate::clone_ssh::give(dir, name, ssh, keys, timeout),
        Err(e) => {
            crate::clone_ssh::abandon(dir, keys);
            Err(e.to_string())
        }
    }
}
