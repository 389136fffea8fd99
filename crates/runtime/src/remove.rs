//! `rm`: delete a VM object and everything under its directory.

use ignite_api::Vm;
use ignite_store::{Store, StoreError};

use crate::start::{StartWaitError, START_WAIT};
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

/// Removes the VM `uid`. A running VM is refused unless `force`; with `force` it is killed
/// first.
///
/// Never from under a start: a start of the VM in progress (its start lock held) is waited
/// for, and so is a supervisor still on its way to running it or out (its lease held, the VM
/// not recorded running: a start killed after it spawned it), as a start waits for one; the
/// start lock is then held until the VM is gone, so no start begins meanwhile. (It was not:
/// `rm -f` during a `run` removed the directory of a VM whose supervisor went on to start its
/// VMM, attach its network and make its cgroup, which nothing released then.)
pub fn remove_vm(store: &Store, uid: &str, force: bool) -> Result<Vm, RemoveError> {
    let vm = store.get::<Vm>(uid)?;
    let name = vm.metadata.name.clone();
    let dir = VmDir::of(store, uid);
    let _start = crate::start::wait_start_lock(&dir, "rm.start-in-progress").map_err(|e| match e {
        StartWaitError::Gone => StoreError::NotFound { kind: Vm::KIND, query: name.clone() }.into(),
        StartWaitError::StillStarting => RemoveError::Starting { name: name.clone(), secs: START_WAIT.as_secs() },
        StartWaitError::Lock(source) => RemoveError::Lock { name: name.clone(), source },
    })?;
    // Re-read once no start is in progress: one may have run it, or removed it.
    let vm = crate::start::settled_on(&crate::host::System, store, &dir, uid)?;
    if vm.status.running || crate::status::outdated(&vm) || crate::lease::supervisor_held(&dir) {
        if !force {
            return Err(RemoveError::Running { name });
        }
        crate::stop::kill_locked(store, vm.clone())
            .map_err(|e| RemoveError::Stop { name: name.clone(), source: Box::new(e) })?;
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
