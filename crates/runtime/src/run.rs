//! `run` = create + start, as one policy for the `ignite` CLI and ignited's API: a VM whose
//! start fails before it ever booted is removed again, so a failed run leaves nothing behind
//! (the VM's network and leases are released by `start` itself, and what its directory still
//! records it holds by the removal).

use ignite_api::Vm;
use ignite_store::Store;

use crate::config::LoadedConfig;
use crate::start::{start, StartError, StartOptions, Started};

/// Starts `vm`, just created; if the start fails, removes the VM again unless it booted.
pub fn start_new(store: &Store, config: &LoadedConfig, vm: Vm, opts: &StartOptions) -> Result<Started, StartError> {
    let uid = vm.uid();
    start(store, config, vm, opts).inspect_err(|_| undo_create(store, &uid))
}

/// Removes a VM that never started (a VM that ran once is the user's, whatever happened).
pub fn undo_create(store: &Store, uid: &str) {
    let Ok(lock) = store.lock() else { return };
    if let Ok(cur) = store.get::<Vm>(uid) {
        if !cur.status.running && cur.status.start_time.is_none() {
            // What its directory records it holds goes first, as for `rm`: a supervisor killed
            // before it released its VM's cgroup and jail root left them recorded there only
            // (seen: killed while it gave a clone its identity, each failed `run` left a cgroup).
            crate::held::release_resources(&store.dir::<Vm>(uid));
            let _ = store.remove::<Vm>(&lock, uid);
        }
    }
}
