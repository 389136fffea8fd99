//! A VM's life, in one place: the state it is in (derived from its status, which keeps the
//! fields Weave Ignite's manifests carry — `running`, the runtime — so that their readers
//! still understand it) and the only two transitions that change it: a run begins, a run
//! ends. Every writer (the supervisor, `stop`/`kill`, recovery) goes through these.

use chrono::{DateTime, Utc};

use crate::{ExitStatus, RuntimeStatus, VmStatus};

/// Where a VM is in its life (as `ps` shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Created, never started.
    Created,
    /// Running (under the supervisor `VmStatus::supervisor` names).
    Running,
    /// Ran, and ended (how: `status.exit`).
    Stopped,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Stopped => "Stopped",
        })
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `ignite stop`: the guest shut down when asked.
    Stopped,
    /// `ignite kill`.
    Killed,
    /// The guest powered itself off.
    PoweredOff,
    /// The guest rebooted (the VMM exits on a reboot).
    Rebooted,
    /// The guest kernel panicked (its message).
    Panic(String),
    /// The guest's init failed (its message).
    InitFailed(String),
    /// The VMM exited by itself with this code.
    VmmExited(i32),
    /// The VMM stopped the VM with an error, in its own words (its log).
    VmmFailed(String),
    /// The VMM was killed by this signal.
    VmmSignal(i32),
    /// The supervisor is gone without recording an end (the VM died with it).
    SupervisorDied,
}

impl Ending {
    /// How much an ending says: a more specific one replaces a less specific one seen during
    /// the same run (a guest's panic explains a power-off; nothing replaces a requested stop
    /// or kill).
    pub fn rank(&self) -> u8 {
        match self {
            Ending::VmmExited(_) | Ending::VmmSignal(_) | Ending::SupervisorDied => 0,
            Ending::PoweredOff | Ending::Rebooted | Ending::VmmFailed(_) => 1,
            Ending::Panic(_) | Ending::InitFailed(_) => 2,
            Ending::Stopped | Ending::Killed => 3,
        }
    }

    /// Whether `next`, seen after `self` in one run, is the better account of it.
    pub fn refined_by(&self, next: &Ending) -> bool {
        match self {
            Ending::Stopped | Ending::Killed => false,
            _ => next.rank() > self.rank(),
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Stopped => f.write_str("stopped"),
            Ending::Killed => f.write_str("killed"),
            Ending::PoweredOff => f.write_str("guest powered off"),
            Ending::Rebooted => f.write_str("guest rebooted"),
            Ending::Panic(d) => write!(f, "guest kernel panic: {d}"),
            Ending::InitFailed(d) => write!(f, "guest init failed: {d}"),
            Ending::VmmExited(0) => f.write_str("VMM exited"),
            Ending::VmmExited(c) => write!(f, "VMM exited with code {c} (see vmm.log)"),
            Ending::VmmSignal(s) => write!(f, "VMM killed by signal {s}"),
            Ending::VmmFailed(d) => write!(f, "the VMM stopped the VM: {d}"),
            Ending::SupervisorDied => f.write_str("supervisor died (the VM was killed with it)"),
        }
    }
}

impl VmStatus {
    /// The state this status records.
    pub fn state(&self) -> VmState {
        if self.running {
            VmState::Running
        } else if self.start_time.is_some() || self.exit.is_some() {
            VmState::Stopped
        } else {
            VmState::Created
        }
    }

    /// The supervisor of the current run (none in a record written elsewhere, or when stopped).
    pub fn supervisor(&self) -> Option<u32> {
        self.runtime.as_ref().and_then(|r| r.pid)
    }

    /// Whether the run supervised by `supervisor` is the current one.
    pub fn is_run_of(&self, supervisor: Option<u32>) -> bool {
        self.state() == VmState::Running && self.supervisor() == supervisor
    }

    /// A run begins under `runtime` (its supervisor's pid in it).
    pub fn record_running(&mut self, runtime: RuntimeStatus, at: DateTime<Utc>) {
        self.running = true;
        self.start_time = Some(at);
        self.exit = None;
        self.runtime = Some(runtime);
    }

    /// The run supervised by `supervisor` (none: a running record that names no supervisor)
    /// ended. Guarded: a status that is not running, or that names another supervisor (a newer
    /// run), is left alone; returns whether it was recorded. `code`: the VMM's exit code, when
    /// it exited.
    pub fn record_ended(
        &mut self,
        supervisor: Option<u32>,
        code: Option<i32>,
        ending: &Ending,
        at: DateTime<Utc>,
    ) -> bool {
        if !self.is_run_of(supervisor) {
            return false;
        }
        self.running = false;
        if let Some(rt) = self.runtime.as_mut() {
            rt.pid = None;
        }
        self.network = None;
        self.exit = Some(ExitStatus { code, reason: ending.to_string(), time: Some(at) });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(pid: u32) -> RuntimeStatus {
        RuntimeStatus { id: "u".into(), name: "qemu".into(), pid: Some(pid), accel: None, jail: None }
    }

    #[test]
    fn a_run_begins_and_ends_once() {
        let mut s = VmStatus::default();
        assert_eq!(s.state(), VmState::Created);
        s.record_running(rt(7), Utc::now());
        assert_eq!(s.state(), VmState::Running);
        assert!(s.is_run_of(Some(7)) && !s.is_run_of(Some(8)));
        // Another supervisor's end (an older run) changes nothing.
        assert!(!s.record_ended(Some(8), None, &Ending::Killed, Utc::now()));
        assert!(s.running);
        assert!(s.record_ended(Some(7), Some(0), &Ending::PoweredOff, Utc::now()));
        assert_eq!(s.state(), VmState::Stopped);
        assert_eq!(s.exit.as_ref().unwrap().reason, "guest powered off");
        assert_eq!(s.runtime.as_ref().unwrap().pid, None);
        // Ended twice: the second is refused, the first account stays.
        assert!(!s.record_ended(Some(7), None, &Ending::SupervisorDied, Utc::now()));
        assert_eq!(s.exit.as_ref().unwrap().reason, "guest powered off");
        // A new run clears how the last one ended.
        s.record_running(rt(9), Utc::now());
        assert!(s.exit.is_none());
    }

    #[test]
    fn the_most_specific_ending_wins_and_requests_are_final() {
        assert!(Ending::PoweredOff.refined_by(&Ending::Panic("oops".into())));
        assert!(!Ending::Panic("a".into()).refined_by(&Ending::PoweredOff));
        assert!(!Ending::Stopped.refined_by(&Ending::Panic("a".into())));
        assert!(!Ending::Killed.refined_by(&Ending::PoweredOff));
        assert_eq!(Ending::VmmExited(3).to_string(), "VMM exited with code 3 (see vmm.log)");
    }
}
