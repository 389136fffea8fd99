//! Fault injection for the kill drill (`scripts/drill.py`): named points between the steps of
//! multi-step operations where a process can be killed for real.
//!
//! `IGNITE_FAULT=<point>[,<point>...]` makes the process SIGKILL itself when it reaches one of
//! those points — the same as a `kill -9` from outside at exactly that step, replayable.
//! `IGNITE_FAULT_SIGNAL=TERM` sends SIGTERM instead (what `kill` and systemd send first);
//! `IGNITE_FAULT_SIGNAL=STOP` stops the process there (SIGSTOP) and lets it go on once it is
//! continued: a test holds an operation at that step while it races another against it.
//! `IGNITE_FAULT_TRACE=<file>` appends the name of every point reached (the drill learns the
//! points of an operation this way). Without these variables a point costs one environment
//! lookup.

use std::io::Write;

/// Marks the step `name`; the process dies here when the drill asks for it.
pub fn point(name: &str) {
    if let Some(trace) = std::env::var_os("IGNITE_FAULT_TRACE") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(trace) {
            let _ = writeln!(f, "{name}");
        }
    }
    let Some(want) = std::env::var_os("IGNITE_FAULT") else { return };
    if want.to_string_lossy().split(',').any(|p| p.trim() == name) {
        let stop = std::env::var("IGNITE_FAULT_SIGNAL").as_deref() == Ok("STOP");
        let what = if stop { "stopped" } else { "killed" };
        let _ = std::io::stderr().write_all(format!("ignite: fault injection: {what} at {name}\n").as_bytes());
        if stop {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
            return;
        }
        let sig = match std::env::var("IGNITE_FAULT_SIGNAL").as_deref() {
            Ok("TERM") => rustix::process::Signal::TERM,
            _ => rustix::process::Signal::KILL,
        };
        let _ = rustix::process::kill_process(rustix::process::getpid(), sig);
        // A process that handles SIGTERM is stopped here all the same: SIGTERM, then death
        // before the next step (as a service manager's stop would end it).
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}
