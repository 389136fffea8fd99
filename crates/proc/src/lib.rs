//! Child processes with deadlines.
//!
//! Owns: running a host tool (CNI plugins, `ip`, `tc`, `iptables`, `git`, `mke2fs`, ...) to
//! completion with its input fed and its output collected, and never waiting for it longer
//! than a deadline. A tool that overruns is killed with its whole process group (plugins run
//! `iptables`, git runs ssh and helpers), so a hung tool cannot wedge the VM lock or the
//! daemon pass that waits for it; the caller gets [`ProcError::Timeout`] naming the tool.
//! A tool also dies with the thread that runs it (a parent-death signal), so a killed `ignite`
//! leaves no plugin finishing an allocation behind its back.
//!
//! Also here: [`fault`], the named kill points of the fault-injection drill; [`temp`], the
//! temporaries of parallel writers and their sweeping.
#![deny(unsafe_code)]

pub mod elf;
pub mod fault;
pub mod temp;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Deadline for quick host tools (`ip`, `tc`, `iptables`): they answer in milliseconds.
pub const QUICK: Duration = Duration::from_secs(30);
/// Deadline for a CNI plugin run (a normal one takes 10–40 ms; under heavy load, seconds).
pub const PLUGIN: Duration = Duration::from_secs(60);

/// Why a child process gave no output.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}: killed", secs(*.after))]
    Timeout { program: String, after: Duration },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProcError {
    /// Whether the program is not installed (or not executable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ProcError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn program_of(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` with `stdin` fed to it (or /dev/null), collecting stdout and stderr, and kills it
/// with its process group when it runs longer than `timeout`. The command's own stdio settings
/// are replaced.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, ProcError> {
    let program = program_of(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec; it only makes one prctl(2)
    // call through rustix (async-signal-safe), allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcError::Spawn { program: program.clone(), source })?;
    let pgid = rustix::process::Pid::from_raw(child.id() as i32);
    let input = stdin.map(<[u8]>::to_vec);
    let mut child_in = child.stdin.take();
    let mut child_out = child.stdout.take();
    let mut child_err = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    let (out, err, status) = std::thread::scope(|s| {
        if let (Some(data), Some(mut w)) = (input, child_in.take()) {
            // A tool that exits without reading its input closes the pipe: not an error.
            s.spawn(move || {
                let _ = w.write_all(&data);
            });
        }
        let out = s.spawn(move || {
            let mut v = Vec::new();
            if let Some(r) = child_out.as_mut() {
                let _ = r.read_to_end(&mut v);
            }
            v
        });
        let err = s.spawn(move || {
            let mut v = Vec::new();
            if let Some(r) = child_err.as_mut() {
                let _ = r.read_to_end(&mut v);
            }
            v
        });
        let waiter = s.spawn(move || {
            let r = child.wait();
            let _ = tx.send(());
            r
        });
        let deadline = Instant::now() + timeout;
        let timed_out = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err();
        if timed_out {
            if let Some(p) = pgid {
                // The group first (the tool's own children), then the tool itself.
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let status = waiter.join().unwrap_or_else(|_| Err(std::io::Error::other("waiter thread panicked")));
        // A grandchild that escaped the group may still hold the pipes: never wait for it
        // longer than the child itself.
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        (out, err, if timed_out { None } else { Some(status) })
    });
    match status {
        None => Err(ProcError::Timeout { program, after: timeout }),
        Some(Err(source)) => Err(ProcError::Wait { program, source }),
        Some(Ok(status)) => Ok(Output { status, stdout: out, stderr: err }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_feeds_input() {
        let o = output(Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]), Some(b"hello"), QUICK).unwrap();
        assert_eq!(o.stdout, b"hello");
        assert_eq!(o.stderr, b"err\n");
        assert_eq!(o.status.code(), Some(3));
    }

    #[test]
    fn a_hung_tool_and_its_children_are_killed_at_the_deadline() {
        let pidfile = std::env::temp_dir().join(format!("ignite-proc-test-{}", std::process::id()));
        let t = Instant::now();
        // The child starts a grandchild of its own, then hangs.
        let script = format!("sleep 60 & echo $! >{}; sleep 60", pidfile.display());
        let e = output(Command::new("sh").args(["-c", &script]), None, Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("sh did not finish within 0.5 s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "waited {:?}", t.elapsed());
        let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&pidfile);
        // Gone (or a zombie waiting for init to reap it) within a deadline.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() {
            assert!(Instant::now() < deadline, "the grandchild {grandchild} survived the deadline");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_missing_program_is_reported_as_such() {
        let e = output(&mut Command::new("/nonexistent/tool"), None, QUICK).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}
