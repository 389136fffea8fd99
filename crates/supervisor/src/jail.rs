//! The jail every VMM runs in: a guest that breaks out of its VMM finds an unprivileged process
//! that sees almost nothing of the host.
//!
//! `ignite-spawn` starts the VMM through itself in *jailer* mode (`ignite-spawn --jailer
//! SPEC`), a fresh single-threaded process that, before it execs the VMM:
//! 1. enters the VM's network namespace (`setns`, no `ip netns exec`);
//! 2. is put into the VM's cgroup (see [`ignite_runtime::cgroup`]: memory, CPU and process limits) by
//!    its parent while it goes on (a cgroup v1 migration costs an RCU grace period; early
//!    memory charges move with it);
//! 3. opens the VM's disks (as root) and leaves them open for the VMM: QEMU gets them as file
//!    descriptors (`-add-fd`, `/dev/fdset/N`, the qcow2 backing file too), so the jail holds no
//!    disk path and no disk changes owner. A VMM that takes no descriptors (Firecracker) opens
//!    its drives itself, by path, as the VM's uid: they are bound at `/disks/<key>`; the VM's
//!    own writable disk (in its directory) is made that uid's; any other (a volume) must be
//!    accessible to it already, which is checked as that uid before the VMM runs;
//! 4. makes a mount namespace and `pivot_root`s into a fresh tmpfs that holds only: `/usr`
//!    (read-only: the VMM binary, its libraries, its firmware) and the usual links to it, the
//!    dynamic loader's cache, the VM's kernel and initramfs (read-only, in `/boot`), `/dev`
//!    with `null`, `zero`, `random`, `urandom`, `net/tun` (and `kvm` under KVM, owned by the
//!    VM's uid), and a `/proc` of its own PID namespace (the supervisor made one: the VMM is
//!    its PID 1), and, for a VMM that makes its own sockets and log (Firecracker), its files
//!    directory, writable, owned by the VM's uid, at its host path. The state root, other VMs
//!    and the host's `/` are not there; the root is remounted read-only;
//! 5. drops to the VM's own uid and gid (from a range no user of the host has; see
//!    [`ignite_runtime::lease::vm_uid`]), no supplementary groups, every capability gone (a change of
//!    uid from 0 clears them), `no_new_privs`, and sets its parent-death signal again (a change
//!    of credentials clears it);
//! 6. execs the VMM, which applies its own seccomp filter (QEMU's `-sandbox on,obsolete=deny,
//!    elevateprivileges=deny,spawn=deny,resourcecontrol=deny`).
//!
//! The VMM's taps are made owned by its uid (`ip tuntap add … user`), so it opens them itself
//! through `/dev/net/tun` without any capability; its control sockets are bound by the
//! supervisor and handed over as descriptors (`-chardev socket,fd=N`).

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

/// A disk the jailer opens for the VMM. In the VMM's arguments, `{fd:<key>.rw}`,
/// `{fd:<key>.ro}` and `{fd:<key>.backing}` stand for the descriptors it opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailDisk {
    pub key: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// The qcow2 backing file, opened read-only.
    pub backing: Option<PathBuf>,
    /// The VMM opens it itself, by path (`/disks/<key>` in the jail), as the VM's uid.
    #[serde(default)]
    pub by_path: bool,
    /// The VM's own disk: made the VM's uid's before the VMM opens it by path.
    #[serde(default)]
    pub own: bool,
}

/// A device node in the jail's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailDevice {
    /// Path under `/dev`, e.g. `net/tun`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    /// Owned by the VM's uid (e.g. `/dev/kvm`), else by root.
    pub owned: bool,
}

/// Everything the jailer needs (written to `vm/<uid>/jail.json` by the supervisor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    pub uid: u32,
    pub gid: u32,
    /// The jail's root on the host.
    pub root: PathBuf,
    /// The network namespace to enter (`/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// cgroup directories to join.
    pub cgroups: Vec<PathBuf>,
    /// Host files bind-mounted read-only at a path inside the jail.
    pub files: Vec<(PathBuf, String)>,
    pub devices: Vec<JailDevice>,
    pub disks: Vec<JailDisk>,
    /// A host directory the VMM writes its own files in, bound read-write at the same path and
    /// made the VM's uid's.
    #[serde(default)]
    pub rw_dir: Option<PathBuf>,
    /// The VMM's argv; `argv[0]` is an absolute path that exists inside the jail.
    pub argv: Vec<String>,
    /// The read end of a pipe whose write end only the supervisor holds: closed (hung up)
    /// once the supervisor is gone.
    pub alive_fd: Option<i32>,
    /// The VM's UID (its cgroup's name).
    pub vm: String,
    /// The cgroup's limits (memory bytes, CPUs); the jailer creates it (its directories are
    /// `cgroups`, recorded by the supervisor beforehand).
    pub limits: Option<(u64, u64)>,
}

/// The devices every jail has.
pub fn base_devices() -> Vec<JailDevice> {
    let d = |name: &str, major, minor| JailDevice { name: name.into(), major, minor, mode: 0o666, owned: false };
    vec![d("null", 1, 3), d("zero", 1, 5), d("random", 1, 8), d("urandom", 1, 9), d("net/tun", 10, 200)]
}

/// `/dev/kvm`, owned by the VM's uid only.
pub fn kvm_device() -> JailDevice {
    JailDevice { name: "kvm".into(), major: 10, minor: 232, mode: 0o600, owned: true }
}

fn ctx<E: std::fmt::Display>(what: impl Fn() -> String) -> impl FnOnce(E) -> String {
    move |e| format!("{}: {e}", what())
}

/// Runs the jailer: never returns. It makes the PID namespace (a process with threads cannot,
/// so not the supervisor), starts its second stage as that namespace's PID 1, waits for it and
/// ends as it ended (its exit code, or the signal that killed it). Killing the jailer kills the
/// VMM (its parent-death signal).
pub fn jailer_main(spec_path: &Path) -> ! {
    if let Err(e) = ignite_runtime::sys::unshare_pid_namespace() {
        eprintln!("ignite-jail: error: cannot make a PID namespace: {e}");
        std::process::exit(125);
    }
    let spec = std::fs::read(spec_path).ok().and_then(|b| serde_json::from_slice::<JailSpec>(&b).ok());
    // Closed (both ends close-on-exec) when the second stage has exec'd the VMM.
    let (exec_r, exec_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ignite-jail: error: pipe: {e}");
            std::process::exit(125);
        }
    };
    // The second stage is a fork (no second exec): PID 1 of the new namespace.
    let child = match ignite_runtime::sys::fork_single_threaded() {
        Ok(None) => {
            drop(exec_r);
            let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
            jailer_pid1(spec_path, spec.as_ref());
        }
        Ok(Some(pid)) => {
            drop(exec_w);
            pid
        }
        Err(e) => {
            eprintln!("ignite-jail: error: cannot start the VMM's namespace: {e}");
            std::process::exit(125);
        }
    };
    let kill_child = || {
        if let Some(p) = rustix::process::Pid::from_raw(child as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    };
    // The VM's cgroup is made while the VMM's jail is set up, and the VMM put into it once it
    // has started: a cgroup migration waits for an RCU grace period (~15 ms here) and blocks
    // the migrated process's exec meanwhile, which would delay every start. (Memory the VMM
    // charged before the move moves with it on cgroup v1.)
    let cgroups = match spec.as_ref().and_then(|s| s.limits.map(|l| (s, l))) {
        Some((s, (memory_max, cpus))) => {
            match ignite_runtime::cgroup::make(&s.vm, ignite_runtime::cgroup::Limits { memory_max, cpus }) {
                Ok(cg) => cg.dirs,
                Err(e) => {
                    eprintln!("ignite-jail: error: {e}");
                    kill_child();
                    Vec::new()
                }
            }
        }
        None => spec.map(|s| s.cgroups).unwrap_or_default(),
    };
    let mut buf = [0u8; 1];
    while let Err(rustix::io::Errno::INTR) = rustix::io::read(&exec_r, &mut buf) {}
    for d in &cgroups {
        if let Err(e) = std::fs::write(d.join("cgroup.procs"), child.to_string()) {
            eprintln!("ignite-jail: error: cannot put the VMM into its cgroup {}: {e}", d.display());
            kill_child();
        }
    }
    let status = loop {
        match rustix::process::waitpid(
            rustix::process::Pid::from_raw(child as i32),
            rustix::process::WaitOptions::empty(),
        ) {
            Ok(Some((_, st))) => break st,
            Err(rustix::io::Errno::INTR) => continue,
            _ => std::process::exit(125),
        }
    };
    if let Some(sig) = status.terminating_signal() {
        ignite_runtime::sys::die_of_signal(sig);
    }
    std::process::exit(status.exit_status().unwrap_or(125));
}

/// The jailer's second stage, PID 1 of the VMM's namespace: never returns (the VMM replaces
/// it, or it exits 125 with its reason on stderr, which is the VM's `vmm.log`).
fn jailer_pid1(spec_path: &Path, spec: Option<&JailSpec>) -> ! {
    let res = spec
        .ok_or_else(|| format!("cannot read the jail's specification {}", spec_path.display()))
        .and_then(|spec| enter(spec).map(|argv| (spec, argv)));
    match res {
        Ok((_, argv)) => {
            use std::os::unix::process::CommandExt;
            // For benchmarks: when the jailed VMM starts (the jail's cost is the time up to here).
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            eprintln!("ignite-jail: timing vmm_exec_unix_ns={now}");
            let err = std::process::Command::new(&argv[0]).args(&argv[1..]).env_clear().exec();
            eprintln!("ignite-jail: error: cannot run {}: {err}", argv[0]);
        }
        Err(e) => eprintln!("ignite-jail: error: {e}"),
    }
    std::process::exit(125);
}

/// Steps 1–5; returns the VMM's argv with its descriptors filled in.
fn enter(spec: &JailSpec) -> Result<Vec<String>, String> {
    if spec.uid == 0 || spec.gid == 0 {
        return Err("refusing to run a VMM as root in a jail".into());
    }
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(ctx(|| format!("cannot open {}", ns.display())))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(ctx(|| format!("cannot enter the network namespace {}", ns.display())))?;
    }
    let argv = open_disks(spec)?;
    hand_over(spec)?;
    ignite_runtime::sys::unshare_mount_namespace().map_err(ctx(|| "cannot make a mount namespace".into()))?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .map_err(ctx(|| "cannot make / private".into()))?;
    build_root(spec)?;
    rustix::process::pivot_root(&spec.root, spec.root.join(".old"))
        .map_err(ctx(|| format!("cannot pivot_root into {}", spec.root.display())))?;
    std::env::set_current_dir("/").map_err(ctx(|| "cannot chdir /".into()))?;
    rustix::mount::unmount("/.old", UnmountFlags::DETACH).map_err(ctx(|| "cannot drop the host's /".into()))?;
    std::fs::remove_dir("/.old").map_err(ctx(|| "cannot remove /.old".into()))?;
    rustix::mount::mount_remount("/", MountFlags::RDONLY, "").map_err(ctx(|| "cannot make / read-only".into()))?;
    drop_privileges(spec)?;
    check_disks(spec)?;
    Ok(argv)
}

/// Makes what the VMM writes by path its uid's: its files directory (and what is in it), its
/// own writable disks.
fn hand_over(spec: &JailSpec) -> Result<(), String> {
    // (Never through a symlink: `lchown`.)
    let give = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(spec.uid), Some(spec.gid))
            .map_err(ctx(|| format!("cannot give {} to uid {}", p.display(), spec.uid)))
    };
    if let Some(dir) = &spec.rw_dir {
        give(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(ctx(|| format!("cannot chmod {}", dir.display())))?;
        for e in std::fs::read_dir(dir).map_err(ctx(|| format!("cannot read {}", dir.display())))? {
            give(&e.map_err(ctx(|| format!("cannot read {}", dir.display())))?.path())?;
        }
    }
    for d in spec.disks.iter().filter(|d| d.by_path && d.own && !d.read_only) {
        give(&d.path)?;
    }
    Ok(())
}

/// Once the VMM's uid: opens every disk the VMM will open by path as it will, so that one it
/// cannot is named with its host path (instead of the VMM's own message about `/disks/...`).
fn check_disks(spec: &JailSpec) -> Result<(), String> {
    for d in spec.disks.iter().filter(|d| d.by_path) {
        let inside = ignite_vmm::VmmDisk::jail_path(&d.key);
        std::fs::OpenOptions::new().read(true).write(!d.read_only).open(&inside).map_err(|e| {
            let how = if d.read_only { "read" } else { "read and write" };
            format!(
                "the VM's uid {} cannot {how} {} ({e}): the VMM opens it by path as that uid; make it accessible to uid {} or run with --jail=false",
                spec.uid,
                d.path.display(),
                spec.uid
            )
        })?;
    }
    Ok(())
}

/// Opens the disks and fills in their descriptors in the argv.
fn open_disks(spec: &JailSpec) -> Result<Vec<String>, String> {
    let mut subst: Vec<(String, i32)> = Vec::new();
    let mut keep = |key: String, f: std::fs::File| -> Result<(), String> {
        let fd = ignite_runtime::sys::keep_open(f).map_err(ctx(|| format!("cannot pass {key} on")))?;
        subst.push((key, fd));
        Ok(())
    };
    for d in spec.disks.iter().filter(|d| !d.by_path) {
        let open = |p: &Path, rw: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(rw)
                .open(p)
                .map_err(ctx(|| format!("cannot open {}", p.display())))
        };
        if !d.read_only {
            keep(format!("{}.rw", d.key), open(&d.path, true)?)?;
        }
        keep(format!("{}.ro", d.key), open(&d.path, false)?)?;
        if let Some(b) = &d.backing {
            keep(format!("{}.backing", d.key), open(b, false)?)?;
        }
    }
    Ok(spec
        .argv
        .iter()
        .map(|a| {
            let mut a = a.clone();
            for (k, fd) in &subst {
                a = a.replace(&format!("{{fd:{k}}}"), &fd.to_string());
            }
            a
        })
        .collect())
}

fn bind_ro(src: &Path, dst: &Path) -> Result<(), String> {
    bind(src, dst, MountFlags::RDONLY | MountFlags::NOSUID)
}

/// Binds `src` at `dst` with `flags` (a bind mount takes its flags from a remount).
fn bind(src: &Path, dst: &Path, flags: MountFlags) -> Result<(), String> {
    rustix::mount::mount_bind(src, dst).map_err(ctx(|| format!("cannot bind {} into the jail", src.display())))?;
    rustix::mount::mount_remount(dst, MountFlags::BIND | flags, "")
        .map_err(ctx(|| format!("cannot set the flags of {} in the jail", dst.display())))
}

fn build_root(spec: &JailSpec) -> Result<(), String> {
    let root = &spec.root;
    std::fs::create_dir_all(root).map_err(ctx(|| format!("cannot create {}", root.display())))?;
    rustix::mount::mount("tmpfs", root, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, c"mode=0755,size=1m")
        .map_err(ctx(|| format!("cannot mount a tmpfs on {}", root.display())))?;
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(ctx(|| format!("cannot create {}", p.display())));
    // The system: /usr read-only, and /lib, /bin ... as the host has them (links on a merged
    // /usr, directories elsewhere).
    mkdir(&root.join("usr"))?;
    bind_ro(Path::new("/usr"), &root.join("usr"))?;
    for top in ["lib", "lib64", "lib32", "bin", "sbin"] {
        let host = Path::new("/").join(top);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host).map_err(ctx(|| format!("cannot read {}", host.display())))?;
                std::os::unix::fs::symlink(target, root.join(top)).map_err(ctx(|| format!("cannot link {top}")))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir(&root.join(top))?;
                bind_ro(&host, &root.join(top))?;
            }
            _ => {}
        }
    }
    mkdir(&root.join("etc"))?;
    let mut files = spec.files.clone();
    if Path::new("/etc/ld.so.cache").is_file() {
        files.push(("/etc/ld.so.cache".into(), "/etc/ld.so.cache".into()));
    }
    for (host, inside) in &files {
        let dst = root.join(inside.trim_start_matches('/'));
        if let Some(parent) = dst.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&dst, b"").map_err(ctx(|| format!("cannot create {}", dst.display())))?;
        bind_ro(host, &dst)?;
    }
    for d in spec.disks.iter().filter(|d| d.by_path) {
        let dst = root.join(ignite_vmm::VmmDisk::jail_path(&d.key).strip_prefix("/").unwrap_or(Path::new(&d.key)));
        if let Some(parent) = dst.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&dst, b"").map_err(ctx(|| format!("cannot create {}", dst.display())))?;
        if d.read_only {
            bind_ro(&d.path, &dst)?;
        } else {
            bind(&d.path, &dst, MountFlags::NOSUID | MountFlags::NOEXEC)?;
        }
    }
    if let Some(dir) = &spec.rw_dir {
        let dst = root.join(dir.strip_prefix("/").map_err(|_| format!("{} is not absolute", dir.display()))?);
        mkdir(&dst)?;
        bind(dir, &dst, MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC)?;
    }
    let dev = root.join("dev");
    mkdir(&dev)?;
    for d in &spec.devices {
        let p = dev.join(&d.name);
        if let Some(parent) = p.parent() {
            mkdir(parent)?;
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(d.mode),
            rustix::fs::makedev(d.major, d.minor),
        )
        .map_err(ctx(|| format!("cannot make {}", p.display())))?;
        rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(d.mode))
            .map_err(ctx(|| format!("cannot chmod {}", p.display())))?;
        if d.owned {
            std::os::unix::fs::chown(&p, Some(spec.uid), Some(spec.gid))
                .map_err(ctx(|| format!("cannot chown {}", p.display())))?;
        }
    }
    let proc = root.join("proc");
    mkdir(&proc)?;
    rustix::mount::mount(
        "proc",
        &proc,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::RDONLY,
        None,
    )
    .map_err(ctx(|| "cannot mount the jail's /proc".into()))?;
    mkdir(&root.join(".old"))?;
    Ok(())
}

fn drop_privileges(spec: &JailSpec) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    rustix::thread::set_thread_groups(&[]).map_err(ctx(|| "cannot drop the supplementary groups".into()))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(ctx(|| format!("cannot become gid {}", spec.gid)))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(ctx(|| format!("cannot become uid {}", spec.uid)))?;
    // A change of credentials clears the parent-death signal: the VMM must still die with
    // its supervisor.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(ctx(|| "cannot set the parent-death signal".into()))?;
    // The supervisor may have died before the signal was set again (its pid is not visible
    // from this PID namespace): its end of the pipe tells.
    if let Some(fd) = spec.alive_fd {
        if ignite_runtime::sys::hung_up(fd) {
            return Err("the supervisor is gone".into());
        }
    }
    rustix::thread::set_no_new_privs(true).map_err(ctx(|| "cannot set no_new_privs".into()))?;
    Ok(())
}
