//! The host side of the guest agent (`ignite-agent`, crate `ignite-agent`).
//!
//! Owns: finding the agent binary to inject, and the client that `ignite exec`/`ignite cp`
//! use. The per-VM multiplexer it talks to runs in the VM's supervisor
//! (`ignite_supervisor::mux`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignite_agent::flow::Credit;
use ignite_agent::proto::{
    ExecRequest, Exit, Frame, FrameReader, Identity, Kind, ReadError, Request, MAX_PAYLOAD, WINDOW,
};

/// Where the init shim installs the agent in the VM's own disk layer.
pub const GUEST_PATH: &str = "/.ignite/ignite-agent";

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
/// Its SHA-256 (hexadecimal), computed by the build script; empty when nothing is embedded.
const EMBEDDED_SHA256: &str = env!("IGNITE_EMBEDDED_AGENT_SHA256");

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
    let dir = root.join("agent");
    let path = dir.join(format!("ignite-agent-{}", &EMBEDDED_SHA256[..16]));
    if !path.is_file() {
        std::fs::create_dir_all(&dir)?;
        // Unique per call: two threads of the daemon may write it at once.
        let tmp = ignite_proc::temp::path_for(&path);
        std::fs::write(&tmp, EMBEDDED)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)?;
    }
    check_static(&path).map_err(std::io::Error::other)?;
    Ok(path)
}

/// Whether `p` is a static x86-64 executable.
pub fn check_static(p: &Path) -> Result<(), String> {
    match ignite_proc::elf::static_x86_64(p) {
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
// The client (`ignite exec`, `ignite cp`)

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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

    /// Gives a VM restored from a memory snapshot (a clone) its own identity: MAC, IPv4
    /// address and default route, hostname, machine id, fresh entropy and the wall clock (see
    /// [`Identity`]). The guest checks everything before it changes anything; on a failure
    /// later on, the steps before the failed one stay applied.
    pub fn set_identity(mut self, id: &Identity) -> Result<(), AgentError> {
        let open = Frame::json(Kind::Open, 1, &Request::Identity(id.clone()));
        if open.payload.len() > MAX_PAYLOAD {
            return Err(AgentError::Failed(format!(
                "cannot give the clone its identity: the request takes {} bytes, more than the {MAX_PAYLOAD} of a frame (too much entropy?)",
                open.payload.len()
            )));
        }
        self.sender.send(&open)?;
        let exit = loop {
            let f = self.frames.read_frame().map_err(|e| self.lost(e))?;
            if f.kind == Kind::Exit {
                break f.parse::<Exit>().map_err(|e| self.lost(e))?;
            }
        };
        match exit.error {
            Some(e) => Err(AgentError::Failed(format!("cannot give the clone its identity: {e}"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_scripts_hash_is_the_embedded_agents() {
        use sha2::Digest;
        if EMBEDDED.is_empty() {
            assert_eq!(EMBEDDED_SHA256, "");
        } else {
            assert_eq!(EMBEDDED_SHA256, format!("{:x}", sha2::Sha256::digest(EMBEDDED)));
        }
    }

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
