//! The supervisor's decisions, without a VM: `supervise` driven through the test backend
//! (`ignite_vmm::testing`) whose "VMM" is a shell script playing a guest's console.
//! How the VM ended, what the store records, what the supervisor asked the VMM to do.

use std::sync::{Arc, Mutex};

use ignite_api::{ObjectMeta, Vm, VmSpec};
use ignite_runtime::boot::BootConfig;
use ignite_runtime::vmdir::VmDir;
use ignite_store::Store;
use ignite_vmm::testing::Scripted;
use ignite_vmm::{Accel, DiskFormat, Drive, Machine};

/// A store with one VM, and the boot configuration that runs it on the scripted backend.
fn scripted_vm(d: &std::path::Path) -> (Store, String, BootConfig) {
    let store = Store::open(d).unwrap();
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
        incoming: None,
        tcg_cache_mib: None,
    };
    let boot = BootConfig {
        vmm: "scripted".into(),
        binaries: Default::default(),
        machine,
        stop_grace_secs: 10,
        netns: None,
        dhcp: None,
        jail: None,
        identity: None,
        network: None,
    };
    (store, uid, boot)
}

/// Runs a VM on `script` to its end; returns the recorded VM, what the control was asked, and
/// the console log.
fn supervise(script: &'static str) -> (Vm, Vec<&'static str>, String, String) {
    let d = tempfile::tempdir().unwrap();
    let (store, uid, boot) = scripted_vm(d.path());
    let dir = VmDir::of(&store, &uid);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(Scripted { script, asked: asked.clone() });
    let mut ready = Vec::new();
    let code =
        ignite_supervisor::supervise::supervise(&store, &uid, &boot, backend, &mut ready, &mut || Ok(())).unwrap();
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
fn a_resumed_guest_that_cannot_be_given_its_identity_is_stopped_not_reported_running() {
    // The scripted guest has no agent: the identity cannot be given. Its VMM would run on as a
    // copy of the snapshot's machine.
    let d = tempfile::tempdir().unwrap();
    let (store, uid, mut boot) = scripted_vm(d.path());
    boot.identity = Some(ignite_runtime::boot::IdentityPlan::new("clone", None, true));
    let dir = VmDir::of(&store, &uid);
    std::fs::write(dir.join(ignite_runtime::snapshot::RESTORE_FROM), "0123456789abcdef").unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(Scripted { script: "exec sleep 600", asked: asked.clone() });
    let mut ready = Vec::new();
    let started = std::time::Instant::now();
    let err =
        ignite_supervisor::supervise::supervise(&store, &uid, &boot, backend, &mut ready, &mut || Ok(())).unwrap_err();
    assert!(err.contains("could not be given its identity"), "{err}");
    // Returned once its VMM had exited (the supervisor waits for it): stopped, not left.
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "it waited for the VMM to end by itself");
    assert_eq!(asked.lock().unwrap().clone(), ["force_stop"]);
    assert!(ready.is_empty(), "reported ready: {}", String::from_utf8_lossy(&ready));
    let vm = store.get::<Vm>(&uid).unwrap();
    assert!(!vm.status.running, "recorded running");
    // Its next start resumes the snapshot again.
    assert!(dir.join(ignite_runtime::snapshot::RESTORE_FROM).exists());
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

#[test]
fn no_vmm_runs_without_the_go_ahead_of_its_start() {
    // The start that ran the supervisor failed (or was killed) while it wrote the boot's
    // initramfs: its VMM must not boot a half-written one. Started, this "VMM" would end at
    // once and the supervisor would report its run.
    let d = tempfile::tempdir().unwrap();
    let (store, uid, boot) = scripted_vm(d.path());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let backend = Arc::new(Scripted { script: "echo 'Linux version 6.1 (test)'; exit 0", asked: asked.clone() });
    let mut ready = Vec::new();
    let err = ignite_supervisor::supervise::supervise(&store, &uid, &boot, backend, &mut ready, &mut || {
        Err("the start ended before the VM's boot files were ready".into())
    })
    .unwrap_err();
    assert!(err.contains("boot files were ready"), "{err}");
    assert!(ready.is_empty(), "reported ready: {}", String::from_utf8_lossy(&ready));
    let console = std::fs::read_to_string(VmDir::of(&store, &uid).console_log()).unwrap_or_default();
    assert!(!console.contains("Linux version"), "the VMM ran: {console}");
    let vm = store.get::<Vm>(&uid).unwrap();
    assert!(!vm.status.running && vm.status.start_time.is_none(), "recorded as run: {:?}", vm.status);
    assert!(asked.lock().unwrap().is_empty());
}
