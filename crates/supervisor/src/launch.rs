//! How the supervisor starts a VMM: the two [`ignite_vmm::Launcher`]s. [`Direct`] runs it as
//! root in the VM's network namespace (entered by `setns` in the child; `--jail=false`);
//! [`Jailed`] runs it through the jailer (`ignite-spawn --jailer jail.json`, see [`crate::jail`])
//! after recording its cgroup. Both bind the control sockets the backend asks for and pass them
//! down, pipe the serial console, send the VMM's stderr to `vmm.log`, and make the VMM die with
//! the supervisor.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ignite_vmm::{Launcher, VmmCommand, VmmError};

use ignite_runtime::boot::BootJail;
use ignite_runtime::cgroup::VmCgroup;
use ignite_runtime::sys;
use ignite_runtime::vmdir::VmDir;

/// What both launchers share: the sockets bound for the VMM, its log, the argv it ran.
#[derive(Debug)]
struct Common {
    listeners: Vec<UnixListener>,
    vmm_log: File,
}

impl Common {
    fn listen(&mut self, path: &Path) -> Result<i32, VmmError> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).map_err(|e| VmmError::Launch(format!("socket {}: {e}", path.display())))?;
        let fd = l.as_raw_fd();
        self.listeners.push(l);
        Ok(fd)
    }

    fn spawn(&mut self, mut cmd: Command, extra_fds: Vec<i32>) -> Result<Child, VmmError> {
        let mut pass: Vec<i32> = self.listeners.iter().map(AsRawFd::as_raw_fd).collect();
        pass.extend(extra_fds);
        let log = self.vmm_log.try_clone().map_err(|e| VmmError::Launch(format!("vmm.log: {e}")))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(log));
        sys::inherit_fds(&mut cmd, pass);
        sys::die_with_parent(&mut cmd);
        // For benchmarks and debugging: the exact command line and when it was spawned.
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        eprintln!("ignite-spawn: argv {}", serde_json::to_string(&argv).unwrap_or_default());
        let spawn_ns =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let child = cmd.spawn().map_err(|e| VmmError::Launch(format!("{}: {e}", argv[0])))?;
        eprintln!("ignite-spawn: timing vmm_spawn_unix_ns={spawn_ns}");
        // The listening sockets live on in the VMM only.
        self.listeners.clear();
        Ok(child)
    }
}

/// Runs the VMM unconfined, as root, in the VM's network namespace.
#[derive(Debug)]
pub struct Direct {
    common: Common,
    netns: Option<String>,
}

impl Direct {
    pub fn new(vmm_log: File, netns: Option<String>) -> Direct {
        Direct { common: Common { listeners: Vec::new(), vmm_log }, netns }
    }
}

impl Launcher for Direct {
    fn jailed(&self) -> bool {
        false
    }
    fn listen(&mut self, path: &Path) -> Result<i32, VmmError> {
        self.common.listen(path)
    }
    fn spawn(&mut self, vmm: VmmCommand) -> Result<Child, VmmError> {
        let mut cmd = Command::new(&vmm.program);
        cmd.args(&vmm.args);
        if let Some(ns) = &self.netns {
            let path = PathBuf::from(format!("/run/netns/{ns}"));
            let f = File::open(&path).map_err(|e| VmmError::Launch(format!("{}: {e}", path.display())))?;
            sys::enter_netns(&mut cmd, f);
        }
        self.common.spawn(cmd, Vec::new())
    }
}

/// Runs the VMM in its jail (see [`crate::jail`]).
#[derive(Debug)]
pub struct Jailed {
    common: Common,
    /// The VM's UID.
    vm: String,
    ids: BootJail,
    netns: Option<String>,
    cgroup: VmCgroup,
    /// The cgroup's limits: memory bytes, CPUs.
    limits: (u64, u64),
    /// Where the jailer's instructions are written.
    spec_path: PathBuf,
    /// The VM's directory: a writable disk in it is the VM's own.
    vm_dir: PathBuf,
    /// The liveness pipe: the jailer gets the read end; the supervisor keeps the write end
    /// (see [`Jailed::alive_writer`]).
    alive_r: Option<OwnedFd>,
    alive_w: Option<OwnedFd>,
}

impl Jailed {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vmm_log: File,
        vm: &str,
        ids: BootJail,
        netns: Option<String>,
        cgroup: VmCgroup,
        limits: (u64, u64),
        dir: &VmDir,
    ) -> Result<Jailed, String> {
        // Close-on-exec, both ends: the jailer is given the read end on purpose; the write end
        // must stay the supervisor's alone, or its death would never hang the pipe up (a VMM
        // holding it outlived its killed supervisor).
        let (alive_r, alive_w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        Ok(Jailed {
            common: Common { listeners: Vec::new(), vmm_log },
            vm: vm.to_string(),
            ids,
            netns,
            cgroup,
            limits,
            spec_path: dir.jail_spec(),
            vm_dir: dir.path().to_path_buf(),
            alive_r: Some(alive_r),
            alive_w: Some(alive_w),
        })
    }

    /// The write end of the liveness pipe, after the spawn: the supervisor holds it for its
    /// whole life (the jailer sees a hang-up once the supervisor is gone).
    pub fn alive_writer(&mut self) -> Option<OwnedFd> {
        self.alive_w.take()
    }

    /// The jailer's instructions for this VMM.
    fn spec(&self, vmm: &VmmCommand, alive_fd: i32) -> Result<crate::jail::JailSpec, String> {
        // The VMM binary by its absolute path: /usr is in every jail; a binary elsewhere is
        // bind-mounted at its own path.
        let program = std::fs::canonicalize(&vmm.program).map_err(|e| format!("{}: {e}", vmm.program.display()))?;
        let mut files = vmm.files.clone();
        if !program.starts_with("/usr/") {
            files.push((program.clone(), program.display().to_string()));
        }
        let mut devices = crate::jail::base_devices();
        if vmm.kvm {
            devices.push(crate::jail::kvm_device());
        }
        let disks = vmm
            .disks
            .iter()
            .map(|d| crate::jail::JailDisk {
                key: d.key.clone(),
                path: d.path.clone(),
                read_only: d.read_only,
                backing: d.backing.clone(),
                by_path: d.by_path,
                own: d.by_path && !d.read_only && d.path.starts_with(&self.vm_dir),
            })
            .collect();
        let mut argv = vec![program.display().to_string()];
        argv.extend(vmm.args.iter().cloned());
        Ok(crate::jail::JailSpec {
            uid: self.ids.uid,
            gid: self.ids.gid,
            root: ignite_runtime::jail::root_for(&self.vm),
            netns: self.netns.as_ref().map(|n| PathBuf::from(format!("/run/netns/{n}"))),
            cgroups: self.cgroup.dirs.clone(),
            files,
            devices,
            disks,
            rw_dir: vmm.rw_dir.clone(),
            argv,
            alive_fd: Some(alive_fd),
            vm: self.vm.clone(),
            limits: Some(self.limits),
        })
    }
}

impl Launcher for Jailed {
    fn jailed(&self) -> bool {
        true
    }
    fn listen(&mut self, path: &Path) -> Result<i32, VmmError> {
        self.common.listen(path)
    }
    fn spawn(&mut self, vmm: VmmCommand) -> Result<Child, VmmError> {
        let alive_fd = self.alive_r.as_ref().map(AsRawFd::as_raw_fd).ok_or(VmmError::Launch("spawned twice".into()))?;
        let spec = self.spec(&vmm, alive_fd).map_err(VmmError::Launch)?;
        // The VMM's own command line, as the jailer will exec it.
        eprintln!("ignite-spawn: jailed vmm argv {}", serde_json::to_string(&spec.argv).unwrap_or_default());
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| VmmError::Launch(e.to_string()))?;
        // Made again at every launch and read by the jailer it starts: not synced.
        ignite_store::write_atomic_unsynced(&self.spec_path, &json)
            .map_err(|e| VmmError::Launch(ignite_runtime::errors::chain(&e)))?;
        let me = std::env::current_exe().map_err(|e| VmmError::Launch(format!("cannot find ignite-spawn: {e}")))?;
        let mut cmd = Command::new(me);
        cmd.arg("--jailer").arg(&self.spec_path);
        let child = self.common.spawn(cmd, vec![alive_fd])?;
        // The jailer's end of the liveness pipe lives on in the jailer only.
        self.alive_r = None;
        Ok(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A network namespace for one test, removed when dropped.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn direct_enters_the_netns_and_hands_over_the_sockets() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: direct_enters_the_netns_and_hands_over_the_sockets needs root (network namespaces)");
            return;
        }
        let ns = Netns(format!("ignite-launch-test-{}", std::process::id()));
        assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success());
        // /run/netns/<name> is a bind mount of the namespace: its inode is the namespace's.
        let want = {
            use std::os::unix::fs::MetadataExt;
            format!("net:[{}]", std::fs::metadata(format!("/run/netns/{}", ns.0)).unwrap().ino())
        };
        let d = tempfile::tempdir().unwrap();
        let log = File::create(d.path().join("vmm.log")).unwrap();
        let mut l = Direct::new(log, Some(ns.0.clone()));
        assert!(!l.jailed());
        let fd = l.listen(&d.path().join("ctl.sock")).unwrap();
        let script = format!("readlink /proc/$$/ns/net; readlink /proc/$$/fd/{fd}");
        let mut child = l
            .spawn(VmmCommand {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script],
                files: vec![],
                disks: vec![],
                kvm: false,
                rw_dir: None,
            })
            .unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap(), want, "{out}");
        // The inherited descriptor is the listening socket.
        assert!(lines.next().unwrap_or_default().starts_with("socket:["), "{out}");
        // The supervisor keeps no copy of the listener once the VMM has it.
        assert!(l.common.listeners.is_empty());
    }
}
