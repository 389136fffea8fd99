//! `ignite-agent`: the guest side of `ignite exec` and `ignite cp`.
//!
//! Installed by ignite's init shim into the VM's own disk layer (`/.ignite/ignite-agent`) and
//! started, chrooted into the VM's root filesystem, just before the shim hands PID 1 over to
//! the image's init. It needs neither sshd nor a network: it serves the protocol of
//! [`ignite_agent::proto`] on a virtio-serial port.
//!
//! `ignite-agent [--port DEV]` runs a watchdog that (re)starts `ignite-agent --worker`
//! whenever the worker dies (a guest `kill -9` costs the open execs, not the agent). The
//! worker sends `Hello`, then serves requests: each `Open` runs a command (pipes, or a
//! pseudo-terminal in its own session), unpacks a tar stream (`Put`) or sends one (`Get`),
//! or gives a clone its identity (`Identity`, see [`identity`]), with per-channel flow
//! control, signals and window sizes, and ends with one `Exit` frame. The blocking work of
//! each (pumps, waits, files) runs on the kept worker threads of [`pool`].
#![allow(unsafe_code)] // posix_spawn (`spawn`), the vsock socket calls and the network ioctls of `identity`, each with its SAFETY argument

mod identity;
mod pool;
mod spawn;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_agent::archive;
use ignite_agent::flow::Credit;
use ignite_agent::proto::{
    ExecRequest, Exit, Frame, FrameReader, Hello, Identity, Kind, ReadError, Request, MAX_PAYLOAD, PORT_NAME,
    PROTOCOL_VERSION, WINDOW,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut port: Option<String> = None;
    let mut worker = false;
    let mut detach = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--port" if i + 1 < args.len() => {
                port = Some(args[i + 1].clone());
                i += 1;
            }
            "--worker" => worker = true,
            "--detach" => detach = true,
            "--version" => {
                println!("ignite-agent {} (protocol {PROTOCOL_VERSION})", env!("CARGO_PKG_VERSION"));
                return;
            }
            a => {
                eprintln!("ignite-agent: unknown argument {a:?}; usage: ignite-agent [--port DEVICE] [--detach]");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let port = port.unwrap_or_else(|| format!("/dev/virtio-ports/{PORT_NAME}"));
    if worker {
        std::process::exit(serve(&port));
    }
    if detach {
        std::process::exit(spawn_detached(&args[0], &port));
    }
    watchdog(&args[0], &port);
}

/// `--detach`: starts the watchdog as a new process and returns once it runs.
///
/// The init shim runs `chroot /newroot ignite-agent --detach` in the foreground, then
/// `switch_root`s, which empties the initramfs. A shell's background job (`agent &`) would
/// still be opening the initramfs's `/dev/null` for its stdin at that moment (ash does that
/// for every asynchronous command), and lose the race one boot in four; this child needs
/// nothing outside the VM's root: its stdin is a pipe whose other end is closed.
fn spawn_detached(me: &str, port: &str) -> i32 {
    match Command::new(me).args(["--port", port]).stdin(Stdio::piped()).spawn() {
        Ok(mut child) => {
            drop(child.stdin.take());
            0
        }
        Err(e) => {
            eprintln!("ignite-agent: cannot start: {e}");
            1
        }
    }
}

/// Keeps one worker running. A worker that dies right away (no port, say) is restarted
/// with a growing pause, at most 5 s.
fn watchdog(me: &str, port: &str) -> ! {
    let _ = rustix::process::setsid();
    let mut pause = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        match Command::new(me).args(["--worker", "--port", port]).status() {
            Ok(s) if !s.success() => eprintln!("ignite-agent: worker ended ({s}); restarting"),
            Ok(_) => {}
            Err(e) => eprintln!("ignite-agent: cannot start the worker: {e}"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(100);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

type Sink = Box<dyn Write + Send>;
type Source = Box<dyn Read + Send>;

struct Chan {
    input: Option<Sender<Vec<u8>>>,
    credit: Arc<Credit>,
    pgid: Option<i32>,
    pty: Option<Arc<OwnedFd>>,
}

struct Agent {
    out: Mutex<File>,
    chans: Mutex<HashMap<u32, Chan>>,
}

impl Agent {
    fn send(&self, f: &Frame) {
        let bytes = f.encode();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // The port refuses writes while no host end is connected: keep trying.
        let mut written = 0;
        while written < bytes.len() {
            match out.write(&bytes[written..]) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn finish(&self, chan: u32, exit: Exit) {
        if let Some(c) = self.chans.lock().unwrap_or_else(|e| e.into_inner()).remove(&chan) {
            c.credit.close();
        }
        self.send(&Frame::exit(chan, &exit));
    }

    /// Sends stream data, waiting for credit.
    fn stream(&self, kind: Kind, chan: u32, credit: &Credit, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let Some(n) = credit.take(data.len().min(MAX_PAYLOAD)) else { return false };
            self.send(&Frame::new(kind, chan, data[..n].to_vec()));
            data = &data[n..];
        }
        true
    }
}

/// Serves the host over `port`: a virtio-serial device (its host end may connect and go), or
/// `vsock:<port>`, a vsock port the host connects to (one connection at a time; when one ends,
/// the next is accepted).
fn serve(port: &str) -> i32 {
    if let Some(p) = port.strip_prefix("vsock:") {
        let Ok(p) = p.parse::<u32>() else {
            eprintln!("ignite-agent: bad vsock port {p:?}");
            return 2;
        };
        let listener = match vsock_listen(p) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ignite-agent: cannot listen on vsock port {p}: {e}");
                return 1;
            }
        };
        loop {
            match vsock_accept(&listener) {
                Ok(conn) => {
                    serve_stream(File::from(conn), true);
                }
                Err(e) => {
                    eprintln!("ignite-agent: vsock accept: {e}");
                    return 1;
                }
            }
        }
    }
    match std::fs::OpenOptions::new().read(true).write(true).open(port) {
        Ok(dev) => serve_stream(dev, false),
        Err(e) => {
            eprintln!("ignite-agent: cannot open {port}: {e}");
            1
        }
    }
}

/// A listening vsock stream socket on `port`, any CID.
fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the result is checked before use and owned
    // by the OwnedFd from then on.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value, the fields are set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes, alive for the call; fd is valid.
    if unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a valid, bound socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 4) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn vsock_accept(listener: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    loop {
        // SAFETY: accept4(2) on a valid listening socket, without asking for the peer address.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor accept4 just returned, owned by nothing else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Speaks the protocol over one stream. `ends_at_eof`: a connection (vsock) ends at end of
/// file; a virtio-serial device reads end of file while no host end is connected.
fn serve_stream(dev: File, ends_at_eof: bool) -> i32 {
    let reader = match dev.try_clone() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ignite-agent: {e}");
            return 1;
        }
    };
    let host = if ends_at_eof { None } else { HostSignal::arm(&reader) };
    let agent = Arc::new(Agent { out: Mutex::new(dev), chans: Mutex::new(HashMap::new()) });
    agent.send(&Frame::json(Kind::Hello, 0, &Hello { version: PROTOCOL_VERSION, pid: std::process::id() }));
    let mut frames = FrameReader::new(reader);
    loop {
        let f = match frames.read_frame() {
            Ok(f) => f,
            Err(ReadError::Eof) if ends_at_eof => return 0,
            // No host end connected: reads see end of file until one is.
            Err(ReadError::Eof) => {
                match &host {
                    Some(h) => h.wait(HOST_WAIT),
                    None => std::thread::sleep(HOST_WAIT),
                }
                continue;
            }
            Err(e) => {
                eprintln!("ignite-agent: {e}");
                return 1;
            }
        };
        handle(&agent, f);
    }
}

/// The longest wait for the host end of the port between two reads.
const HOST_WAIT: Duration = Duration::from_millis(50);

/// The host end of a virtio-serial port connecting, as a signal: the guest's virtio_console
/// raises SIGIO on a port opened `O_ASYNC` when its host end connects or goes, and when data
/// comes. Reads see end of file while no host end is connected, and cannot wait for one
/// (`poll` reports the hang-up at once); without the signal the worker found out by reading
/// again every 50 ms, so a guest resumed from a snapshot (whose new supervisor connects once
/// the VMM runs) answered it 0-50 ms late.
struct HostSignal {
    set: libc::sigset_t,
}

/// `struct f_owner_ex` and its constants (Linux's `asm-generic/fcntl.h`; not in the libc
/// crate for this target).
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

impl HostSignal {
    /// Asks for SIGIO on `port`, aimed at the calling thread, which blocks it (it is only
    /// ever taken by [`HostSignal::wait`], never delivered). None where the port cannot
    /// signal; the caller then reads again after a pause.
    fn arm(port: &File) -> Option<HostSignal> {
        let fd = port.as_raw_fd();
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid sigset_t; SIGIO is blocked in this thread only, before the port may
        // raise it (its default action ends the process). Children get an empty mask (`spawn`).
        let blocked = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGIO);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0
        };
        if !blocked {
            return None;
        }
        let owner = FOwnerEx { kind: F_OWNER_TID, pid: rustix::thread::gettid().as_raw_nonzero().get() };
        // SAFETY: F_SETOWN_EX takes a pointer to a struct f_owner_ex, valid for the call.
        if unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner) } < 0 {
            return None;
        }
        // SAFETY: F_GETFL and F_SETFL on a valid descriptor, with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) } < 0 {
            return None;
        }
        Some(HostSignal { set })
    }

    /// Waits until the port signals (a signal already pending returns at once) or `max` has
    /// passed.
    fn wait(&self, max: Duration) {
        let ts = libc::timespec { tv_sec: max.as_secs() as libc::time_t, tv_nsec: max.subsec_nanos() as libc::c_long };
        // SAFETY: a valid sigset_t holding SIGIO (blocked in this thread) and a valid timespec;
        // no siginfo is asked for. A timeout or an interruption only ends the wait.
        unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
    }
}

fn handle(agent: &Arc<Agent>, f: Frame) {
    let chan = f.chan;
    let with = |g: &dyn Fn(&mut Chan)| {
        if let Some(c) = agent.chans.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&chan) {
            g(c)
        }
    };
    match f.kind {
        Kind::Ping => agent.send(&Frame::new(Kind::Pong, 0, f.payload)),
        Kind::Open => {
            if chan == 0 || agent.chans.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&chan) {
                agent.send(&Frame::exit(chan, &Exit::failed(format!("channel {chan} is in use"))));
                return;
            }
            match f.parse::<Request>() {
                Ok(Request::Exec(r)) => exec(agent, chan, r),
                Ok(Request::Put { path }) => put(agent, chan, path),
                Ok(Request::Get { path }) => get(agent, chan, path),
                Ok(Request::Identity(id)) => set_identity(agent, chan, id),
                Err(e) => agent.send(&Frame::exit(chan, &Exit::failed(e.to_string()))),
            }
        }
        Kind::Stdin => {
            let mut c = agent.chans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = c.get_mut(&chan) {
                if f.payload.is_empty() {
                    c.input = None; // end of input
                } else if let Some(tx) = &c.input {
                    let _ = tx.send(f.payload);
                }
            }
        }
        Kind::Window => {
            if let Ok(n) = f.credit() {
                with(&|c| c.credit.add(n));
            }
        }
        Kind::Signal => {
            if let Some(sig) = f.signal().ok().and_then(rustix::process::Signal::from_named_raw) {
                with(&|c| {
                    if let Some(p) = c.pgid.and_then(rustix::process::Pid::from_raw) {
                        let _ = rustix::process::kill_process_group(p, sig);
                    }
                });
            }
        }
        Kind::Resize => {
            if let Ok((rows, cols)) = f.size() {
                with(&|c| {
                    if let Some(m) = &c.pty {
                        let ws = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                        let _ = rustix::termios::tcsetwinsize(m.as_fd(), ws);
                    }
                });
            }
        }
        Kind::Close => {
            if let Some(c) = agent.chans.lock().unwrap_or_else(|e| e.into_inner()).remove(&chan) {
                c.credit.close();
                if let Some(p) = c.pgid.and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
            }
        }
        // Frames only the host receives.
        Kind::Hello | Kind::Pong | Kind::Stdout | Kind::Stderr | Kind::Exit => {}
    }
}

fn open_pty(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, std::path::PathBuf)> {
    use rustix::pty::OpenptFlags;
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = match rustix::pty::openpt(flags) {
        Ok(m) => m,
        // An init that mounts no devpts (busybox images often do not): mount it, as a
        // container runtime would.
        Err(rustix::io::Errno::NOENT) => {
            let _ = std::fs::create_dir_all("/dev/pts");
            rustix::mount::mount(
                "devpts",
                "/dev/pts",
                "devpts",
                rustix::mount::MountFlags::empty(),
                c"gid=5,mode=0620,ptmxmode=0666",
            )?;
            if !std::path::Path::new("/dev/ptmx").exists() {
                std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")?;
            }
            rustix::pty::openpt(flags)?
        }
        Err(e) => return Err(e.into()),
    };
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    if rows > 0 && cols > 0 {
        let ws = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        let _ = rustix::termios::tcsetwinsize(&master, ws);
    }
    Ok((master, std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()))))
}

/// root's home directory, from /etc/passwd (`/root` when it says nothing usable).
fn root_home() -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 6 && f[2] == "0" && f[5].starts_with('/')).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/root".into())
}

fn exec(agent: &Arc<Agent>, chan: u32, r: ExecRequest) {
    let Some(program) = r.argv.first() else {
        agent.send(&Frame::exit(chan, &Exit::failed("no command given")));
        return;
    };
    let home = root_home();
    let mut env: Vec<(&str, &str)> = vec![("PATH", DEFAULT_PATH), ("HOME", &home), ("USER", "root")];
    if r.tty {
        env.push(("TERM", "xterm"));
    }
    for (k, v) in &r.env {
        env.retain(|(old, _)| old != k);
        env.push((k, v));
    }
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // As over SSH: in the user's home unless told otherwise.
    let cwd =
        r.cwd.clone().unwrap_or_else(|| if std::path::Path::new(&home).is_dir() { home.clone() } else { "/".into() });
    let cannot_run = |e: std::io::Error| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => Some(127),
            std::io::ErrorKind::PermissionDenied => Some(126),
            _ => None,
        };
        Exit { code, signal: None, error: Some(format!("cannot run {program:?}: {e}")) }
    };
    // The child's ends of its standard streams (closed here once it runs), and the agent's.
    let mut pty_master = None;
    let (spawned, stdin_sink, outputs): (_, Sink, Vec<(Kind, Source)>) = if r.tty {
        let (master, tty) = match open_pty(r.rows, r.cols) {
            Ok(p) => p,
            Err(e) => {
                agent.send(&Frame::exit(chan, &Exit::failed(format!("cannot allocate a pseudo-terminal: {e}"))));
                return;
            }
        };
        let (Ok(w), Ok(rd)) = (master.try_clone(), master.try_clone()) else {
            agent.send(&Frame::exit(chan, &Exit::failed("cannot duplicate the pseudo-terminal")));
            return;
        };
        // The slave side is opened by the child only (its controlling terminal).
        let spec = spawn::Spec { argv: &r.argv, env: &env, cwd: &cwd, stdio: spawn::ChildStdio::Terminal(&tty) };
        let spawned = spawn::spawn(&spec);
        pty_master = Some(Arc::new(master));
        (spawned, Box::new(File::from(w)), vec![(Kind::Stdout, Box::new(File::from(rd)) as Source)])
    } else {
        let pipes = (std::io::pipe(), std::io::pipe(), std::io::pipe());
        let (Ok((in_r, in_w)), Ok((out_r, out_w)), Ok((err_r, err_w))) = pipes else {
            agent.send(&Frame::exit(chan, &Exit::failed("cannot make the command's pipes")));
            return;
        };
        let stdio = spawn::ChildStdio::Fds([in_r.as_fd(), out_w.as_fd(), err_w.as_fd()]);
        let spawned = spawn::spawn(&spawn::Spec { argv: &r.argv, env: &env, cwd: &cwd, stdio });
        (spawned, Box::new(in_w), vec![(Kind::Stdout, Box::new(out_r) as Source), (Kind::Stderr, Box::new(err_r))])
    };
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            agent.send(&Frame::exit(chan, &cannot_run(e)));
            return;
        }
    };
    let credit = Credit::new(WINDOW);
    let (tx, rx) = channel::<Vec<u8>>();
    agent
        .chans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(chan, Chan { input: Some(tx), credit: credit.clone(), pgid: Some(pid), pty: pty_master.clone() });
    let mut pumps = Vec::new();
    {
        let agent = agent.clone();
        pool::POOL.run(move || input_pump(&agent, chan, rx, stdin_sink));
    }
    for (kind, mut r) in outputs {
        let agent = agent.clone();
        let credit = credit.clone();
        pumps.push(pool::POOL.run(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !agent.stream(kind, chan, &credit, &buf[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break, // EIO: the terminal's last slave closed
                }
            }
        }));
    }
    let agent = agent.clone();
    pool::POOL.run(move || {
        let status = wait(pid);
        if pty_master.is_some() {
            // Output still buffered in the terminal arrives before EIO; a background job that
            // keeps the terminal open must not hold the exit back forever.
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in pumps {
            p.wait();
        }
        let exit = match status {
            Ok(s) => Exit { code: s.code(), signal: s.signal(), error: None },
            Err(e) => Exit::failed(format!("wait: {e}")),
        };
        agent.finish(chan, exit);
    });
}

/// Waits for the child `pid` to end.
fn wait(pid: libc::pid_t) -> std::io::Result<std::process::ExitStatus> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("no such child"))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(std::process::ExitStatus::from_raw(status.as_raw())),
            Err(rustix::io::Errno::INTR) => {}
            // Without WNOHANG the kernel answers with a status or an error.
            Ok(None) => return Err(std::io::Error::other("waitpid returned no status")),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Hands input to the process (or consumer) and returns credit as it is taken.
fn input_pump(agent: &Agent, chan: u32, rx: Receiver<Vec<u8>>, mut sink: Box<dyn Write + Send>) {
    for data in rx {
        let n = data.len() as u32;
        if sink.write_all(&data).is_err() {
            // The process closed its input: keep returning credit so the host is not stuck.
            agent.send(&Frame::window(chan, n));
            continue;
        }
        let _ = sink.flush();
        agent.send(&Frame::window(chan, n));
    }
    // End of input: dropping the sink closes the process's stdin (for a terminal, send EOT).
}

/// Input of a channel as a byte stream (for `Put`).
struct ChanReader {
    agent: Arc<Agent>,
    chan: u32,
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(d) => {
                    self.agent.send(&Frame::window(self.chan, d.len() as u32));
                    self.buf = d;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn put(agent: &Arc<Agent>, chan: u32, path: String) {
    let (tx, rx) = channel::<Vec<u8>>();
    let credit = Credit::new(0);
    agent
        .chans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(chan, Chan { input: Some(tx), credit, pgid: None, pty: None });
    let agent = agent.clone();
    pool::POOL.run(move || {
        let mut r = ChanReader { agent: agent.clone(), chan, rx, buf: Vec::new(), pos: 0 };
        let exit = match archive::unpack(&mut r, std::path::Path::new(&path), archive::Receiver::Guest) {
            Ok(_) => {
                // Drain to the end of input so the host's last frames are accounted for.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                Exit { code: Some(0), ..Default::default() }
            }
            Err(e) => Exit::failed(e),
        };
        agent.finish(chan, exit);
    });
}

/// Output of a channel as a byte stream (for `Get`).
struct ChanWriter {
    agent: Arc<Agent>,
    chan: u32,
    credit: Arc<Credit>,
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.agent.stream(Kind::Stdout, self.chan, &self.credit, data) {
            Ok(data.len())
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "channel closed by the host"))
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn get(agent: &Arc<Agent>, chan: u32, path: String) {
    let credit = Credit::new(WINDOW);
    agent
        .chans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(chan, Chan { input: None, credit: credit.clone(), pgid: None, pty: None });
    let agent = agent.clone();
    pool::POOL.run(move || {
        let w = ChanWriter { agent: agent.clone(), chan, credit };
        let exit = match archive::pack(std::path::Path::new(&path), w) {
            Ok(()) => Exit { code: Some(0), ..Default::default() },
            Err(e) => Exit::failed(format!("{path}: {e}")),
        };
        agent.finish(chan, exit);
    });
}

/// `Identity`: no input, no output, one `Exit` (off the reader thread: it writes files).
fn set_identity(agent: &Arc<Agent>, chan: u32, id: Identity) {
    agent
        .chans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(chan, Chan { input: None, credit: Credit::new(0), pgid: None, pty: None });
    let agent = agent.clone();
    pool::POOL.run(move || {
        let exit = identity::apply(&id);
        agent.finish(chan, exit);
    });
}
