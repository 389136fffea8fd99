//! The per-VM multiplexer of the guest agent's channel, inside the VM's supervisor:
//!
//! ```text
//! ignite exec ──unix── vm/<uid>/agent.sock ── supervisor (Mux) ──unix── vm/<uid>/agent-vmm.sock
//! ignite cp   ──unix──┘     one channel per client            QEMU chardev ── virtio-serial ── agent
//!                                                  or Firecracker's vsock socket ── vsock :1024 ── agent
//! ```
//!
//! Over vsock the connection starts with Firecracker's `CONNECT 1024` handshake (refused
//! until the agent listens) and is made again when the agent restarts; the protocol is the
//! same on both channels.
//!
//! The guest is untrusted. The multiplexer holds at most one frame being decoded plus one
//! flow-control window per channel; a guest that sends more than its window fails that
//! channel, a malformed frame fails every open channel and the reader resynchronises on the
//! next `Hello`/`Pong`, and a guest that stops answering pings for [`DEAD_AFTER`] fails the
//! open channels. None of this can stop the supervisor or its VM. The client side
//! (`ignite exec`/`cp`) is `ignite_runtime::agent::Session`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ignite_agent::proto::{Decoder, Exit, Frame, FrameReader, Kind, ReadError, MAX_PAYLOAD, WINDOW};
use ignite_vmm::AgentEndpoint;

/// Silence after which a guest agent with open channels counts as gone (the supervisor's
/// setting; tests pass their own to [`start_mux`]).
pub const DEAD_AFTER: Duration = Duration::from_secs(15);

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
/// connects to the VMM's end of the agent channel (`guest`: QEMU's virtio-serial socket, or
/// a vsock multiplexer such as Firecracker's, through its `CONNECT` handshake) and serves both
/// from background threads for the life of the process. An agent silent for `dead_after` with
/// channels open fails them. Over vsock, a connection the agent ends (it restarted) is made
/// again.
pub fn start_mux(dir: &Path, guest: AgentEndpoint, dead_after: Duration) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = ignite_runtime::vmdir::VmDir::new(dir).agent_socket();
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
        std::thread::spawn(move || loop {
            guest_reader(&mux, connect(&guest));
            if guest.vsock_port.is_none() {
                // The VMM's socket closed: the VM is ending.
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        });
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

/// Connects to the VMM's end of the agent channel, waiting for it: QEMU creates its chardev
/// socket as it starts; a vsock multiplexer refuses the port until the guest agent listens.
fn connect(guest: &AgentEndpoint) -> UnixStream {
    loop {
        match ignite_vmm::connect_vmm_socket(&guest.path) {
            Ok(s) => match guest.vsock_port {
                None => return s,
                Some(port) => match vsock_handshake(&s, port) {
                    Ok(()) => return s,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                },
            },
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Firecracker's host-initiated vsock connection (its `vsock` device's Unix socket):
/// `CONNECT <port>\n`, answered `OK <host port>\n` once a guest listener accepted; the VMM
/// closes the connection when nothing listens on the port.
pub fn vsock_handshake(s: &UnixStream, port: u32) -> std::io::Result<()> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&*s).write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match (&*s).read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("vsock port {port}: {}", if line.is_empty() { "connection closed" } else { &line }),
    ))
}

fn guest_reader(mux: &Mux, stream: UnixStream) {
    let (Ok(writer), Ok(())) = (stream.try_clone(), stream.set_read_timeout(Some(Duration::from_secs(1)))) else {
        eprintln!("ignite-spawn: cannot set up the agent channel");
        return;
    };
    let _ = writer.set_write_timeout(Some(Duration::from_secs(5)));
    *lock(&mux.guest) = Some(writer);
    // Asked at once: an agent that runs already (a guest resumed from a snapshot, a channel
    // reconnected) says nothing until asked, and the pinger's first round is 200 ms away.
    mux.to_guest(&Frame::new(Kind::Ping, 0, 0u64.to_le_bytes().to_vec()));
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
                // The VMM went away (the VM is ending), or the agent's vsock connection ended.
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
