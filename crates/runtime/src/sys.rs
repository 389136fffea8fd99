//! Host process primitives the runtime needs: detaching, parent-death signals, liveness and
//! signalling of supervisor processes. The only module of this crate with `unsafe` (one
//! `pre_exec` hook), each block with its `// SAFETY:` argument.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Pid, Signal};

/// Makes `cmd`'s child receive SIGKILL when the process that spawned it dies, so a VMM never
/// outlives its supervisor (even after `kill -9` of the supervisor).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec; it only calls prctl(2)
    // through rustix (an async-signal-safe syscall wrapper), allocates nothing and takes no
    // locks.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from)
        });
    }
}

/// Makes `cmd`'s child enter the network namespace `ns` (an open `/run/netns/<name>`) before
/// it execs: the VMM opens its taps there (no `ip netns exec` wrapper process).
pub fn enter_netns(cmd: &mut Command, ns: std::fs::File) {
    // SAFETY: the closure runs in the child between fork and exec; setns(2) through rustix is
    // an async-signal-safe syscall wrapper; it borrows a descriptor the closure owns (moved in
    // before the fork), allocates nothing and takes no locks. A single-threaded child may
    // change its network namespace.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
        });
    }
}

/// Lets `cmd`'s child inherit the descriptors `fds` (leases: see `lease`). Only that child:
/// the flag is cleared between fork and exec, so tools spawned meanwhile by other threads
/// never inherit them.
pub fn inherit_fds(cmd: &mut Command, fds: Vec<i32>) {
    // SAFETY: the closure runs in the child between fork and exec; fcntl(2) is async-signal-
    // safe; it borrows descriptors that stay open in the parent until after the spawn
    // returns (the caller holds the leases), allocates nothing (the Vec was moved in before
    // the fork) and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Marks every descriptor from 3 up close-on-exec: what a process inherited by accident (a
/// build tool's jobserver pipe, a caller's descriptor opened without `O_CLOEXEC`) is not
/// passed on to what it starts. Call at start-up, before anything is opened on purpose.
pub fn close_inherited_on_exec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: at start-up nothing in this process owns these descriptors yet (the
        // directory's own is closed by now: fcntl then fails with EBADF, which is ignored);
        // borrowing one for a single fcntl call changes only its close-on-exec flag.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC);
    }
}

/// Marks inherited descriptors close-on-exec again (the supervisor keeps its leases to
/// itself), after checking that they are open. Returns the ones that are.
pub fn keep_fds_to_self(fds: &[i32]) -> Vec<i32> {
    fds.iter()
        .copied()
        .filter(|&fd| {
            // SAFETY: `fd` was passed by `--hold-fd` and is owned by this process for its whole
            // life (it is never closed); borrowing it for one fcntl call is sound, and a
            // number that is not open makes fcntl fail with EBADF, which is handled.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC).is_ok()
        })
        .collect()
}

/// Gives the calling thread a mount namespace of its own (the jailer, single-threaded).
pub fn unshare_mount_namespace() -> std::io::Result<()> {
    // SAFETY: only CLONE_NEWNS: the file descriptor table stays shared, so no thread can
    // observe descriptors from an unshared table (the hazard `unshare_unsafe` warns about).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(std::io::Error::from)
}

/// Puts the calling process's future children in a new PID namespace (the supervisor, before
/// it starts its VMM: the VMM is that namespace's PID 1).
pub fn unshare_pid_namespace() -> std::io::Result<()> {
    // SAFETY: only CLONE_NEWPID, which affects children created afterwards; no descriptor
    // table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) }.map_err(std::io::Error::from)
}

/// Forks a single-threaded process (the jailer): `Ok(None)` in the child, `Ok(Some(pid))` in
/// the parent.
pub fn fork_single_threaded() -> std::io::Result<Option<u32>> {
    // Only the jailer calls this, a fresh process that started no thread.
    if std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1) != 1 {
        return Err(std::io::Error::other("fork from a process with threads"));
    }
    // SAFETY: the process has exactly one thread (checked above), so the child inherits no
    // lock held by another thread and may run any code, allocation included.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Ends the process as if `sig` had killed it (the jailer, passing on how its VMM ended).
pub fn die_of_signal(sig: i32) -> ! {
    // The jailer installs no handler: the signal's default action ends it the same way.
    if let Some(s) = Signal::from_named_raw(sig) {
        let _ = rustix::process::kill_process(rustix::process::getpid(), s);
    }
    std::process::exit(128 + sig);
}

/// Leaves `f` open across exec (its descriptor is returned and never closed here).
pub fn keep_open(f: std::fs::File) -> std::io::Result<i32> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released from an owned File: it is open and nothing else owns it.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(b, rustix::io::FdFlags::empty())?;
    Ok(fd)
}

/// Whether the pipe read end `fd` has hung up (its writer closed), without blocking; the
/// descriptor is marked close-on-exec as well.
pub fn hung_up(fd: i32) -> bool {
    // SAFETY: `fd` was inherited for this check and is owned by this process until exec.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC);
    let mut fds = [rustix::event::PollFd::new(&b, rustix::event::PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(n) if n > 0 => fds[0].revents().contains(rustix::event::PollFlags::HUP),
        _ => false,
    }
}

/// Starts a new session so the process survives its terminal closing.
pub fn detach_session() -> std::io::Result<()> {
    rustix::process::setsid().map(|_| ()).map_err(std::io::Error::from)
}

/// The supervisor's process name and `argv[0]`, whatever its binary is called: its spawner
/// passes it as `argv[0]` and the supervisor sets it as its name ([`name_this_process`]).
pub const SUPERVISOR_NAME: &str = "ignite-spawn";

/// Gives this process (its main thread) the supervisor's name, [`SUPERVISOR_NAME`]: the kernel
/// names a process after its binary's file, which `IGNITE_SPAWN` may call otherwise.
pub fn name_this_process() -> std::io::Result<()> {
    let name = std::ffi::CString::new(SUPERVISOR_NAME).map_err(std::io::Error::other)?;
    rustix::thread::set_name(&name).map_err(std::io::Error::from)
}

/// Whether `pid` is a live ignite supervisor for VM `uid` (guards against PID reuse by checking
/// the command line). A supervisor is alive until it has let go of everything it holds (the
/// VM's supervisor lease, a file lock): while it exits, its memory goes first (its command
/// line reads empty) and its open files after; a group leader that exited before its other
/// threads is a zombie while they, holding the files, still exit. Either was taken for dead,
/// and `ignite kill VM && ignite start VM` was refused ("already running") now and then.
pub fn is_supervisor_alive(pid: u32, uid: &str) -> bool {
    let proc = std::path::Path::new("/proc").join(pid.to_string());
    let (Ok(stat), Ok(cmdline)) = (std::fs::read_to_string(proc.join("stat")), std::fs::read(proc.join("cmdline")))
    else {
        return false;
    };
    let threads = || {
        let status = std::fs::read_to_string(proc.join("status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
    };
    supervisor_state(&stat, &cmdline, threads, uid)
}

/// [`is_supervisor_alive`] from a process's `/proc/<pid>/stat` and `cmdline`, and its count of
/// threads (asked only of a zombie).
fn supervisor_state(stat: &str, cmdline: &[u8], threads: impl FnOnce() -> Option<u32>, uid: &str) -> bool {
    let Some((head, rest)) = stat.rsplit_once(')') else { return false };
    if head.split_once('(').map(|(_, comm)| comm) != Some(SUPERVISOR_NAME) {
        return false;
    }
    if !cmdline.is_empty() {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_spawn = args.first().is_some_and(|a| a.ends_with(SUPERVISOR_NAME.as_bytes()));
        if !(is_spawn && args.contains(&uid.as_bytes())) {
            return false;
        }
    }
    // An empty command line: a supervisor exiting (its memory released), whose files are not
    // yet; or a zombie, dead once no thread of it is left.
    !rest.trim_start().starts_with('Z') || threads().is_some_and(|n| n > 1)
}

/// Whether any process with `pid` exists.
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn pid(p: u32) -> std::io::Result<Pid> {
    i32::try_from(p)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("invalid pid {p}")))
}

/// Sends SIGTERM.
pub fn terminate(p: u32) -> std::io::Result<()> {
    rustix::process::kill_process(pid(p)?, Signal::TERM).map_err(std::io::Error::from)
}

/// Sends SIGINT (the supervisor's "kill the VM now").
pub fn interrupt(p: u32) -> std::io::Result<()> {
    rustix::process::kill_process(pid(p)?, Signal::INT).map_err(std::io::Error::from)
}

/// Sends SIGKILL.
pub fn kill(p: u32) -> std::io::Result<()> {
    rustix::process::kill_process(pid(p)?, Signal::KILL).map_err(std::io::Error::from)
}

/// Host memory in MiB (MemTotal).
pub fn host_memory_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::supervisor_state;

    const UID: &str = "0123456789abcdef";

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn a_supervisor_is_alive_until_no_thread_of_it_is_left() {
        let ours = cmdline(&["/usr/lib/ignite/ignite-spawn", "--root", "/var/lib/ignite", UID]);
        let never = || -> Option<u32> { panic!("threads asked of a process that is not a zombie") };
        assert!(supervisor_state("42 (ignite-spawn) S 1 42", &ours, never, UID));
        // Exiting: its memory is gone (empty command line), its files are not yet.
        assert!(supervisor_state("42 (ignite-spawn) R 1 42", b"", never, UID));
        // A zombie leader whose other threads still exit, then one with none left.
        assert!(supervisor_state("42 (ignite-spawn) Z 1 42", b"", || Some(3), UID));
        assert!(!supervisor_state("42 (ignite-spawn) Z 1 42", b"", || Some(1), UID));
        assert!(!supervisor_state("42 (ignite-spawn) Z 1 42", &ours, || None, UID));
        // Another VM's supervisor, or another program, with that pid.
        let other = cmdline(&["/usr/lib/ignite/ignite-spawn", "fedcba9876543210"]);
        assert!(!supervisor_state("42 (ignite-spawn) S 1 42", &other, never, UID));
        assert!(!supervisor_state("42 (sleep) S 1 42", &cmdline(&["sleep", UID]), never, UID));
        assert!(!supervisor_state("42 (x) ignite-spawn) S 1 42", b"", never, UID));
        assert!(!supervisor_state("", b"", never, UID));
    }
}
