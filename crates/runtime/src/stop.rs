//! `stop` (graceful: the guest's init gets a Ctrl-Alt-Del, then a forced stop after the grace
//! period) and `kill` (forced at once). Both wait until the VM is down, and, as Docker's do,
//! for a start of the VM in progress in another process to end first (then stop what it
//! started).

use std::time::{Duration, Instant};

use ignite_api::{Ending, Vm};
use ignite_store::{Store, StoreError};

use crate::host::{Host, Sig, System};
use crate::recover::refresh_on;
use crate::start::{StartWaitError, START_WAIT};
use crate::status::supervisor_pid;
use crate::vmdir::VmDir;

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("VM {name:?} is not running")]
    NotRunning { name: String },
    #[error("VM {name:?} is being started by another process that has not finished within {secs} s")]
    Starting { name: String, secs: u64 },
    #[error("cannot lock VM {name:?}")]
    Lock {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal the supervisor of VM {name:?} (pid {pid})")]
    Signal {
        name: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stops `vm`: graceful for `grace`, then forced. Returns the VM as it ended.
pub fn stop(store: &Store, vm: Vm, grace: Duration) -> Result<Vm, StopError> {
    stop_on(&System, store, vm, grace)
}

/// [`stop`] through `host`.
pub fn stop_on(host: &dyn Host, store: &Store, vm: Vm, grace: Duration) -> Result<Vm, StopError> {
    let (vm, pid) = running_or_started(host, store, vm, "stop.start-in-progress")?;
    signal(host, &vm, pid, Sig::Terminate)?;
    ignite_proc::fault::point("stop.signalled");
    if let Some(v) = wait_down(host, store, &vm, pid, grace)? {
        return Ok(v);
    }
    tracing::info!("VM {:?} did not shut down within {}s: stopping it", vm.metadata.name, grace.as_secs());
    kill_pid(host, store, vm, pid)
}

/// Kills `vm` at once.
pub fn kill(store: &Store, vm: Vm) -> Result<Vm, StopError> {
    kill_on(&System, store, vm)
}

/// [`kill`] through `host`.
pub fn kill_on(host: &dyn Host, store: &Store, vm: Vm) -> Result<Vm, StopError> {
    let (vm, pid) = running_or_started(host, store, vm, "kill.start-in-progress")?;
    kill_pid(host, store, vm, pid)
}

/// [`kill`] by a caller that holds the VM's start lock itself (a removal): no start of it can
/// be in progress, and none is waited for.
pub fn kill_locked(store: &Store, vm: Vm) -> Result<Vm, StopError> {
    let vm = refresh_on(&System, store, vm)?;
    let pid = running_pid(&System, &vm)?;
    kill_pid(&System, store, vm, pid)
}

/// How long a supervisor told to stop its VMM now may take before it is killed.
pub const INTERRUPT_WAIT: Duration = Duration::from_secs(8);

fn kill_pid(host: &dyn Host, store: &Store, vm: Vm, pid: u32) -> Result<Vm, StopError> {
    signal(host, &vm, pid, Sig::Interrupt)?;
    if let Some(v) = wait_down(host, store, &vm, pid, INTERRUPT_WAIT)? {
        return Ok(v);
    }
    // The supervisor is wedged: kill it; its VMM dies with it (parent-death signal).
    let uid = vm.uid();
    let _ = host.signal(pid, Sig::Kill);
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.supervisor_alive(pid, &uid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !host.supervisor_alive(pid, &uid) {
        crate::held::release_resources(&store.dir::<Vm>(&uid));
    }
    let (v, _) =
        store.modify::<Vm, _>(&uid, |v| v.status.record_ended(Some(pid), None, &Ending::Killed, chrono::Utc::now()))?;
    Ok(v)
}

/// The VM as it is, and its supervisor's pid, when it runs; one being started by another
/// process (`fault`: the fault point once it waits) once that start has ended: not stopped
/// under it, and not refused as "not running" a moment before it runs.
fn running_or_started(host: &dyn Host, store: &Store, vm: Vm, fault: &str) -> Result<(Vm, u32), StopError> {
    let vm = refresh_on(host, store, vm)?;
    if let Ok(pid) = running_pid(host, &vm) {
        return Ok((vm, pid));
    }
    let uid = vm.uid();
    let dir = VmDir::of(store, &uid);
    if !crate::start::in_progress(&dir, &vm) {
        return Err(StopError::NotRunning { name: vm.metadata.name });
    }
    let name = vm.metadata.name.clone();
    let lock = crate::start::wait_start_lock(&dir, fault).map_err(|e| match e {
        StartWaitError::Gone => StoreError::NotFound { kind: Vm::KIND, query: name.clone() }.into(),
        StartWaitError::StillStarting => StopError::Starting { name: name.clone(), secs: START_WAIT.as_secs() },
        StartWaitError::Lock(source) => StopError::Lock { name: name.clone(), source },
    })?;
    let vm = crate::start::settled_on(host, store, &dir, &uid)?;
    // Not held while it stops: a recovery on the way takes it.
    drop(lock);
    let pid = running_pid(host, &vm)?;
    Ok((vm, pid))
}

fn running_pid(host: &dyn Host, vm: &Vm) -> Result<u32, StopError> {
    match supervisor_pid(vm) {
        // A record that says "stopped" while its supervisor lives is stopped all the same.
        Some(p) if vm.status.running || crate::status::outdated_on(host, vm) => Ok(p),
        _ => Err(StopError::NotRunning { name: vm.metadata.name.clone() }),
    }
}

fn signal(host: &dyn Host, vm: &Vm, pid: u32, sig: Sig) -> Result<(), StopError> {
    host.signal(pid, sig).map_err(|source| StopError::Signal { name: vm.metadata.name.clone(), pid, source })
}

/// Waits until the supervisor (`pid`) is gone, with its end recorded; `None` on timeout.
fn wait_down(host: &dyn Host, store: &Store, vm: &Vm, pid: u32, timeout: Duration) -> Result<Option<Vm>, StopError> {
    let deadline = Instant::now() + timeout;
    let uid = vm.uid();
    loop {
        let cur = store.get::<Vm>(&uid)?;
        if !host.supervisor_alive(pid, &uid) {
            if cur.status.running {
                // Died without recording its end: recovery records it (and releases).
                return Ok(Some(refresh_on(host, store, cur)?));
            }
            // Its record said "stopped" before it ended (an outdated record): it released
            // nothing then; nobody else acts on the VM now.
            crate::recover::release_if_idle(store, &uid);
            return Ok(Some(cur));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
