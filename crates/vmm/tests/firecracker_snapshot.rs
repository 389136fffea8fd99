//! Firecracker's snapshots through the backend, with the real upstream binary
//! (`$IGNITE_FIRECRACKER`, else `firecracker` on PATH) on the real `/dev/kvm`: a test that
//! finds neither says SKIPPED loudly and checks nothing.
//!
//! The guest is a few instructions of our own (assembled here with binutils' `as` and `ld`), not
//! Linux: this project's host has a nested KVM that cannot boot a Linux guest under
//! Firecracker (../shared/FACTS.md), and runs this one. It counts `b`, `c`, ... `z`, `a`, ...
//! on its serial port, the counter in its memory, one letter per busy loop: a resumed guest
//! goes on from the letter after the last one it printed, a guest booted afresh starts again
//! at `b`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ignite_vmm::firecracker::{self, Firecracker};
use ignite_vmm::{Accel, Backend, DiskFormat, Drive, Launcher, Machine, VmmCommand, VmmError, AGENT_VMM_SOCKET};

const GUEST: &str = r#"
.code64
.globl _start
_start:
  mov $0x3f8, %dx
1:
  incb count(%rip)
  cmpb $0x7b, count(%rip)
  jne 2f
  movb $0x61, count(%rip)
2:
  movb count(%rip), %al
  out %al, %dx
  mov $0x10000, %ecx
3:
  dec %ecx
  jnz 3b
  jmp 1b
.data
count: .byte 0x61
"#;

/// The Firecracker binary and a usable `/dev/kvm`, or why not (said as SKIPPED).
fn firecracker(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("IGNITE_FIRECRACKER").map(PathBuf::from).filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("firecracker")).find(|p| p.is_file()))
    });
    let Some(found) = found else {
        eprintln!("SKIPPED: {test}: no firecracker binary (set IGNITE_FIRECRACKER or put it on PATH)");
        return None;
    };
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        eprintln!("SKIPPED: {test}: /dev/kvm cannot be opened ({e}): Firecracker runs on KVM only");
        return None;
    }
    Some(found)
}

/// The guest's ELF image, built in `dir`.
fn guest(dir: &Path) -> PathBuf {
    let (src, obj, elf) = (dir.join("guest.S"), dir.join("guest.o"), dir.join("guest.elf"));
    std::fs::write(&src, GUEST).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (binutils' as and ld build the test guest)"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(Command::new("as").arg("-o").arg(&obj).arg(&src));
    run(Command::new("ld")
        .args(["-static", "-nostdlib", "-Ttext=0x1000000", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    elf
}

/// What a guest printed on its serial console, and a signal at each read.
#[derive(Default)]
struct Console {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl Console {
    /// The lowercase letters printed so far.
    fn letters(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().iter().copied().filter(u8::is_ascii_lowercase).collect()
    }
}

/// Starts the VMM unconfined, its console read into a [`Console`].
struct Plain {
    console: Arc<Console>,
}

impl Launcher for Plain {
    fn jailed(&self) -> bool {
        false
    }
    fn listen(&mut self, path: &Path) -> Result<i32, VmmError> {
        Err(VmmError::Launch(format!("{}: Firecracker binds its own sockets", path.display())))
    }
    fn spawn(&mut self, cmd: VmmCommand) -> Result<Child, VmmError> {
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| VmmError::Launch(e.to_string()))?;
        let mut out = child.stdout.take().unwrap();
        let console = self.console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                console.grew.notify_all();
            }
        });
        Ok(child)
    }
}

/// A machine of the test guest whose run directory is `run_dir`, with a drive in it.
fn machine(kernel: &Path, run_dir: &Path) -> Machine {
    std::fs::create_dir_all(run_dir).unwrap();
    let disk = run_dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    Machine {
        uid: "0123456789abcdef".into(),
        name: "toy".into(),
        id_prefix: "ignite-test".into(),
        vcpus: 1,
        memory_mib: 32,
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        drives: vec![Drive { path: disk, format: DiskFormat::Raw, read_only: false, backing: None }],
        nics: vec![],
        agent_port: Some("org.ignite.agent.0".into()),
        accel: Accel::Kvm,
        debug: false,
        run_dir: run_dir.to_path_buf(),
        incoming: None,
        tcg_cache_mib: None,
    }
}

/// Waits (up to 30 s) until the console holds more than `n` letters; returns them.
fn letters_beyond(console: &Console, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bytes = console.bytes.lock().unwrap();
    loop {
        let letters: Vec<u8> = bytes.iter().copied().filter(u8::is_ascii_lowercase).collect();
        if letters.len() > n {
            return letters;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the guest printed {} letters in 30 s, waiting for {}", letters.len(), n + 1);
        bytes = console.grew.wait_timeout(bytes, left).unwrap().0;
    }
}

/// A VMM killed when the test ends, passed or not.
struct Running(ignite_vmm::Instance);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

fn next(c: u8) -> u8 {
    if c == b'z' {
        b'a'
    } else {
        c + 1
    }
}

#[test]
fn a_snapshot_resumes_in_a_new_firecracker_where_the_guest_was() {
    let Some(binary) = firecracker("a_snapshot_resumes_in_a_new_firecracker_where_the_guest_was") else { return };
    let d = tempfile::tempdir().unwrap();
    let kernel = guest(d.path());
    let fc = Firecracker::new(Some(binary));
    let source_dir = d.path().join("source");
    let source = machine(&kernel, &source_dir);
    let console = Arc::new(Console::default());
    let vm = Running(fc.launch(&source, &mut Plain { console: console.clone() }).unwrap());
    assert_eq!(letters_beyond(&console, 4)[..3], *b"bcd", "a fresh boot counts from b");

    let snap = d.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    let state = snap.join("state");
    let api = Firecracker::files_dir(&source_dir).join(firecracker::API_SOCKET);
    let vm_state = || firecracker::api_call(&api, "GET", "/", None).unwrap()["state"].clone();
    let mut at_pause = Vec::new();
    fc.save(&source_dir, &state, source.memory_mib, &mut || {
        // The caller copies the disks here: the guest is paused (what it printed is all it
        // will have printed when its state is saved).
        at_pause = console.letters();
        match vm_state() {
            s if s == "Paused" => Ok(()),
            s => Err(format!("the guest is {s} while its disks are copied")),
        }
    })
    .unwrap();
    let last = *at_pause.last().unwrap();
    assert_eq!(vm_state(), "Running");
    // The source runs on from where it was.
    let after = letters_beyond(&console, at_pause.len());
    assert_eq!(after[at_pause.len()], next(last), "the source after its snapshot: {}", String::from_utf8_lossy(&after));
    // Its files: out of the VMM's directory, readable by a resumed VMM's uid; the memory file
    // is the guest's memory.
    use std::os::unix::fs::PermissionsExt;
    for f in fc.saved_files(&state) {
        let m = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(m.permissions().mode() & 0o777, 0o644, "{}", f.display());
    }
    assert_eq!(fc.saved_files(&state)[1], snap.join(firecracker::MEMORY_FILE));
    let memory = std::fs::metadata(snap.join(firecracker::MEMORY_FILE)).unwrap();
    assert_eq!(memory.len(), 32 << 20);
    eprintln!("FIGURE memory file {} of {} bytes allocated", memory.blocks() * 512, memory.len());
    // What the guest never touched takes no disk.
    use std::os::unix::fs::MetadataExt;
    assert!(memory.blocks() * 512 < 4 << 20, "the memory file takes {} bytes", memory.blocks() * 512);
    let leftovers: Vec<_> = std::fs::read_dir(Firecracker::files_dir(&source_dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Paused by hand, as a killed snapshot leaves it: `resume` lets it run again, once.
    firecracker::api_call(&api, "PATCH", "/vm", Some(&serde_json::json!({"state": "Paused"}))).unwrap();
    assert_eq!(vm_state(), "Paused");
    assert!(fc.resume(&source_dir).unwrap());
    assert!(!fc.resume(&source_dir).unwrap());
    assert_eq!(vm_state(), "Running");
    letters_beyond(&console, console.letters().len());
    drop(vm);

    // A new Firecracker resumes the state: the guest goes on from the letter after the last
    // it printed before its snapshot, with this machine's drive and vsock socket.
    let clone_dir = d.path().join("clone");
    let mut clone = machine(&kernel, &clone_dir);
    clone.incoming = Some(state.clone());
    std::fs::remove_file(&source.drives[0].path).unwrap();
    let err = fc.launch(&clone, &mut Plain { console: Arc::new(Console::default()) }).unwrap_err();
    assert!(err.to_string().contains("opens the saved machine's drives"), "{err}");
    std::fs::write(&source.drives[0].path, vec![0u8; 1 << 20]).unwrap();
    let console = Arc::new(Console::default());
    let _vm = Running(fc.launch(&clone, &mut Plain { console: console.clone() }).unwrap());
    let letters = letters_beyond(&console, 2);
    assert_eq!(letters[0], next(last), "the clone's first letters: {}", String::from_utf8_lossy(&letters));
    let api = Firecracker::files_dir(&clone_dir).join(firecracker::API_SOCKET);
    let config = firecracker::api_call(&api, "GET", "/vm/config", None).unwrap();
    assert_eq!(config["drives"][0]["path_on_host"], serde_json::json!(clone.drives[0].path), "{config}");
    let vsock = Firecracker::files_dir(&clone_dir).join(AGENT_VMM_SOCKET);
    let mut s = std::os::unix::net::UnixStream::connect(&vsock).unwrap_or_else(|e| panic!("{}: {e}", vsock.display()));
    s.write_all(b"CONNECT 1024\n").unwrap();
}
