//! Live VM state, read without changing anything: a VM whose supervisor is gone is not
//! running, whatever its metadata says (Weave Ignite #351). Recording that end and releasing
//! what the VM held is recovery's (`recover::refresh`), run by the commands that change
//! things and by ignited — never by a read (`ps`, `inspect`, the API, a metrics scrape).

use ignite_api::{Ending, Vm};
use ignite_store::{Store, StoreError};

use crate::host::{Host, System};

/// The supervisor pid of a VM the store says is running.
pub fn supervisor_pid(vm: &Vm) -> Option<u32> {
    vm.status.runtime.as_ref().and_then(|r| r.pid)
}

/// Whether the VM's supervisor is alive.
pub fn is_live(vm: &Vm) -> bool {
    is_live_on(&System, vm)
}

/// [`is_live`], asking `host`.
pub fn is_live_on(host: &dyn Host, vm: &Vm) -> bool {
    vm.status.running && supervisor_pid(vm).is_some_and(|p| host.supervisor_alive(p, &vm.uid()))
}

/// Whether the VM's record says it is not running while its supervisor lives (a record edited
/// or restored by hand, or written by another tool): `ps` shows it as `*Up`, as Weave Ignite
/// did for a manifest older than the VM's real state.
pub fn outdated(vm: &Vm) -> bool {
    outdated_on(&System, vm)
}

/// [`outdated`], asking `host`.
pub fn outdated_on(host: &dyn Host, vm: &Vm) -> bool {
    !vm.status.running && supervisor_pid(vm).is_some_and(|p| host.supervisor_alive(p, &vm.uid()))
}

/// The VM as it is: one whose supervisor died shows stopped, with that as how it ended (in
/// the returned copy only; the store is not written).
pub fn observe(mut vm: Vm) -> Vm {
    if vm.status.running && !is_live(&vm) {
        let stale = supervisor_pid(&vm);
        vm.status.record_ended(stale, None, &Ending::SupervisorDied, chrono::Utc::now());
    }
    vm
}

/// Host memory a running VM takes, bytes: its jail's cgroup (guest memory, the VMM, the page
/// cache it caused), else the resident sets of its supervisor's children (the unjailed VMM).
/// `None` for a VM that is not running, or when the host does not say.
pub fn host_memory(vm: &Vm) -> Option<u64> {
    if !is_live(vm) {
        return None;
    }
    let rt = vm.status.runtime.as_ref()?;
    if let Some(j) = &rt.jail {
        return crate::cgroup::from_status(&j.cgroups).usage().0;
    }
    let sup = rt.pid?;
    let children = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).ok()?;
    let rss = |pid: &str| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse::<u64>();
        kib.ok().map(|k| k * 1024)
    };
    let pids: Vec<&str> = children.split_whitespace().collect();
    (!pids.is_empty()).then(|| pids.iter().filter_map(|p| rss(p)).sum())
}

/// All VMs as they are (see [`observe`]).
pub fn list(store: &Store) -> Result<Vec<Vm>, StoreError> {
    Ok(store.list::<Vm>()?.into_iter().map(observe).collect())
}
