//! `rm`: delete a VM object and everything under its directory.

use std::fs::File;
use std::time::{Duration, Instant};

use ignite_api::Vm;
use ignite_store::{Store, StoreError};

use crate::start::LEAVING_WAIT;
use crate::vmdir::VmDir;

/// Why a VM could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("VM {name:?} is running: stop it first or use rm -f")]
    Running { name: String },
    #[error("cannot stop VM {name:?}")]
    Stop {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "VM {name:?} is being started by another process that has not finished within {secs} s; nothing was removed"
    )]
    Starting { name: String, secs: u64 },
    #[error("cannot lock VM {name:?}: {source}")]
    Lock {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a removal waits for a start of the VM in progress in another process (longer than
/// any start waits for anything itself).
pub const START_WAIT: Duration = Duration::from_secs(180);

/// Removes the VM `uid`. A running VM is refused unless `force`; with `force` a running VM is
/// first stopped by the caller-provided `stop` hook.
///
/// Never from under a start: a start of the VM in progress (its start lock held) is waited
/// for, and so is a supervisor still on its way to running it or out (its lease held, the VM
/// not recorded running: a start killed after it spawned it), as a start waits for one; the
/// start lock is then held until the VM is gone, so no start begins meanwhile. (It was not:
/// `rm -f` during a `run` removed the directory of a VM whose supervisor went on to start its
/// VMM, attach its network and make its cgroup, which nothing released then.)
pub fn remove_vm(
    store: &Store,
    uid: &str,
    force: bool,
    stop: impl FnOnce(&Vm) -> Result<(), RemoveError>,
) -> Result<Vm, RemoveError> {
    let vm = store.get::<Vm>(uid)?;
    let name = vm.metadata.name.clone();
    let dir = VmDir::of(store, uid);
    let _start = hold_start_lock(&dir, &name)?;
    // Re-read once no start is in progress: one may have run it, or removed it.
    let mut vm = crate::recover::refresh(store, store.get::<Vm>(uid)?)?;
    let deadline = Instant::now() + LEAVING_WAIT;
    while !vm.status.running && crate::lease::supervisor_held(&dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        vm = crate::recover::refresh(store, store.get::<Vm>(uid)?)?;
    }
    if vm.status.running || crate::status::outdated(&vm) || crate::lease::supervisor_held(&dir) {
        if !force {
            return Err(RemoveError::Running { name });
        }
        stop(&vm)?;
    }
    let lock = store.lock()?;
    // Re-check under the lock: a start may have raced us.
    let cur = store.get::<Vm>(uid)?;
    if cur.status.running && !force {
        return Err(RemoveError::Running { name: cur.metadata.name });
    }
    ignite_proc::fault::point("rm.locked");
    // Everything the VM's directory records it holds (network, cgroup, jail root, sockets)
    // is released before the directory and those records go.
    crate::held::release_resources(&store.dir::<Vm>(uid));
    ignite_proc::fault::point("rm.network-released");
    store.remove::<Vm>(&lock, uid)?;
    drop(lock);
    // The VM may have been the last user of a base whose image is gone.
    crate::gc::collect_if_idle(store);
    Ok(vm)
}

/// Takes the start lock of the VM in `dir`, waiting (up to [`START_WAIT`]) for a start in
/// progress; the VM's directory gone meanwhile is the VM not found.
fn hold_start_lock(dir: &VmDir, name: &str) -> Result<File, RemoveError> {
    let lock_err = |source| RemoveError::Lock { name: name.to_string(), source };
    let f = match File::options().create(true).truncate(false).write(true).open(dir.start_lock()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound { kind: Vm::KIND, query: name.to_string() }.into())
        }
        Err(e) => return Err(lock_err(e)),
    };
    let deadline = Instant::now() + START_WAIT;
    let mut waiting = false;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !waiting {
                    waiting = true;
                    ignite_proc::fault::point("rm.start-in-progress");
                }
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RemoveError::Starting { name: name.to_string(), secs: START_WAIT.as_secs() })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
    }
}
