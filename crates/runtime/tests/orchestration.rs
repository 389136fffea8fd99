//! Start's and stop's decisions, without a VM: `start_on`, `stop_on` and `kill_on` driven
//! through a scripted [`Host`] (as youki tests its syscalls) — what is allocated in which order,
//! what is released on which failure, when a stop escalates and what is recorded. The store,
//! leases, disks and the VM's initramfs are real; the network, the supervisor process and its
//! signals are the script's. The real-VM tests (`ignite-cli`'s) cover the real host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ignite_api::{Ending, Kernel, KernelSpec, ObjectMeta, RuntimeStatus, Vm, VmSpec};
use ignite_runtime::config::{ConfigSource, LoadedConfig};
use ignite_runtime::host::{Host, Sig};
use ignite_runtime::lease::Lease;
use ignite_runtime::preflight::{Check, Level};
use ignite_runtime::start::{start_on, StartError, StartOptions, VMLINUX};
use ignite_runtime::stop::{kill_on, stop_on, StopError};
use ignite_runtime::vmdir::VmDir;
use ignite_store::Store;
use ignite_vmm::{Backend, Nic, VmmError};

/// How a scripted supervisor answers a signal.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Guest {
    /// Shuts down when asked; stops its VMM when told.
    Obeys,
    /// Ignores Ctrl-Alt-Del; its supervisor stops the VMM when told.
    IgnoresShutdown,
    /// The supervisor itself is wedged: only SIGKILL ends it.
    Wedged,
}

struct Scripted {
    store: Store,
    /// What the host was asked to do, in order.
    calls: Mutex<Vec<String>>,
    checks: Mutex<Vec<Check>>,
    memory_mib: u64,
    /// The supervisor spawn fails with this message.
    spawn_fails: Mutex<Option<String>>,
    guest: Guest,
    /// Live scripted supervisors: pid → VM uid.
    live: Mutex<HashMap<u32, String>>,
    attached: Mutex<Vec<String>>,
}

const SUPERVISOR_PID: u32 = 4_000_001;

impl Scripted {
    fn new(store: &Store, guest: Guest) -> Scripted {
        Scripted {
            store: store.clone(),
            calls: Mutex::default(),
            checks: Mutex::default(),
            memory_mib: 24 * 1024,
            spawn_fails: Mutex::default(),
            guest,
            live: Mutex::default(),
            attached: Mutex::default(),
        }
    }
    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    /// The scripted supervisor of `uid` ends, recording `how` (or nothing: it died).
    fn end(&self, pid: u32, how: Option<Ending>) {
        let Some(uid) = self.live.lock().unwrap().remove(&pid) else { return };
        if let Some(how) = how {
            self.store
                .modify::<Vm, _>(&uid, |v| v.status.record_ended(Some(pid), Some(0), &how, chrono::Utc::now()))
                .unwrap();
        }
    }
}

/// The attachment the scripted host gives VM `vm`.
fn attachment(vm: &Vm) -> ignite_net::Attachment {
    ignite_net::Attachment {
        container_id: vm.uid(),
        netns: format!("ignite-{}", vm.uid()),
        network: "ignite-cni-bridge".into(),
        conflist: "/etc/cni/net.d/10-ignite.conflist".into(),
        cni_args: String::new(),
        ports: vec![],
        result: serde_json::Value::Null,
        tap: "tap0".into(),
        mac: "02:00:0a:3d:00:07".into(),
        ip: "10.61.0.7".parse().unwrap(),
        prefix_len: 16,
        gateway: Some("10.61.0.1".parse().unwrap()),
        dns: vec!["10.61.0.1".into()],
    }
}

impl Host for Scripted {
    fn backend(&self, name: &str, _: &ignite_vmm::Settings) -> Result<Arc<dyn Backend>, VmmError> {
        self.call(format!("backend {name}"));
        Ok(Arc::new(ignite_vmm::testing::Scripted::default()))
    }
    fn preflight(&self, plugin: &str, jailed: bool, _: &dyn Backend) -> Vec<(Check, &'static str)> {
        self.call(format!("preflight {plugin} jailed={jailed}"));
        self.checks.lock().unwrap().iter().map(|c| (c.clone(), "Scripted")).collect()
    }
    fn memory_mib(&self) -> Option<u64> {
        Some(self.memory_mib)
    }
    fn attach_network(
        &self,
        _: &Store,
        dir: &VmDir,
        vm: &Vm,
        _: Option<u32>,
        _: &[String],
    ) -> Result<(ignite_net::Attachment, Vec<Nic>), StartError> {
        self.call("attach".into());
        self.attached.lock().unwrap().push(dir.display().to_string());
        Ok((attachment(vm), vec![]))
    }
    fn plan_network(
        &self,
        _: &Store,
        dir: &VmDir,
        vm: &Vm,
        _: Option<u32>,
    ) -> Result<ignite_net::Attachment, StartError> {
        self.call("plan".into());
        self.attached.lock().unwrap().push(dir.display().to_string());
        Ok(ignite_net::Attachment {
            result: serde_json::Value::Null,
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            ..attachment(vm)
        })
    }
    fn release_network(&self, dir: &VmDir) {
        let mut a = self.attached.lock().unwrap();
        let before = a.len();
        a.retain(|d| *d != dir.display().to_string());
        self.call(if a.len() < before { "release (attached)" } else { "release (nothing)" }.into());
    }
    fn spawn_supervisor(
        &self,
        _: &Path,
        _: &VmDir,
        uid: &str,
        _: &str,
        leases: &[Lease],
        prepare: &mut dyn FnMut() -> Result<(), StartError>,
    ) -> Result<u32, StartError> {
        let what: Vec<&str> = leases.iter().map(|l| l.what.as_str()).collect();
        self.call(format!("spawn holding {}", what.join(",")));
        prepare()?;
        if let Some(message) = self.spawn_fails.lock().unwrap().clone() {
            return Err(StartError::Supervisor { name: "a".into(), message });
        }
        // What the supervisor does before it reports ready: record the VM running.
        self.live.lock().unwrap().insert(SUPERVISOR_PID, uid.to_string());
        let runtime =
            RuntimeStatus { id: uid.into(), name: "scripted".into(), pid: Some(SUPERVISOR_PID), ..Default::default() };
        self.store.modify::<Vm, _>(uid, |v| v.status.record_running(runtime, chrono::Utc::now())).unwrap();
        Ok(SUPERVISOR_PID + 1)
    }
    fn supervisor_alive(&self, pid: u32, uid: &str) -> bool {
        self.live.lock().unwrap().get(&pid).is_some_and(|u| u == uid)
    }
    fn signal(&self, pid: u32, sig: Sig) -> std::io::Result<()> {
        self.call(format!("signal {sig:?}"));
        match (sig, self.guest) {
            (Sig::Terminate, Guest::Obeys) => self.end(pid, Some(Ending::Stopped)),
            (Sig::Interrupt, Guest::Obeys | Guest::IgnoresShutdown) => self.end(pid, Some(Ending::Killed)),
            (Sig::Kill, _) => self.end(pid, None),
            _ => {}
        }
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    config: LoadedConfig,
    vm: Vm,
}

/// A store with a kernel and a VM (its qcow2 root disk over a raw base) that has never run.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state")).unwrap();
    let mut spec = VmSpec {
        image: ignite_api::OciSpec { oci: Some("busybox".parse().unwrap()) },
        agent: Some(false),
        jail: Some(false),
        ..Default::default()
    };
    spec.set_defaults();
    let lock = store.lock().unwrap();
    let kernel_ref = spec.kernel.oci.clone().unwrap();
    let kernel = Kernel::new(
        ObjectMeta { name: kernel_ref.normalized(), ..Default::default() },
        KernelSpec { oci: Some(kernel_ref) },
    );
    let kernel = store.create(&lock, kernel).unwrap();
    std::fs::write(store.dir::<Kernel>(&kernel.uid()).join(VMLINUX), b"not booted here").unwrap();
    let vm = store.create(&lock, Vm::new(ObjectMeta { name: "a".into(), ..Default::default() }, spec)).unwrap();
    drop(lock);
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    ignite_disk::create_overlay(&base, &VmDir::of(&store, &vm.uid()).root_disk(), 1 << 20).unwrap();
    let config = LoadedConfig { spec: Default::default(), source: ConfigSource::Defaults };
    Setup { _dir: dir, store, config, vm }
}

fn start(s: &Setup, host: &Scripted) -> Result<Vm, StartError> {
    let vm = s.store.get::<Vm>(&s.vm.uid()).unwrap();
    start_on(host, &s.store, &s.config, vm, &StartOptions::default()).map(|st| st.vm)
}

#[test]
fn a_start_allocates_in_order_and_hands_the_supervisor_its_machine() {
    let s = setup();
    let host = Scripted::new(&s.store, Guest::Obeys);
    let vm = start(&s, &host).unwrap();
    assert_eq!(
        host.take(),
        ["release (nothing)", "backend qemu", "preflight cni jailed=false", "attach", "spawn holding supervisor"],
        "what a killed start left is released before anything is allocated; the network before the supervisor"
    );
    assert!(vm.status.running);
    assert_eq!(vm.status.network.as_ref().unwrap().ip_addresses[0].to_string(), "10.61.0.7");
    let boot: ignite_runtime::boot::BootConfig =
        serde_json::from_slice(&std::fs::read(VmDir::of(&s.store, &vm.uid()).boot_config()).unwrap()).unwrap();
    assert_eq!(boot.machine.nics, [Nic { tap: "tap0".into(), mac: "02:00:0a:3d:00:07".into() }]);
    assert!(
        boot.machine.cmdline.contains("ip=10.61.0.7::10.61.0.1:255.255.0.0:a:eth0:off"),
        "{}",
        boot.machine.cmdline
    );
    assert_eq!(
        boot.dhcp.as_ref().map(|(l, server)| (l.ip.to_string(), server.to_string())),
        Some(("10.61.0.7".into(), "10.61.0.1".into()))
    );
    assert_eq!(boot.machine.drives[0].path, VmDir::of(&s.store, &vm.uid()).root_disk());
    assert!(boot.machine.drives[0].backing.as_ref().unwrap().ends_with("base.raw"));
    // Running: a second start is refused before anything is allocated.
    let err = start(&s, &host).unwrap_err();
    assert!(matches!(err, StartError::AlreadyRunning { .. }), "{err}");
    assert!(host.take().is_empty());
}

#[test]
fn a_start_that_fails_after_its_network_releases_it_and_can_be_started_again() {
    let s = setup();
    let host = Scripted::new(&s.store, Guest::Obeys);
    *host.spawn_fails.lock().unwrap() = Some("cannot launch the VMM".into());
    let err = start(&s, &host).unwrap_err();
    assert!(err.to_string().contains("cannot launch the VMM"), "{err}");
    assert_eq!(
        host.take(),
        [
            "release (nothing)",
            "backend qemu",
            "preflight cni jailed=false",
            "attach",
            "spawn holding supervisor",
            "release (attached)"
        ]
    );
    let vm = s.store.get::<Vm>(&s.vm.uid()).unwrap();
    assert!(!vm.status.running && vm.status.network.is_none(), "{:?}", vm.status);
    // The supervisor lease was dropped with the failed start: the next start takes it.
    *host.spawn_fails.lock().unwrap() = None;
    assert!(start(&s, &host).unwrap().status.running);
}

/// Returns once a start holds the VM's start lock (it then checks the VM, then takes the
/// supervisor lease).
fn until_a_start_holds_the_vm(dir: &VmDir) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = std::fs::File::options().create(true).truncate(false).write(true).open(dir.start_lock()).unwrap();
        match f.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) => return,
            Err(std::fs::TryLockError::Error(e)) => panic!("{e}"),
            Ok(()) => drop(f),
        }
        assert!(Instant::now() < deadline, "no start took the VM's start lock");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_start_waits_for_a_supervisor_not_yet_recorded_and_refuses_once_it_runs_the_vm() {
    let s = setup();
    let host = Scripted::new(&s.store, Guest::Obeys);
    let dir = VmDir::of(&s.store, &s.vm.uid());
    let uid = s.vm.uid();
    // A supervisor whose start was killed before it reported ready may still come up: once it
    // records the VM running, the start is refused, nothing released or allocated under it.
    let held = ignite_runtime::lease::supervisor(&dir).unwrap().unwrap();
    let pid = std::process::id();
    let err = std::thread::scope(|t| {
        t.spawn(|| {
            until_a_start_holds_the_vm(&dir);
            host.live.lock().unwrap().insert(pid, uid.clone());
            let runtime = RuntimeStatus { id: uid.clone(), pid: Some(pid), ..Default::default() };
            s.store.modify::<Vm, _>(&uid, |v| v.status.record_running(runtime, chrono::Utc::now())).unwrap();
        });
        start(&s, &host).unwrap_err()
    });
    assert!(matches!(err, StartError::AlreadyRunning { .. }), "{err}");
    assert!(host.take().is_empty(), "nothing released or allocated under a live supervisor");
    drop(held);
    host.live.lock().unwrap().remove(&pid);
    s.store.modify::<Vm, _>(&uid, |v| v.status.running = false).unwrap();

    // One that gives up (its start was killed before its go-ahead) lets go of the lease as it
    // exits: the start waits for that, then starts.
    let held = ignite_runtime::lease::supervisor(&dir).unwrap().unwrap();
    let started = std::thread::scope(|t| {
        t.spawn(|| {
            until_a_start_holds_the_vm(&dir);
            drop(held);
        });
        start(&s, &host).unwrap()
    });
    assert!(started.status.running);
}

#[test]
fn failed_preflight_checks_stop_a_start_unless_ignored() {
    let s = setup();
    let host = Scripted::new(&s.store, Guest::Obeys);
    host.checks.lock().unwrap().push(Check { name: "nft", level: Level::Error, detail: "nft not found".into() });
    host.checks.lock().unwrap().push(Check { name: "kvm", level: Level::Warn, detail: "TCG only".into() });
    let err = start(&s, &host).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("nft: nft not found") && msg.contains("--ignore-preflight-checks nft"), "{msg}");
    assert!(!msg.contains("kvm"), "warnings do not stop a start: {msg}");
    assert!(!host.take().contains(&"attach".to_string()));
    let vm = s.store.get::<Vm>(&s.vm.uid()).unwrap();
    let opts = StartOptions { ignore_preflight: vec!["Scripted".into()], ..Default::default() };
    assert!(start_on(&host, &s.store, &s.config, vm, &opts).is_ok(), "ignored by its Weave Ignite name");
}

#[test]
fn what_a_vm_lacks_is_named_before_anything_is_allocated() {
    let s = setup();
    let mut host = Scripted::new(&s.store, Guest::Obeys);
    host.memory_mib = 100;
    let err = start(&s, &host).unwrap_err();
    assert!(err.to_string().contains("asks for 512 MiB of memory but this host has 100 MiB"), "{err}");
    host.memory_mib = 24 * 1024;
    let disk = VmDir::of(&s.store, &s.vm.uid()).root_disk();
    let base = ignite_disk::backing_file(&disk).unwrap().unwrap();
    std::fs::rename(&base, base.with_extension("away")).unwrap();
    let err = start(&s, &host).unwrap_err();
    assert!(matches!(err, StartError::BaseMissing { .. }), "{err}");
    std::fs::rename(base.with_extension("away"), &base).unwrap();
    std::fs::remove_file(&disk).unwrap();
    let err = start(&s, &host).unwrap_err();
    assert!(matches!(err, StartError::DiskMissing { .. }), "{err}");
    assert!(!host.take().contains(&"attach".to_string()));
    let vm = s.store.get::<Vm>(&s.vm.uid()).unwrap();
    assert!(!vm.status.running && vm.status.network.is_none());
}

#[test]
fn the_network_of_a_supervisor_that_died_is_released_before_the_next_start() {
    let s = setup();
    let host = Scripted::new(&s.store, Guest::Obeys);
    start(&s, &host).unwrap();
    // Gone without recording its end (killed with -9, the host rebooted).
    host.end(SUPERVISOR_PID, None);
    host.take();
    let vm = start(&s, &host).unwrap();
    assert!(vm.status.running);
    assert_eq!(host.take()[..1], ["release (attached)"], "released before the new attach");
}

fn running(guest: Guest) -> (Setup, Scripted) {
    let s = setup();
    let host = Scripted::new(&s.store, guest);
    start(&s, &host).unwrap();
    host.take();
    (s, host)
}

#[test]
fn a_stop_asks_the_guest_and_records_its_shutdown() {
    let (s, host) = running(Guest::Obeys);
    let vm = stop_on(&host, &s.store, s.store.get(&s.vm.uid()).unwrap(), Duration::from_secs(30)).unwrap();
    assert_eq!(host.take(), ["signal Terminate"]);
    assert!(!vm.status.running);
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, Ending::Stopped.to_string());
    let err = stop_on(&host, &s.store, vm, Duration::from_secs(30)).unwrap_err();
    assert!(matches!(err, StopError::NotRunning { .. }), "{err}");
}

#[test]
fn a_guest_that_ignores_the_request_is_stopped_after_the_grace() {
    let (s, host) = running(Guest::IgnoresShutdown);
    let grace = Duration::from_millis(300);
    let t = Instant::now();
    let vm = stop_on(&host, &s.store, s.store.get(&s.vm.uid()).unwrap(), grace).unwrap();
    assert!(t.elapsed() >= grace, "the guest had its grace period");
    assert_eq!(host.take(), ["signal Terminate", "signal Interrupt"]);
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, Ending::Killed.to_string());
}

#[test]
fn a_wedged_supervisor_is_killed_and_its_vm_recorded_killed() {
    let (s, host) = running(Guest::Wedged);
    let vm = kill_on(&host, &s.store, s.store.get(&s.vm.uid()).unwrap()).unwrap();
    assert_eq!(host.take(), ["signal Interrupt", "signal Kill"]);
    assert!(!vm.status.running);
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, Ending::Killed.to_string());
    assert!(!host.supervisor_alive(SUPERVISOR_PID, &s.vm.uid()));
}

#[test]
fn a_supervisor_that_died_is_recorded_not_signalled() {
    let (s, host) = running(Guest::Obeys);
    host.end(SUPERVISOR_PID, None);
    let err = stop_on(&host, &s.store, s.store.get(&s.vm.uid()).unwrap(), Duration::from_secs(30)).unwrap_err();
    assert!(matches!(err, StopError::NotRunning { .. }), "{err}");
    assert!(host.take().is_empty(), "no signal to a pid that is not the VM's supervisor");
    let vm = s.store.get::<Vm>(&s.vm.uid()).unwrap();
    assert_eq!(vm.status.exit.as_ref().unwrap().reason, Ending::SupervisorDied.to_string());
}
