//! Live VM state: a VM whose supervisor is gone is not running, whatever its metadata says
//! (Weave Ignite #351). `refresh` checks the supervisor and corrects the store.

use ignite_api::{Ending, Vm};
use ignite_store::{Store, StoreError};

use crate::held::release_resources;
use crate::sys::is_supervisor_alive;

/// The supervisor pid of a VM the store says is running.
pub fn supervisor_pid(vm: &Vm) -> Option<u32> {
    vm.status.runtime.as_ref().and_then(|r| r.pid)
}

/// Whether the VM's supervisor is alive.
pub fn is_live(vm: &Vm) -> bool {
    vm.status.running && supervisor_pid(vm).map(|p| is_supervisor_alive(p, &vm.uid())).unwrap_or(false)
}

/// Whether the VM's record says it is not running while its supervisor lives (a record edited
/// or restored by hand, or written by another tool): `ps` shows it as `*Up`, as Weave Ignite
/// did for a manifest older than the VM's real state.
pub fn outdated(vm: &Vm) -> bool {
    !vm.status.running && supervisor_pid(vm).is_some_and(|p| is_supervisor_alive(p, &vm.uid()))
}

/// Returns the VM with a truthful `status.running`, recording a dead supervisor as a stop.
pub fn refresh(store: &Store, vm: Vm) -> Result<Vm, StoreError> {
    if !vm.status.running || is_live(&vm) {
        return Ok(vm);
    }
    let uid = vm.uid();
    let stale_pid = supervisor_pid(&vm);
    // The supervisor is dead, so nothing uses the VM's network or sockets, and no start can
    // begin while the store still says running: release first, then record the stop.
    release_resources(&store.dir::<Vm>(&uid));
    let (vm, _) = store.modify::<Vm, _>(&uid, |v| {
        // Re-check under the lock: a concurrent refresh may have recorded it already.
        !is_live(v) && v.status.record_ended(stale_pid, None, &Ending::SupervisorDied, chrono::Utc::now())
    })?;
    Ok(vm)
}

/// All VMs with truthful status.
pub fn list(store: &Store) -> Result<Vec<Vm>, StoreError> {
    store.list::<Vm>()?.into_iter().map(|v| refresh(store, v)).collect()
}
