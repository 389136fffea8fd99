//! The host side of the guest agent (`ignite-agent`, crate `ignite-agent`).
//!
//! Owns: finding the agent binary to inject, the per-VM multiplexer that runs inside the
//! VM's supervisor, and the client that `ignite exec`/`ignite cp` use.
//!
//! ```text
//! ignite exec ──unix── vm/<uid>/agent.sock ── supervisor (Mux) ──unix── vm/<uid>/agent-vmm.sock
//! ignite cp   ──unix──┘     one channel per client            QEMU chardev ── virtio-serial ── agent
//! ```
//!
//! The guest is untrusted. The multiplexer holds at most one frame being decoded plus one
//! flow-control window per channel; a guest that sends more than its window fails that
//! channel, a malformed frame fails every open channel and the reader resynchronises on the
//! next `Hello`/`Pong`, and a guest that stops answering pings for [`DEAD_AFTER`] fails the
//! open channels. None of this can stop the supervisor or its VM.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ignite_agent::flow::Credit;
use ignite_agent::proto::{
    Decoder, ExecRequest, Exit, Frame, FrameReader, Kind, ReadError, Request, MAX_PAYLOAD, WINDOW,
};

/// The VMM's end of the virtio-serial port (a QEMU chardev server).
pub const AGENT_VMM_SOCKET: &str = "agent-vmm.sock";
/// Where the init shim installs the agent in the VM's own disk layer.
pub const GUEST_PATH: &str = "/.ignite/ignite-agent";
/// Silence after which a guest agent with open channels counts as gone (the supervisor's
/// setting; tests pass their own to [`start_mux`]).
pub const DEAD_AFTER: Duration = Duration::from_secs(15);

/// What the host side can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "VM {vm} has no guest agent (created with --agent=false, or no ignite-agent binary was found at its start)"
    )]
    NotEnabled { vm: String },
    #[error("the guest agent of VM {vm} did not answer within {secs} s (is the VM still booting, or was the agent stopped inside the guest?)")]
    NotReady { vm: String, secs: u64 },
    #[error("lost the connection to VM {vm}'s guest agent: {reason}")]
    Lost { vm: String, reason: String },
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The static guest agent built with this ignite (by `build.rs`; empty when the build was told
/// to leave it out).
const EMBEDDED: &[u8] = include_bytes!(env!("IGNITE_EMBEDDED_AGENT"));

/// The static agent binary to inject: `$IGNITE_AGENT`, else the one built into ignite (written
/// once to `<state root>/agent/ignite-agent-<hash>`), else `ignite-agent` next to the running
/// executable, else `/usr/local/lib/ignite/ignite-agent` or `/usr/lib/ignite/ignite-agent`.
/// Only a statically linked executable qualifies: images need not have a C library.
pub fn find_binary(root: &Path) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("IGNITE_AGENT") {
        let p = PathBuf::from(p);
        return check_static(&p).map(|_| p);
    }
    if !EMBEDDED.is_empty() {
        match write_embedded(root) {
            Ok(p) => return Ok(p),
            Err(e) => tracing::warn!("cannot write the built-in guest agent under {}: {e}", root.display()),
        }
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(dir.join("ignite-agent"));
    }
    candidates.push("/usr/local/lib/ignite/ignite-agent".into());
    candidates.push("/usr/lib/ignite/ignite-agent".into());
    let mut why = Vec::new();
    for c in &candidates {
        match check_static(c) {
            Ok(()) => return Ok(c.clone()),
            Err(e) => why.push(e),
        }
    }
    Err(format!(
        "no usable ignite-agent ({}); build one with scripts/build-agent.sh or set IGNITE_AGENT",
        why.join("; ")
    ))
}

/// The built-in agent as a file under the state root, written atomically the first time.
fn write_embedded(root: &Path) -> std::io::Result<PathBuf> {
    use sha2::Digest;
    let hash = format!("{:x}", sha2::Sha256::digest(EMBEDDED));
    let dir = root.join("agent");
    let path = dir.join(format!("ignite-agent-{}", &hash[..16]));
    if !path.is_file() {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".ignite-agent.tmp-{}", std::process::id()));
        std::fs::write(&tmp, EMBEDDED)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)?;
    }
    check_static(&path).map_err(std::io::Error::other)?;
    Ok(path)
}

/// Whether `p` is a static x86-64 executable (see [`ignite_disk::elf_static`]).
pub fn check_static(p: &Path) -> Result<(), String> {
    match ignite_disk::elf_static(p) {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err(format!(
            "{}: dynamically linked (it needs a C library the image may not have); build it with -C target-feature=+crt-static",
            p.display()
        )),
        Ok(None) => Err(format!("{}: not an x86-64 ELF executable", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

// ---------------------------------------------------------------------------------------
// The multiplexer (in the supervisor)

struct Client {
    tx: Sender<Frame>,
    queued: Arc<AtomicUsize>,
}

struct Mux {
    guest: Mutex<Option<UnixStream>>,
    ready: Mutex<bool>,
    ready_cv: Condvar,
    chans: Mutex<HashMap<u32, Client>>,
    next_chan: AtomicU32,
    last_heard: Mutex<Instant>,
    reset_decoder: AtomicBool,
    dead_after: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mux {
    fn to_guest(&self, f: &Frame) -> bool {
        let mut g = lock(&self.guest);
        match g.as_mut() {
            Some(s) => s.write_all(&f.encode()).is_ok(),
            None => false,
        }
    }

    fn set_ready(&self, r: bool) {
        *lock(&self.ready) = r;
        self.ready_cv.notify_all();
    }

    /// Ends every open channel with `msg`.
    fn fail_all(&self, msg: &str) {
        let chans: Vec<(u32, Client)> = lock(&self.chans).drain().collect();
        for (chan, c) in chans {
            let _ = c.tx.send(Frame::exit(1, &Exit::failed(msg)));
            self.to_guest(&Frame::new(Kind::Close, chan, Vec::new()));
        }
    }

    fn fail_one(&self, chan: u32, msg: &str) {
        if let Some(c) = lock(&self.chans).remove(&chan) {
            let _ = c.tx.send(Frame::exit(1, &Exit::failed(msg)));
        }
        self.to_guest(&Frame::new(Kind::Close, chan, Vec::new()));
    }

    fn on_guest_frame(&self, f: Frame) {
        match f.kind {
            Kind::Hello => {
                let restarted = *lock(&self.ready) && !lock(&self.chans).is_empty();
                if restarted {
                    eprintln!("ignite-spawn: the guest agent restarted");
                    self.fail_all("the guest agent restarted");
                }
                *lock(&self.last_heard) = Instant::now();
                self.set_ready(true);
            }
            Kind::Pong => {
                *lock(&self.last_heard) = Instant::now();
                self.set_ready(true);
            }
            Kind::Stdout | Kind::Stderr | Kind::Window | Kind::Exit => {
                *lock(&self.last_heard) = Instant::now();
                let chan = f.chan;
                let mut chans = lock(&self.chans);
                let Some(c) = chans.get(&chan) else { return };
                let mut f = f;
                f.chan = 1;
                if matches!(f.kind, Kind::Stdout | Kind::Stderr) {
                    let q = c.queued.fetch_add(f.payload.len(), Ordering::SeqCst) + f.payload.len();
                    if q > WINDOW as usize + MAX_PAYLOAD {
                        drop(chans);
                        eprintln!("ignite-spawn: guest agent overran channel {chan}'s window ({q} bytes queued)");
                        self.fail_one(chan, "the guest agent sent more than its flow-control window allows");
                        return;
                    }
                }
                let exit = f.kind == Kind::Exit;
                let _ = c.tx.send(f);
                if exit {
                    chans.remove(&chan);
                }
            }
            // Host-to-guest kinds coming from the guest: ignored.
            _ => {}
        }
    }
}

/// Starts the multiplexer for the VM whose directory is `dir`: binds `agent.sock` (0600),
/// connects to the VMM's `agent-vmm.sock` and serves both from background threads for the
/// life of the process. An agent silent for `dead_after` with channels open fails them.
pub fn start_mux(dir: &Path, dead_after: Duration) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::vmdir::VmDir::new(dir).agent_socket();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let mux = Arc::new(Mux {
        guest: Mutex::new(None),
        ready: Mutex::new(false),
        ready_cv: Condvar::new(),
        chans: Mutex::new(HashMap::new()),
        next_chan: AtomicU32::new(1),
        last_heard: Mutex::new(Instant::now()),
        reset_decoder: AtomicBool::new(false),
        dead_after,
    });
    {
        let mux = mux.clone();
        let vmm = dir.join(AGENT_VMM_SOCKET);
        std::thread::spawn(move || guest_reader(&mux, &vmm));
    }
    {
        let mux = mux.clone();
        std::thread::spawn(move || pinger(&mux));
    }
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mux = mux.clone();
            std::thread::spawn(move || serve_client(&mux, conn));
        }
    });
    Ok(())
}

fn guest_reader(mux: &Mux, vmm: &Path) {
    // QEMU creates its chardev socket as it starts.
    let stream = loop {
        match UnixStream::connect(vmm) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let (Ok(writer), Ok(())) = (stream.try_clone(), stream.set_read_timeout(Some(Duration::from_secs(1)))) else {
        eprintln!("ignite-spawn: cannot set up the agent channel");
        return;
    };
    let _ = writer.set_write_timeout(Some(Duration::from_secs(5)));
    *lock(&mux.guest) = Some(writer);
    let mut frames = FrameReader::new(stream);
    let mut in_sync = true;
    loop {
        if mux.reset_decoder.swap(false, Ordering::SeqCst) {
            *frames.decoder() = Decoder::new();
        }
        match frames.read_frame() {
            Ok(f) => {
                if !in_sync && !matches!(f.kind, Kind::Hello | Kind::Pong) {
                    continue;
                }
                in_sync = true;
                mux.on_guest_frame(f);
            }
            Err(ReadError::Frame(e)) => {
                if in_sync {
                    eprintln!("ignite-spawn: the guest agent sent a malformed frame ({e}); resynchronising");
                    mux.set_ready(false);
                    mux.fail_all(&format!("the guest agent sent a malformed frame ({e})"));
                }
                in_sync = false;
                frames.decoder().resync();
            }
            Err(ReadError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                // The VMM went away: the VM is ending.
                mux.set_ready(false);
                mux.fail_all(&format!("the VM's agent channel closed ({e})"));
                *lock(&mux.guest) = None;
                return;
            }
        }
    }
}

/// Pings the agent: every 200 ms until it first answers, then every second. An agent silent
/// for the mux's `dead_after` while channels are open fails them.
fn pinger(mux: &Mux) {
    let mut n: u64 = 0;
    loop {
        let ready = *lock(&mux.ready);
        std::thread::sleep(if ready { Duration::from_secs(1) } else { Duration::from_millis(200) });
        n += 1;
        if !mux.to_guest(&Frame::new(Kind::Ping, 0, n.to_le_bytes().to_vec())) && lock(&mux.guest).is_none() {
            continue;
        }
        let silent = lock(&mux.last_heard).elapsed();
        if ready && silent > mux.dead_after && !lock(&mux.chans).is_empty() {
            eprintln!("ignite-spawn: the guest agent has not answered for {} s", silent.as_secs());
            mux.set_ready(false);
            mux.fail_all(&format!("the guest agent stopped answering ({} s)", silent.as_secs()));
            mux.reset_decoder.store(true, Ordering::SeqCst);
        }
    }
}

fn serve_client(mux: &Arc<Mux>, conn: UnixStream) {
    // Wait for the agent (the client has its own, shorter, timeout).
    {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut ready = lock(&mux.ready);
        while !*ready {
            if Instant::now() > deadline {
                return;
            }
            ready = mux
                .ready_cv
                .wait_timeout(ready, Duration::from_secs(1))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
    let Ok(mut out) = conn.try_clone() else { return };
    let hello = Frame::json(
        Kind::Hello,
        0,
        &ignite_agent::proto::Hello { version: ignite_agent::proto::PROTOCOL_VERSION, pid: std::process::id() },
    );
    if out.write_all(&hello.encode()).is_err() {
        return;
    }
    // A client that never says what it wants does not hold a thread forever.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut frames = FrameReader::new(conn);
    let open = match frames.read_frame() {
        Ok(f) if f.kind == Kind::Open => f,
        _ => return,
    };
    let _ = frames.get_ref().set_read_timeout(None);
    let chan = loop {
        let c = mux.next_chan.fetch_add(1, Ordering::SeqCst);
        if c != 0 && !lock(&mux.chans).contains_key(&c) {
            break c;
        }
    };
    let (tx, rx) = channel::<Frame>();
    let queued = Arc::new(AtomicUsize::new(0));
    lock(&mux.chans).insert(chan, Client { tx, queued: queued.clone() });
    // Writer: frames for this client, returning credit to the guest as they are delivered.
    {
        let mux = mux.clone();
        std::thread::spawn(move || {
            for f in rx {
                let stream_data = matches!(f.kind, Kind::Stdout | Kind::Stderr);
                let n = f.payload.len();
                if out.write_all(&f.encode()).is_err() {
                    if lock(&mux.chans).remove(&chan).is_some() {
                        mux.to_guest(&Frame::new(Kind::Close, chan, Vec::new()));
                    }
                    return;
                }
                if stream_data {
                    queued.fetch_sub(n, Ordering::SeqCst);
                    mux.to_guest(&Frame::window(chan, n as u32));
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Write);
        });
    }
    if !mux.to_guest(&Frame::new(Kind::Open, chan, open.payload)) {
        mux.fail_one(chan, "the VM's agent channel is not connected");
        return;
    }
    loop {
        match frames.read_frame() {
            Ok(f) if matches!(f.kind, Kind::Stdin | Kind::Signal | Kind::Resize) => {
                if !lock(&mux.chans).contains_key(&chan) {
                    return;
                }
                mux.to_guest(&Frame { chan, ..f });
            }
            Ok(_) => {}
            Err(_) => {
                // The client went away (Ctrl-C, closed pipe): end what it started.
                if lock(&mux.chans).remove(&chan).is_some() {
                    mux.to_guest(&Frame::new(Kind::Close, chan, Vec::new()));
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client (ignite exec / cp)

/// Sends frames on a session from any thread (signals, window sizes).
#[derive(Debug, Clone)]
pub struct FrameSender(Arc<Mutex<UnixStream>>);

impl FrameSender {
    pub fn send(&self, f: &Frame) -> std::io::Result<()> {
        lock(&self.0).write_all(&f.encode())
    }
    pub fn signal(&self, sig: i32) {
        let _ = self.send(&Frame::new(Kind::Signal, 1, sig.to_le_bytes().to_vec()));
    }
    pub fn resize(&self, rows: u16, cols: u16) {
        let mut p = rows.to_le_bytes().to_vec();
        p.extend_from_slice(&cols.to_le_bytes());
        let _ = self.send(&Frame::new(Kind::Resize, 1, p));
    }
}

/// One request to a VM's agent.
#[derive(Debug)]
pub struct Session {
    vm: String,
    sender: FrameSender,
    frames: FrameReader<UnixStream>,
}

impl Session {
    /// Connects to the agent of the VM whose directory is `dir`, waiting up to `timeout` for
    /// it to answer.
    pub fn connect(vm: &str, dir: &Path, timeout: Duration) -> Result<Session, AgentError> {
        let path = crate::vmdir::VmDir::new(dir).agent_socket();
        let s = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                AgentError::NotEnabled { vm: vm.to_string() }
            }
            _ => AgentError::Io(e),
        })?;
        s.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut frames = FrameReader::new(s.try_clone()?);
        match frames.read_frame() {
            Ok(f) if f.kind == Kind::Hello => {}
            Ok(f) => return Err(AgentError::Lost { vm: vm.into(), reason: format!("unexpected {:?} frame", f.kind) }),
            Err(ReadError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                return Err(AgentError::NotReady { vm: vm.into(), secs: timeout.as_secs() })
            }
            Err(e) => return Err(AgentError::Lost { vm: vm.into(), reason: e.to_string() }),
        }
        frames.get_ref().set_read_timeout(None)?;
        Ok(Session { vm: vm.to_string(), sender: FrameSender(Arc::new(Mutex::new(s))), frames })
    }

    pub fn sender(&self) -> FrameSender {
        self.sender.clone()
    }

    fn lost(&self, e: impl std::fmt::Display) -> AgentError {
        AgentError::Lost { vm: self.vm.clone(), reason: e.to_string() }
    }

    /// Streams `input` as the channel's input with flow control, then end of input.
    fn pump_input(sender: FrameSender, credit: Arc<Credit>, mut input: impl Read) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut off = 0;
            while off < n {
                let Some(k) = credit.take(n - off) else { return };
                if sender.send(&Frame::new(Kind::Stdin, 1, buf[off..off + k].to_vec())).is_err() {
                    return;
                }
                off += k;
            }
        }
        let _ = sender.send(&Frame::new(Kind::Stdin, 1, Vec::new()));
    }

    /// Runs a command; its output goes to `stdout`/`stderr` as it arrives.
    pub fn exec(
        mut self,
        req: ExecRequest,
        input: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<Exit, AgentError> {
        self.sender.send(&Frame::json(Kind::Open, 1, &Request::Exec(req)))?;
        let credit = Credit::new(WINDOW);
        match input {
            Some(r) => {
                let (s, c) = (self.sender(), credit.clone());
                std::thread::spawn(move || Self::pump_input(s, c, r));
            }
            None => self.sender.send(&Frame::new(Kind::Stdin, 1, Vec::new()))?,
        }
        let result = loop {
            let f = match self.frames.read_frame() {
                Ok(f) => f,
                Err(e) => break Err(self.lost(e)),
            };
            match f.kind {
                Kind::Stdout if stdout.write_all(&f.payload).and_then(|_| stdout.flush()).is_err() => {
                    break Err(AgentError::Failed("cannot write the command's output".into()));
                }
                Kind::Stderr => {
                    let _ = stderr.write_all(&f.payload).and_then(|_| stderr.flush());
                }
                Kind::Window => credit.add(f.credit().map_err(|e| self.lost(e))?),
                Kind::Exit => break f.parse::<Exit>().map_err(|e| self.lost(e)),
                _ => {}
            }
        };
        credit.close();
        result
    }

    /// Copies the host path `src` into the VM at `dest` (`docker cp` placement).
    pub fn put(mut self, src: &Path, dest: &str) -> Result<(), AgentError> {
        std::fs::symlink_metadata(src).map_err(|e| AgentError::Failed(format!("{}: {e}", src.display())))?;
        self.sender.send(&Frame::json(Kind::Open, 1, &Request::Put { path: dest.to_string() }))?;
        let credit = Credit::new(WINDOW);
        let (reader, writer) = std::io::pipe()?;
        let src_owned = src.to_path_buf();
        let packer = std::thread::spawn(move || ignite_agent::archive::pack(&src_owned, writer));
        {
            let (s, c) = (self.sender(), credit.clone());
            std::thread::spawn(move || Self::pump_input(s, c, reader));
        }
        let result = loop {
            let f = match self.frames.read_frame() {
                Ok(f) => f,
                Err(e) => break Err(self.lost(e)),
            };
            match f.kind {
                Kind::Window => credit.add(f.credit().map_err(|e| self.lost(e))?),
                Kind::Exit => break f.parse::<Exit>().map_err(|e| self.lost(e)),
                _ => {}
            }
        };
        credit.close();
        let exit = result?;
        if let Ok(Err(e)) = packer.join() {
            return Err(AgentError::Failed(format!("{}: {e}", src.display())));
        }
        match exit.error {
            Some(e) => Err(AgentError::Failed(format!("copy into the VM failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Copies `src` in the VM to the host path `dest`; the guest's stream is unpacked with
    /// [`ignite_agent::archive::unpack`] (nothing outside `dest`, no links followed).
    pub fn get(mut self, src: &str, dest: &Path) -> Result<(), AgentError> {
        self.sender.send(&Frame::json(Kind::Open, 1, &Request::Get { path: src.to_string() }))?;
        let (reader, mut writer) = std::io::pipe()?;
        let dest_owned = dest.to_path_buf();
        let unpacker = std::thread::spawn(move || {
            ignite_agent::archive::unpack(reader, &dest_owned, ignite_agent::archive::Receiver::Host)
        });
        let result = loop {
            let f = match self.frames.read_frame() {
                Ok(f) => f,
                Err(e) => break Err(self.lost(e)),
            };
            match f.kind {
                // The unpacker stopped (it refused the stream): its error says why.
                Kind::Stdout if writer.write_all(&f.payload).is_err() => break Ok(Exit::default()),
                Kind::Exit => break f.parse::<Exit>().map_err(|e| self.lost(e)),
                _ => {}
            }
        };
        drop(writer);
        let unpacked = unpacker.join().unwrap_or_else(|_| Err("the unpacker panicked".into()));
        let exit = result?;
        if let Some(e) = exit.error {
            return Err(AgentError::Failed(format!("copy from the VM failed: {e}")));
        }
        unpacked.map(|_| ()).map_err(|e| AgentError::Failed(format!("copy from the VM refused: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_static_executables_qualify_as_the_agent() {
        // Debian's busybox-static is static, coreutils' ls is not, a text file is no ELF.
        check_static(Path::new("/bin/busybox")).unwrap();
        let e = check_static(Path::new("/bin/ls")).unwrap_err();
        assert!(e.contains("dynamically linked"), "{e}");
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), "#!/bin/sh\n").unwrap();
        assert!(check_static(&d.path().join("x")).unwrap_err().contains("not an x86-64 ELF"));
        assert!(check_static(&d.path().join("missing")).is_err());
    }
}
