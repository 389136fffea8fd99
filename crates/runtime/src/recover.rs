//! Recovery of what killed processes left behind, for the VMs no process is acting on: the
//! network a killed `start` allocated (its record in `vm/<uid>/network.json`), the sockets
//! of a supervisor that died, and (through the collector) scratch, temporary files and blobs
//! of killed imports. `ignited` runs it before every pass; `ignite doctor --fix` on demand.
//! The next `start` or `rm` of a VM does the same for that VM, so nothing waits for this.

use ignite_api::Vm;
use ignite_store::{Store, StoreError};

use crate::vmdir::VmDir;

/// What a recovery released.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// VMs whose leftover network was released.
    pub networks: Vec<String>,
    pub collected: Option<crate::gc::Collected>,
}

/// Releases what VM `uid` holds while it runs (network, sockets) when no process acts on it: no
/// start holds its start lock, no supervisor its lease. Returns whether a network was released.
pub fn release_if_idle(store: &Store, uid: &str) -> bool {
    let dir = VmDir::of(store, uid);
    let had_network = dir.network_record().exists();
    // A start in progress holds the VM's start lock: leave its VM alone.
    let Ok(lock) = std::fs::File::options().create(true).truncate(false).write(true).open(dir.start_lock()) else {
        return false;
    };
    if lock.try_lock().is_err() || crate::lease::supervisor_held(&dir) {
        return false;
    }
    crate::held::release_resources(&dir);
    had_network
}

/// Releases the leftovers of every VM that is not running and that no start is acting on.
pub fn recover_all(store: &Store) -> Result<Recovered, StoreError> {
    let mut r = Recovered::default();
    for vm in store.list::<Vm>()? {
        // A dead supervisor is recorded (and its network released) by the refresh.
        let vm = crate::status::refresh(store, vm)?;
        if vm.status.running {
            continue;
        }
        if !VmDir::of(store, &vm.uid()).network_record().exists() {
            continue;
        }
        if release_if_idle(store, &vm.uid()) {
            r.networks.push(vm.metadata.name.clone());
        }
    }
    r.collected = crate::gc::collect_if_idle(store);
    Ok(r)
}
