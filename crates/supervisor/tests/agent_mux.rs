//! The supervisor's agent multiplexer against a hostile guest: the real multiplexer and the
//! real client, with the guest's end of the virtio-serial channel played by this test over
//! the same unix socket QEMU would serve. A guest that overruns its window, sends malformed
//! frames or falls silent fails the affected execs with a clear error; the multiplexer keeps
//! serving.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignite_agent::proto::{ExecRequest, Exit, Frame, FrameReader, Hello, Kind, Request, MAX_PAYLOAD};
use ignite_runtime::agent::Session;
use ignite_supervisor::mux::start_mux;
use ignite_vmm::{AgentEndpoint, AGENT_VMM_SOCKET};

/// QEMU's end of the virtio-serial channel.
fn serial(dir: &Path) -> AgentEndpoint {
    AgentEndpoint { path: dir.join(AGENT_VMM_SOCKET), vsock_port: None }
}

/// The guest end: answers pings (unless silenced), hands every other frame to the test.
struct Guest {
    out: Arc<Mutex<UnixStream>>,
    frames: Receiver<Frame>,
    silent: Arc<AtomicBool>,
}

impl Guest {
    /// The guest end of a virtio-serial channel (QEMU's socket, played by the test).
    fn start(dir: &Path) -> Guest {
        let l = UnixListener::bind(dir.join(AGENT_VMM_SOCKET)).unwrap();
        start_mux(dir, serial(dir), Duration::from_secs(2)).unwrap();
        let (s, _) = l.accept().unwrap();
        Guest::on(s)
    }

    /// The guest end over `s`, connected.
    fn on(s: UnixStream) -> Guest {
        let out = Arc::new(Mutex::new(s.try_clone().unwrap()));
        let silent = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        {
            let out = out.clone();
            let silent = silent.clone();
            std::thread::spawn(move || {
                let mut r = FrameReader::new(s);
                while let Ok(f) = r.read_frame() {
                    if f.kind == Kind::Ping {
                        if !silent.load(Ordering::SeqCst) {
                            let _ = out.lock().unwrap().write_all(&Frame::new(Kind::Pong, 0, f.payload).encode());
                        }
                    } else if tx.send(f).is_err() {
                        return;
                    }
                }
            });
        }
        let g = Guest { out, frames: rx, silent };
        g.send(&Frame::json(Kind::Hello, 0, &Hello { version: 1, pid: 1 }));
        g
    }

    fn send(&self, f: &Frame) {
        self.raw(&f.encode());
    }

    fn raw(&self, b: &[u8]) {
        self.out.lock().unwrap().write_all(b).unwrap();
    }

    /// The next frame of `kind` (others are skipped), within `secs`.
    fn expect(&self, kind: Kind, secs: u64) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(f) if f.kind == kind => return f,
                Ok(_) => {}
                Err(_) => panic!("no {kind:?} frame from the multiplexer within {secs} s"),
            }
        }
    }
}

/// Runs `argv` through the real client in a thread; returns (exit, stdout) when it ends.
fn exec(dir: &Path, argv: &[&str]) -> std::thread::JoinHandle<(Result<Exit, String>, Vec<u8>)> {
    let dir = dir.to_path_buf();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let s = match Session::connect("t", &dir, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return (Err(e.to_string()), Vec::new()),
        };
        let mut out = Vec::new();
        let r = s.exec(ExecRequest { argv, ..Default::default() }, None, &mut out, &mut std::io::sink());
        (r.map_err(|e| e.to_string()), out)
    })
}

/// Plays a well-behaved agent for one exec: answers its Open with `text` and exit code 0.
fn serve_one(g: &Guest, text: &[u8]) {
    let open = g.expect(Kind::Open, 10);
    assert!(matches!(open.parse::<Request>().unwrap(), Request::Exec(_)));
    g.send(&Frame::new(Kind::Stdout, open.chan, text.to_vec()));
    g.send(&Frame::exit(open.chan, &Exit { code: Some(0), ..Default::default() }));
}

#[test]
fn exit_codes_and_output_pass_through() {
    let d = tempfile::tempdir().unwrap();
    let g = Guest::start(d.path());
    let h = exec(d.path(), &["sh", "-c", "exit 3"]);
    let open = g.expect(Kind::Open, 10);
    g.send(&Frame::new(Kind::Stdout, open.chan, b"hello".to_vec()));
    g.send(&Frame::exit(open.chan, &Exit { code: Some(3), ..Default::default() }));
    let (exit, out) = h.join().unwrap();
    assert_eq!(exit.unwrap().shell_code(), 3);
    assert_eq!(out, b"hello");
}

#[test]
fn a_guest_that_ignores_flow_control_fails_only_that_exec() {
    let d = tempfile::tempdir().unwrap();
    let g = Guest::start(d.path());
    // A client that opens an exec and then reads nothing.
    let mut stuck = UnixStream::connect(d.path().join("agent.sock")).unwrap();
    stuck.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = FrameReader::new(stuck.try_clone().unwrap());
    assert_eq!(r.read_frame().unwrap().kind, Kind::Hello);
    let req = Request::Exec(ExecRequest { argv: vec!["yes".into()], ..Default::default() });
    stuck.write_all(&Frame::json(Kind::Open, 1, &req).encode()).unwrap();
    let open = g.expect(Kind::Open, 10);
    // 8 MiB without waiting for credit: the multiplexer must give up on the channel.
    let chunk = Frame::new(Kind::Stdout, open.chan, vec![b'y'; MAX_PAYLOAD]).encode();
    let flood = std::thread::spawn({
        let out = g.out.clone();
        move || {
            for _ in 0..128 {
                if out.lock().unwrap().write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    let close = g.expect(Kind::Close, 20);
    assert_eq!(close.chan, open.chan);
    flood.join().unwrap();
    // The stuck client is told why once it reads.
    let mut saw_error = None;
    while let Ok(f) = r.read_frame() {
        if f.kind == Kind::Exit {
            saw_error = f.parse::<Exit>().unwrap().error;
            break;
        }
    }
    assert!(saw_error.unwrap_or_default().contains("flow-control window"));
    // The multiplexer still serves others.
    let h = exec(d.path(), &["true"]);
    serve_one(&g, b"ok");
    let (exit, out) = h.join().unwrap();
    assert_eq!(exit.unwrap().code, Some(0));
    assert_eq!(out, b"ok");
}

#[test]
fn malformed_frames_fail_open_execs_and_the_channel_recovers() {
    let d = tempfile::tempdir().unwrap();
    let g = Guest::start(d.path());
    let h = exec(d.path(), &["sleep", "100"]);
    let _open = g.expect(Kind::Open, 10);
    // Garbage, including a frame header announcing 4 GiB and a stray magic.
    let mut junk = b"\x00\xffnot a frame IG".to_vec();
    junk.extend_from_slice(&[b'I', b'G', 6, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    junk.extend((0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    g.raw(&junk);
    let (exit, _) = h.join().unwrap();
    let err = exit.unwrap().error.unwrap_or_default();
    assert!(err.contains("malformed frame"), "{err}");
    // A restarted agent says hello: service resumes.
    g.send(&Frame::json(Kind::Hello, 0, &Hello { version: 1, pid: 2 }));
    let h = exec(d.path(), &["true"]);
    serve_one(&g, b"back");
    let (exit, out) = h.join().unwrap();
    assert_eq!(exit.unwrap().code, Some(0));
    assert_eq!(out, b"back");
}

#[test]
fn a_silent_agent_fails_open_execs() {
    let d = tempfile::tempdir().unwrap();
    let g = Guest::start(d.path());
    let h = exec(d.path(), &["sleep", "100"]);
    let _open = g.expect(Kind::Open, 10);
    g.silent.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let (exit, _) = h.join().unwrap();
    let err = exit.unwrap().error.unwrap_or_default();
    assert!(err.contains("stopped answering"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // Answering again makes it ready again.
    g.silent.store(false, Ordering::SeqCst);
    let h = exec(d.path(), &["true"]);
    serve_one(&g, b"");
    assert_eq!(h.join().unwrap().0.unwrap().code, Some(0));
}

#[test]
fn a_client_waits_for_the_agent_then_says_it_is_not_ready() {
    let d = tempfile::tempdir().unwrap();
    let _l = UnixListener::bind(d.path().join(AGENT_VMM_SOCKET)).unwrap();
    start_mux(d.path(), serial(d.path()), Duration::from_secs(2)).unwrap();
    let t = Instant::now();
    let e = Session::connect("t", d.path(), Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("did not answer within 1 s"), "{e}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    let none = tempfile::tempdir().unwrap();
    let e = Session::connect("t", none.path(), Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("has no guest agent"), "{e}");
}

/// Reads the `CONNECT <port>` line a vsock client starts with.
fn connect_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while std::io::Read::read(s, &mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn over_vsock_the_multiplexer_waits_for_the_agent_and_reconnects_when_it_restarts() {
    // Firecracker's vsock socket, played by the test: a connection to a port nothing listens
    // on in the guest is closed; once the agent listens, `OK <host port>` and the stream.
    let d = tempfile::tempdir().unwrap();
    let l = UnixListener::bind(d.path().join(AGENT_VMM_SOCKET)).unwrap();
    let vsock = AgentEndpoint { path: d.path().join(AGENT_VMM_SOCKET), vsock_port: Some(1024) };
    start_mux(d.path(), vsock, Duration::from_secs(2)).unwrap();
    for _ in 0..2 {
        let (mut s, _) = l.accept().unwrap();
        assert_eq!(connect_line(&mut s), "CONNECT 1024");
        drop(s);
    }
    let (mut s, _) = l.accept().unwrap();
    assert_eq!(connect_line(&mut s), "CONNECT 1024");
    s.write_all(b"OK 1073741824\n").unwrap();
    let g = Guest::on(s);
    let h = exec(d.path(), &["echo", "one"]);
    serve_one(&g, b"one");
    assert_eq!(h.join().unwrap().1, b"one");
    // The agent restarts: its connection ends, the multiplexer connects again.
    let _ = g.out.lock().unwrap().shutdown(std::net::Shutdown::Both);
    drop(g);
    let (mut s, _) = l.accept().unwrap();
    assert_eq!(connect_line(&mut s), "CONNECT 1024");
    s.write_all(b"OK 1073741825\n").unwrap();
    let g = Guest::on(s);
    let h = exec(d.path(), &["echo", "two"]);
    serve_one(&g, b"two");
    let (exit, out) = h.join().unwrap();
    assert_eq!((exit.unwrap().code, out), (Some(0), b"two".to_vec()));
}
