//! Shared fixtures for the binary-level tests: the real guest kernel (built by
//! images/kernel/build.sh, cached), the busybox test image (images/busybox/build.sh, as an OCI
//! layout and a `docker save` archive), state roots with both imported, and a real registry.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ignite")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Fixtures {
    pub dir: PathBuf,
    pub busybox_oci: PathBuf,
    pub busybox_archive: PathBuf,
    pub vmlinux: PathBuf,
}

/// The busybox test image (a few seconds), built once per test process.
pub struct Images {
    pub dir: PathBuf,
    pub busybox_oci: PathBuf,
    pub busybox_archive: PathBuf,
}

pub fn images() -> &'static Images {
    static I: OnceLock<Images> = OnceLock::new();
    I.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fixtures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let o = Command::new(repo().join("images/busybox/build.sh"))
            .arg(&dir)
            .output()
            .expect("run images/busybox/build.sh");
        assert!(o.status.success(), "busybox image build failed: {}", String::from_utf8_lossy(&o.stderr));
        Images { busybox_oci: dir.join("oci"), busybox_archive: dir.join("busybox.tar"), dir }
    })
}

/// The busybox image and the real guest kernel (images/kernel/build.sh: minutes on a cache
/// miss), for the tests that boot VMs.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let i = images();
        let o = Command::new(repo().join("images/kernel/build.sh")).output().expect("run images/kernel/build.sh");
        assert!(o.status.success(), "kernel build failed: {}", String::from_utf8_lossy(&o.stderr));
        let vmlinux = PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim());
        assert!(vmlinux.is_file(), "kernel build printed no vmlinux path");
        Fixtures {
            dir: i.dir.clone(),
            busybox_oci: i.busybox_oci.clone(),
            busybox_archive: i.busybox_archive.clone(),
            vmlinux,
        }
    })
}

/// A kernel file for the tests that never boot a VM (create, validation, lookups, output):
/// `ignite kernel import` reads its version string; nothing ever runs it. These tests then
/// need no kernel build.
pub fn unbootable_kernel() -> &'static PathBuf {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        let p = images().dir.join("vmlinux-never-booted");
        let mut bytes = vec![0u8; 4096];
        bytes.extend_from_slice(b"Linux version 6.1.0-never-booted (ignite tests that create but never boot)\0");
        std::fs::write(&p, bytes).unwrap();
        p
    })
}

/// The static guest agent (scripts/build-agent.sh; `$IGNITE_AGENT` when the test command
/// built it already).
pub fn agent() -> &'static PathBuf {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        if let Some(p) = std::env::var_os("IGNITE_AGENT") {
            return PathBuf::from(p);
        }
        let o = Command::new(repo().join("scripts/build-agent.sh")).output().expect("run scripts/build-agent.sh");
        assert!(o.status.success(), "agent build failed: {}", String::from_utf8_lossy(&o.stderr));
        PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim())
    })
}

/// The Firecracker binary, or `None` (and a loud SKIPPED) when there is none.
pub fn firecracker(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("IGNITE_FIRECRACKER").map(PathBuf::from).filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("firecracker")).find(|p| p.is_file()))
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: {test}: no firecracker binary (install it from Firecracker's release page on PATH, or set IGNITE_FIRECRACKER)"
        );
    }
    found
}

/// Processes (not zombies) whose command line mentions `needle`.
pub fn procs(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&c).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if s.contains(needle) && !zombie {
                out.push(s);
            }
        }
    }
    out
}

/// The VM cgroups on this host (`…/ignite/<uid>`, `…/ignite.slice/<uid>`), every hierarchy.
pub fn vm_cgroups() -> std::collections::BTreeSet<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut std::collections::BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let parent = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if (parent == "ignite" || parent == "ignite.slice")
                && name.len() == 16
                && name.chars().all(|c| c.is_ascii_hexdigit())
            {
                out.insert(p);
            } else if depth < 6 {
                walk(&p, depth + 1, out);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(Path::new("/sys/fs/cgroup"), 0, &mut out);
    out
}

pub fn ignite(root: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("IGNITE_ROOT", root)
        .env("IGNITE_AGENT", agent())
        .env_remove("IGNITE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run ignite")
}

/// [`ignite`] with `env` set too.
pub fn ignite_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    ignite_command(root, args, env).output().expect("run ignite")
}

/// [`ignite_env`], started and left running (its output piped).
#[allow(dead_code)]
pub fn spawn_ignite(root: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    ignite_command(root, args, env).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run ignite")
}

fn ignite_command(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env("IGNITE_ROOT", root).env("IGNITE_AGENT", agent()).env_remove("IGNITE_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

/// `inspect vm VM -t TEMPLATE`, trimmed.
pub fn field(root: &Path, vm: &str, t: &str) -> String {
    ok(root, &["inspect", "vm", vm, "-t", t]).trim().to_string()
}

pub fn ok(root: &Path, args: &[&str]) -> String {
    let o = ignite(root, args);
    assert!(o.status.success(), "ignite {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Fails with exit code `code` and a message containing `needle`; returns stderr.
pub fn fails(root: &Path, args: &[&str], code: i32, needle: &str) -> String {
    let o = ignite(root, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(code), "ignite {args:?}: {err}");
    assert!(err.contains(needle), "ignite {args:?}: expected {needle:?} in {err:?}");
    err
}

/// The Debian bookworm systemd image (images/debian/build.sh, cached): its OCI layout.
pub fn debian_oci() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let o = Command::new(repo().join("images/debian/build.sh")).output().expect("run images/debian/build.sh");
        assert!(o.status.success(), "debian image build failed: {}", String::from_utf8_lossy(&o.stderr));
        PathBuf::from(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim()).join("oci")
    })
}

/// A state root with the kernel imported as the default kernel and the busybox image
/// imported as `busybox` (and as `weaveworks/ignite-ubuntu`, so Ignite's documented
/// manifests find an image without a network). Every VM in it is removed when it is dropped,
/// so a failing test leaves no VM running.
pub fn prepared_root(parent: &Path) -> Root {
    root_with_kernel(parent, &fixtures().vmlinux)
}

/// Like [`prepared_root`], for tests that create VMs but never boot them: no kernel build.
pub fn store_root(parent: &Path) -> Root {
    root_with_kernel(parent, unbootable_kernel())
}

fn root_with_kernel(parent: &Path, vmlinux: &Path) -> Root {
    let i = images();
    let root = parent.join("root");
    ok(&root, &["kernel", "import", vmlinux.to_str().unwrap(), "--name", "localhost/ignite-kernel:6.1"]);
    let oci = format!("oci:{}:latest", i.busybox_oci.display());
    ok(&root, &["image", "import", &oci, "--name", "busybox"]);
    ok(&root, &["image", "import", &oci, "--name", "weaveworks/ignite-ubuntu"]);
    Root(root)
}

/// A state root whose VMs are removed on drop.
pub struct Root(pub PathBuf);

impl std::ops::Deref for Root {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Root {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let ids = ignite(&self.0, &["ps", "-a", "-q"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = ignite(&self.0, &["rm", "-f", id]);
        }
    }
}

/// Every file under the root with its content (locks and scratch excluded).
pub fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name == ".lock" || name == "tmp" || name == "accel.json" || name == ignite_vmm::kernel::CACHE_FILE {
                continue;
            }
            if p.is_dir() {
                out.push((p.clone(), vec![]));
                walk(&p, out);
            } else {
                let meta = std::fs::metadata(&p).unwrap();
                // Large disk files: compare size, not content.
                let content = if meta.len() > 1 << 20 {
                    meta.len().to_le_bytes().to_vec()
                } else {
                    std::fs::read(&p).unwrap_or_default()
                };
                out.push((p.clone(), content));
            }
        }
    }
    let mut v = Vec::new();
    walk(root, &mut v);
    v.sort();
    v
}

pub fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

/// A real registry (Debian's docker-registry) on a free loopback port, stopped on drop.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "docker-registry is not installed: apt-get install docker-registry (scripts/setup-host.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child =
            Command::new(bin).arg("serve").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        until_listening(&addr, 10);
        Registry { addr, child, _dir: dir }
    }

    /// Pushes an OCI layout to this registry with skopeo.
    pub fn push(&self, layout: &Path, name: &str) {
        let o = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--quiet"])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .output()
            .expect("skopeo is not installed: apt-get install skopeo");
        assert!(o.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often a wait looks again at the condition it waits for.
const POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits for `f` to give a value, looking again every [`POLL`] up to `secs`; fails with
/// `what` and `f`'s last word (its `Err`) at the deadline. The one place tests wait.
pub fn until_ok<T, E: std::fmt::Display>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}: {e}"),
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for `f` to hold (see [`until_ok`]).
pub fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    until_ok(what, secs, || if f() { Ok(()) } else { Err("not yet") })
}

/// Waits until something listens on `addr`.
pub fn until_listening(addr: &str, secs: u64) {
    until_ok(&format!("a listener on {addr}"), secs, || std::net::TcpStream::connect(addr));
}

/// Waits until `needle` is in VM `vm`'s console; returns the console.
pub fn wait_for_log(root: &Path, vm: &str, needle: &str, secs: u64) -> String {
    until_ok(&format!("{needle:?} in the console of VM {vm}"), secs, || {
        let text = String::from_utf8_lossy(&ignite(root, &["logs", vm]).stdout).into_owned();
        if text.contains(needle) {
            Ok(text)
        } else {
            Err(format!("console so far:\n{text}"))
        }
    })
}

/// Retries `exec VM true` until it succeeds (the VM booting, its agent restarting); returns
/// how long that took.
pub fn until_exec_works(root: &Path, vm: &str, secs: u64) -> std::time::Duration {
    let t = std::time::Instant::now();
    until_ok(&format!("exec in VM {vm}"), secs, || {
        let o = ignite(root, &["exec", "--timeout", "5", vm, "--", "true"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    });
    t.elapsed()
}

/// A TCP listener that accepts connections and never answers, until dropped.
pub struct Silent {
    pub addr: std::net::SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Silent {
    pub fn start() -> Silent {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            // Accepts and holds until the test drops its end (recv then fails).
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
                while let Ok((c, _)) = l.accept() {
                    held.push(c);
                }
            }
        });
        Silent { addr, stop: Some(stop) }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// The process whose command line holds every one of `needles` (a VMM, found by its argv),
/// waited for up to 30 s.
pub fn pid_with_args(needles: &[&str]) -> u32 {
    until_ok(&format!("a process with {needles:?} in its command line"), 30, || {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if needles.iter().all(|n| cmd.contains(n)) {
                return Ok(pid);
            }
        }
        Err("none yet")
    })
}

/// A field of `/proc/<pid>/status` (empty when the process or the field is not there).
pub fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string())).unwrap_or_default()
}
