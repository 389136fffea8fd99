//! Starting the process of an `exec` request: posix_spawn(3), which glibc does with
//! clone(CLONE_VM | CLONE_VFORK): the child runs in the agent's memory until it execs, so
//! nothing of the agent's address space is copied. A fork copies the page tables of every
//! mapping of the agent (its threads' stacks, its heap) and both sides then take
//! copy-on-write faults; in a VM resumed from a snapshot under TCG each of those kernel paths
//! is translated afresh.
//!
//! Owns: finding the program on the command's own `PATH` ([`find_program`], as execvp(3)
//! would), and the child's set-up ([`spawn`]): its standard descriptors, working directory,
//! the standard signals at their default and none blocked (the agent may have been started
//! with some ignored, which a child would inherit; glibc leaves its two internal real-time
//! signals, 32 and 33, ignored in any child it spawns), and either a process group of its own
//! or, for a terminal, a session of its own with the terminal as its controlling one.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The child's standard input, output and error.
pub enum ChildStdio<'a> {
    /// These three descriptors, as 0, 1 and 2.
    Fds([BorrowedFd<'a>; 3]),
    /// The terminal at this path (a pseudo-terminal's slave side), opened by the child in a
    /// session of its own, so that it becomes the session's controlling terminal.
    Terminal(&'a Path),
}

/// What to start.
pub struct Spec<'a> {
    pub argv: &'a [String],
    /// The whole environment, `KEY=value`.
    pub env: &'a [String],
    pub cwd: &'a str,
    pub stdio: ChildStdio<'a>,
}

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

/// The file `program` names, as execvp(3) finds it: itself when it contains a `/`, else the
/// first executable regular file of that name in the directories of `path` (an empty entry
/// is the working directory). NotFound when there is none; PermissionDenied when there are
/// files of that name but none may be executed.
pub fn find_program(program: &str, path: &str, cwd: &str) -> io::Result<PathBuf> {
    // Docker's words for the same two cases.
    let not_found = || io::Error::new(io::ErrorKind::NotFound, "executable file not found in $PATH");
    if program.is_empty() {
        return Err(not_found());
    }
    if program.contains('/') {
        return Ok(Path::new(cwd).join(program));
    }
    let mut denied = false;
    for dir in path.split(':') {
        let candidate = Path::new(if dir.is_empty() { cwd } else { dir }).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else { continue };
        if !meta.is_file() {
            continue;
        }
        match rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK) {
            Ok(()) => return Ok(candidate),
            Err(_) => denied = true,
        }
    }
    Err(if denied {
        io::Error::new(io::ErrorKind::PermissionDenied, "permission denied (in $PATH, but not executable)")
    } else {
        not_found()
    })
}

/// Starts `spec` (its program found on the `PATH` of its environment); the child's pid.
pub fn spawn(spec: &Spec<'_>) -> io::Result<libc::pid_t> {
    let program = spec.argv.first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let path_var = spec.env.iter().rev().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or("");
    let file = find_program(program, path_var, spec.cwd)?;
    let argv = spec.argv.iter().map(|a| cstring("an argument", a.as_str())).collect::<io::Result<Vec<_>>>()?;
    let env =
        spec.env.iter().map(|kv| cstring("an environment variable", kv.as_str())).collect::<io::Result<Vec<_>>>()?;
    let file = cstring("the program's path", file.as_os_str().as_bytes())?;
    match spawn_file(&file, &argv, &env, spec) {
        // A file without `#!` that the kernel does not know how to run: a shell script, as
        // execvp(3) takes it.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh_argv = vec![c"/bin/sh".to_owned(), file.clone()];
            sh_argv.extend(argv.into_iter().skip(1));
            spawn_file(c"/bin/sh", &sh_argv, &env, spec)
        }
        r => r,
    }
}

/// A `posix_spawn_file_actions_t`, destroyed when dropped.
struct FileActions(libc::posix_spawn_file_actions_t);

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawn_file_actions_init (the only constructor), destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// A `posix_spawnattr_t`, destroyed when dropped.
struct Attrs(libc::posix_spawnattr_t);

impl Drop for Attrs {
    fn drop(&mut self) {
        // SAFETY: initialised by posix_spawnattr_init (the only constructor), destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// A posix_spawn* result (an error number, not -1 and errno) as a Result.
fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

fn spawn_file(file: &CStr, argv: &[CString], env: &[CString], spec: &Spec<'_>) -> io::Result<libc::pid_t> {
    let cwd = cstring("the working directory", spec.cwd)?;
    let terminal = match &spec.stdio {
        ChildStdio::Terminal(p) => Some(cstring("the terminal's path", p.as_os_str().as_bytes())?),
        ChildStdio::Fds(_) => None,
    };
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = env.iter().map(|a| a.as_ptr().cast_mut()).collect();
    env_ptrs.push(std::ptr::null_mut());

    // SAFETY (the calls below): each posix_spawn* function gets a pointer to an object
    // initialised by its *_init (done first, destroyed by Drop), and NUL-terminated strings
    // and NULL-terminated pointer arrays that outlive the posix_spawn call.
    let mut actions = {
        let mut a = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: see above; `a` is written by init before it is read.
        check(unsafe { libc::posix_spawn_file_actions_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        FileActions(unsafe { a.assume_init() })
    };
    let mut attrs = {
        let mut a = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: see above; `a` is written by init before it is read.
        check(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Attrs(unsafe { a.assume_init() })
    };
    let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    match (&spec.stdio, &terminal) {
        (ChildStdio::Fds(fds), _) => {
            for (target, fd) in fds.iter().enumerate() {
                // SAFETY: see above; the descriptor is open (borrowed) for the call.
                check(unsafe {
                    libc::posix_spawn_file_actions_adddup2(&mut actions.0, fd.as_raw_fd(), target as libc::c_int)
                })?;
            }
            flags |= libc::POSIX_SPAWN_SETPGROUP; // process group 0: its own
        }
        (ChildStdio::Terminal(_), Some(tty)) => {
            // Opened after setsid (the attributes apply before the file actions), without
            // O_NOCTTY: the terminal becomes the new session's controlling terminal.
            // SAFETY: see above.
            check(unsafe { libc::posix_spawn_file_actions_addopen(&mut actions.0, 0, tty.as_ptr(), libc::O_RDWR, 0) })?;
            for target in [1, 2] {
                // SAFETY: see above.
                check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut actions.0, 0, target) })?;
            }
            flags |= libc::c_int::from(libc::POSIX_SPAWN_SETSID);
        }
        (ChildStdio::Terminal(_), None) => unreachable!("a terminal's path is made above"),
    }
    // SAFETY: see above.
    check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, cwd.as_ptr()) })?;
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut standard = none;
    // SAFETY: valid sigset_t pointers.
    unsafe {
        libc::sigemptyset(&mut none);
        libc::sigemptyset(&mut standard);
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaddset(&mut standard, sig);
            }
        }
    }
    // SAFETY: see above.
    check(unsafe { libc::posix_spawnattr_setsigmask(&mut attrs.0, &none) })?;
    // SAFETY: see above.
    check(unsafe { libc::posix_spawnattr_setsigdefault(&mut attrs.0, &standard) })?;
    // SAFETY: see above.
    check(unsafe { libc::posix_spawnattr_setflags(&mut attrs.0, flags as libc::c_short) })?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: see above; `pid` is a valid out pointer.
    check(unsafe {
        libc::posix_spawn(&mut pid, file.as_ptr(), &actions.0, &attrs.0, argv_ptrs.as_ptr(), env_ptrs.as_ptr())
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let exe = d.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let plain = d.path().join("data");
        std::fs::write(&plain, "").unwrap();
        std::fs::create_dir(d.path().join("adir")).unwrap();
        assert_eq!(find_program("tool", &format!("/nonexistent:{dir}"), "/").unwrap(), exe);
        assert_eq!(find_program("sh", "/nonexistent:/bin", "/").unwrap(), Path::new("/bin/sh"));
        // An empty PATH entry: the working directory.
        assert_eq!(find_program("tool", "/nonexistent:", dir).unwrap(), exe);
        assert_eq!(find_program("./tool", "", dir).unwrap(), d.path().join("./tool"));
        assert_eq!(find_program("/x/y", "", "/").unwrap(), Path::new("/x/y"));
        let e = find_program("nope", dir, "/").unwrap_err();
        assert_eq!((e.kind(), e.to_string().as_str()), (io::ErrorKind::NotFound, "executable file not found in $PATH"));
        assert_eq!(find_program("adir", dir, "/").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(find_program("", dir, "/").unwrap_err().kind(), io::ErrorKind::NotFound);
        // Tests run as root, for whom access(X_OK) is true of any file with an x bit: the
        // denied case needs a file with none.
        assert_eq!(find_program("data", dir, "/").unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    fn run(argv: &[&str], env: &[&str], cwd: &str) -> (String, i32) {
        let (mut r, w) = std::io::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        let spec = Spec { argv: &argv, env: &env, cwd, stdio: ChildStdio::Fds([null.as_fd(), w.as_fd(), w.as_fd()]) };
        let pid = spawn(&spec).unwrap();
        drop(w);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()).unwrap().unwrap();
        (out, status.exit_status().unwrap_or(-1))
    }

    #[test]
    fn the_child_gets_its_environment_directory_group_and_default_signals() {
        let d = tempfile::tempdir().unwrap();
        let cwd = d.path().to_str().unwrap();
        // SIGINT ignored here (as the init shim may start the agent): not in the child.
        // SAFETY: changes this test process's disposition of SIGINT, restored below.
        let old = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        let (out, code) = run(
            &[
                "sh",
                "-c",
                "echo $FOO; pwd; grep -E '^(SigBlk|SigIgn)' /proc/self/status; ps -o pgid= -p $$; echo $$; exit 3",
            ],
            &["PATH=/usr/bin:/bin", "FOO=bar"],
            cwd,
        );
        // SAFETY: restores the disposition saved above.
        unsafe { libc::signal(libc::SIGINT, old) };
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(code, 3, "{out}");
        assert_eq!(lines[0], "bar");
        assert_eq!(lines[1], std::fs::canonicalize(cwd).unwrap().to_str().unwrap());
        assert_eq!(lines[2], "SigBlk:\t0000000000000000", "{out}");
        // The standard signals (1-31) at their default; glibc's posix_spawn leaves its two
        // internal real-time signals (32, 33) ignored, as in any child it starts.
        let ignored = u64::from_str_radix(lines[3].trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(ignored & 0x7fff_ffff, 0, "{out}");
        // Its own process group: its pgid is its pid.
        assert_eq!(lines[4].trim(), lines[5].trim(), "{out}");
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_under_sh_and_errors_are_the_execs() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("s");
        std::fs::write(&script, "echo from-script \"$1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (out, code) = run(&[script.to_str().unwrap(), "arg"], &["PATH=/bin"], "/");
        assert_eq!((out.as_str(), code), ("from-script arg\n", 0));
        let argv = vec!["no-such-program".to_string()];
        let spec = Spec { argv: &argv, env: &[], cwd: "/", stdio: ChildStdio::Terminal(Path::new("/dev/null")) };
        assert_eq!(spawn(&spec).unwrap_err().kind(), io::ErrorKind::NotFound);
        let argv = vec!["sh".to_string(), "a\0b".to_string()];
        let env = vec!["PATH=/bin".to_string()];
        let spec = Spec { argv: &argv, env: &env, cwd: "/", stdio: ChildStdio::Terminal(Path::new("/dev/null")) };
        assert_eq!(spawn(&spec).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let argv = vec!["sh".to_string()];
        let spec =
            Spec { argv: &argv, env: &env, cwd: "/nonexistent", stdio: ChildStdio::Terminal(Path::new("/dev/null")) };
        assert_eq!(spawn(&spec).unwrap_err().kind(), io::ErrorKind::NotFound, "a working directory that is not there");
    }
}
