//! Recovery of what killed processes left behind, for the VMs no process is acting on: the
//! network a killed `start` allocated (its record in `vm/<uid>/network.json`), the sockets
//! of a supervisor that died, and (through the collector) scratch, temporary files and blobs
//! of killed imports. `ignited` runs it before every pass; `ignite doctor --fix` on demand.
//! The next `start` or `rm` of a VM does the same for that VM, so nothing waits for this.

use ignite_api::{Ending, Vm};
use ignite_store::{Store, StoreError};

use crate::host::{Host, System};
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
    let Ok(lock) = dir.open_start_lock() else {
        return false;
    };
    if lock.try_lock().is_err() || crate::lease::supervisor_held(&dir) {
        return false;
    }
    crate::held::release_resources(&dir);
    had_network
}

/// Returns the VM with a truthful `status.running`, recording a dead supervisor as a stop.
pub fn refresh(store: &Store, vm: Vm) -> Result<Vm, StoreError> {
    refresh_on(&System, store, vm)
}

/// [`refresh`], asking `host` whether the supervisor lives.
pub fn refresh_on(host: &dyn Host, store: &Store, vm: Vm) -> Result<Vm, StoreError> {
    if !vm.status.running {
        return Ok(vm);
    }
    if crate::status::is_live_on(host, &vm) {
        // A snapshot whose taker was killed while the guest was paused.
        crate::snapshot::resume_if_abandoned(&VmDir::of(store, &vm.uid()));
        return Ok(vm);
    }
    let uid = vm.uid();
    let stale_pid = crate::status::supervisor_pid(&vm);
    // The supervisor is dead, so nothing uses the VM's network or sockets, and no start can
    // begin while the store still says running: release first, then record the stop.
    crate::held::release_resources(&store.dir::<Vm>(&uid));
    let (vm, _) = store.modify::<Vm, _>(&uid, |v| {
        // Re-check under the lock: a concurrent refresh may have recorded it already.
        !crate::status::is_live_on(host, v)
            && v.status.record_ended(stale_pid, None, &Ending::SupervisorDied, chrono::Utc::now())
    })?;
    Ok(vm)
}

/// Records the end of every VM whose supervisor died, releasing what it held, and resumes the
/// guests of abandoned snapshots (what the commands that change things run first; cheap: no
/// collection).
pub fn record_dead(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for vm in store.list::<Vm>()? {
        if vm.status.running && !crate::status::is_live(&vm) {
            let name = vm.metadata.name.clone();
            refresh(store, vm)?;
            out.push(name);
        } else if vm.status.running {
            crate::snapshot::resume_if_abandoned(&VmDir::of(store, &vm.uid()));
        }
    }
    Ok(out)
}

/// Releases the leftovers of every VM that is not running and that no start is acting on.
pub fn recover_all(store: &Store) -> Result<Recovered, StoreError> {
    let mut r = Recovered::default();
    for vm in store.list::<Vm>()? {
        // A dead supervisor is recorded (and its network released) by the refresh.
        let vm = refresh(store, vm)?;
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
