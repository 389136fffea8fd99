//! `rm`: delete a VM object and everything under its directory.

use ignite_api::Vm;
use ignite_store::{Store, StoreError};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Removes the VM `uid`. A running VM is refused unless `force`; with `force` a running VM is
/// first stopped by the caller-provided `stop` hook.
pub fn remove_vm(
    store: &Store,
    uid: &str,
    force: bool,
    stop: impl FnOnce(&Vm) -> Result<(), RemoveError>,
) -> Result<Vm, RemoveError> {
    let vm = store.get::<Vm>(uid)?;
    if vm.status.running || crate::status::outdated(&vm) {
        if !force {
            return Err(RemoveError::Running { name: vm.metadata.name.clone() });
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
