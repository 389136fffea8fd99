//! The supervisor's decisions, without a VM: `supervise` driven through a test backend whose
//! "VMM" is a shell script playing a guest's console (the seam a real backend plugs into).
//! How the VM ended, what the store records, what the supervisor asked the VMM to do.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ignite_api::{ObjectMeta, Vm, VmSpec};
use ignite_runtime::boot::BootConfig;
use ignite_runtime::vmdir::VmDir;
use ignite_store::Store;
use ignite_vmm::{
    Accel, AccelChoice, AccelVerdict, AgentChannel, Backend, Capabilities, Control, DiskFormat, Drive, HostInfo,
    Instance, JailProfile, Launcher, Machine, RootDisk, VmmCommand, VmmError,
};

/// A backend whose VMM is `sh -c SCRIPT`; its control records what it was asked and signals
/// the script.
#[derive(Debug)]
struct Scripted {
    script: &'static str,
    asked: Arc<Mutex<Vec<&'static str>>>,
}

#[derive(Debug)]
struct ScriptControl {
    pid: u32,
    asked: Arc<Mutex<Vec<&'static str>>>,
}

impl ScriptControl {
    fn signal(&self, what: &'static str, sig: rustix::process::Signal) -> Result<(), VmmError> {
        self.asked.lock().unwrap().push(what);
        let pid = rustix::process::Pid::from_raw(self.pid as i32).unwrap();
        rustix::process::kill_process(pid, sig).map_err(|e| VmmError::Launch(e.to_string()))
    }
}

impl Control for ScriptControl {
    fn request_shutdown(&self) -> Result<(), VmmError> {
        self.signal("shutdown", rustix::process::Signal::TERM)
    }
    fn force_stop(&self) -> Result<(), VmmError> {
        self.signal("force_stop", rustix::process::Signal::KILL)
    }
}

impl Backend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            root_disks: &[RootDisk::Qcow2Overlay],
            drive_formats: &[DiskFormat::Raw],
            agent: AgentChannel::VirtioSerial,
            accels: &[Accel::Tcg],
            max_devices: 4,
            max_vcpus: 4,
        }
    }
    fn check_host(&self) -> Result<HostInfo, VmmError> {
        Ok(HostInfo { binary: "/bin/sh".into(), version: None, seccomp: Err("none".into()) })
    }
    fn choose_accel(
        &self,
        _: &std::path::Path,
        _: AccelChoice,
        _: &std::path::Path,
        _: &dyn Fn(&std::path::Path) -> Result<(), String>,
    ) -> Result<AccelVerdict, String> {
        Ok(AccelVerdict { accel: Accel::Tcg, reason: "test".into() })
    }
    fn jail_profile(&self, _: &Machine) -> JailProfile {
        JailProfile { overhead_mib: 0, seccomp: String::new() }
    }
    fn runtime_files(&self, _: &std::path::Path) -> Vec<PathBuf> {
        Vec::new()
    }
    fn launch(&self, m: &Machine, launcher: &mut dyn Launcher) -> Result<Instance, VmmError> {
        m.validate(&self.capabilities())?;
        let child = launcher.spawn(VmmCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), self.script.into()],
            files: vec![],
            disks: vec![],
            kvm: false,
        })?;
        let control = Arc::new(ScriptControl { pid: child.id(), asked: self.asked.clone() });
        Ok(Instance { child, control, runtime_files: vec![], agent: None })
    }
}

/// Runs a VM on `script` to its end; returns the recorded VM, what the control was asked, and
/// the console log.
fn supervise(script: &'static str) -> (Vm, Vec<&'static str>, String, String) {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let mut spec =
        VmSpec { image: ignite_api::OciSpec { oci: Some("busybox".parse().unwrap()) }, ..Default::default() };
    spec.set_defaults();
    let vm = {
        let lock = store.lock().unwrap();
        store.create(&lock, Vm::new(ObjectMeta { name: "scripted".into(), ..Default::default() }, spec)).unwrap()
    };
    let uid = vm.uid();
    let dir = VmDir::of(&store, &uid);
    let machine = Machine {
        uid: uid.clone(),
        name: "scripted".into(),
        id_prefix: "ignite".into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: "/nonexistent/vmlinux".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        drives: vec![Drive { path: dir.root_disk(), format: DiskFormat::Raw, read_only: false, backing: None }],
        nics: vec![],
        agent_port: None,
        accel: Accel::Tcg,
        debug: false,
        run_dir: dir.to_path_buf(),
    };
    let boot = BootConfig { vmm: "scripted".into(), machine, stop_grace_secs: 10, netns: None, dhcp: None, jail: None };
    let asked = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(Scripted { script, asked: asked.clone() });
    let mut ready = Vec::new();
    let code = ignite_supervisor::supervise::supervise(&store, &uid, &boot, backend, &mut ready).unwrap();
    assert_eq!(code, 0);
    let ready = String::from_utf8(ready).unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    assert!(!dir.attach_socket().exists(), "the attach socket outlived the VM");
    let console = std::fs::read_to_string(dir.console_log()).unwrap_or_default();
    let vm = store.get::<Vm>(&uid).unwrap();
    let asked = asked.lock().unwrap().clone();
    (vm, asked, console, ready)
}

#[test]
fn a_guest_that_powers_off_is_stopped_by_its_supervisor_and_recorded() {
    // The guest halts but the VMM would run on: the supervisor stops it.
    let (vm, asked, console, _) =
        supervise("echo 'Linux version 6.1 (test)'; echo 'reboot: Power down'; exec sleep 600");
    assert!(!vm.status.running);
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, "guest powered off");
    assert_eq!(vm.status.runtime.as_ref().unwrap().name, "scripted");
    assert_eq!(vm.status.runtime.as_ref().unwrap().pid, None);
    assert_eq!(asked, ["force_stop"]);
    assert!(console.contains("Linux version 6.1 (test)"), "{console}");
}

#[test]
fn a_vmm_that_exits_by_itself_is_recorded_with_its_code() {
    let (vm, asked, _, _) = supervise("echo booting; exit 3");
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, "VMM exited with code 3 (see vmm.log)");
    assert_eq!(vm.status.exit.as_ref().unwrap().code, Some(3));
    assert!(asked.is_empty(), "{asked:?}");
}

#[test]
fn the_guests_own_words_explain_its_end() {
    // An init failure followed by the panic it causes: the first, more useful account stays.
    let (vm, _, _, _) = supervise(
        "echo 'ignite-init: error: /sbin/init not found'; echo 'Kernel panic - not syncing: Attempted to kill init!'; exit 0",
    );
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, "guest init failed: /sbin/init not found");
    let (vm, _, _, _) = supervise("echo 'Kernel panic - not syncing: VFS: Unable to mount root fs'; exit 0");
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, "guest kernel panic: VFS: Unable to mount root fs");
}
