//! Weave Ignite's own end-to-end scenarios (its `e2e/*_test.go`), ported onto ignite: real
//! VMs (TCG here), real CNI plugins, real registries and git. Each test names the Ignite tests
//! it stands for.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails, field, ok, prepared_root, until, until_ok, write};

/// Runs `exec VM -- ARGS` until it works (the agent may still be starting), within 120 s.
fn exec_ok(root: &Path, vm: &str, args: &[&str]) -> String {
    until_ok(&format!("exec {args:?} in {vm}"), 120, || {
        let mut a = vec!["exec", "--timeout", "10", vm, "--"];
        a.extend_from_slice(args);
        let o = common::ignite(root, &a);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    })
}

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Ignite's TestOneExtraInterface, TestMultipleInterface, TestMultipleInterfaceImplicit: the
/// `ignite.weave.works/interface/<name>: tc-redirect` annotations. Interfaces created in the
/// VM's network namespace once it exists reach the guest as eth1, eth2 (sorted by name) with
/// their MACs; an interface that is not annotated never does.
#[test]
fn extra_interfaces_by_annotation() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let manifest = write(
        d.path(),
        "multinet.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: multinet\n  annotations:\n    ignite.weave.works/interface/foo: tc-redirect\n    ignite.weave.works/interface/bar: tc-redirect\nspec:\n  image:\n    oci: busybox\n  memory: 256MB\n",
    );
    ok(&root, &["create", "--config", &manifest]);
    let uid = field(&root, "multinet", "{{.UID}}");
    let ns = format!("ignite-{uid}");
    // `ignite start` waits for the annotated interfaces, which appear once the namespace does.
    let r = root.0.clone();
    let start = std::thread::spawn(move || common::ignite(&r, &["start", "multinet"]));
    until("the VM's namespace", 60, || Path::new(&format!("/run/netns/{ns}")).exists());
    sh(&format!("ip -n {ns} link add foo address aa:ca:e9:12:34:56 type veth"));
    sh(&format!("ip -n {ns} link add bar address aa:ca:e9:12:34:78 type veth"));
    sh(&format!("ip -n {ns} link add baz address aa:ca:e9:12:34:90 type veth"));
    let o = start.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(exec_ok(&root, "multinet", &["cat", "/sys/class/net/eth1/address"]).trim(), "aa:ca:e9:12:34:78");
    assert_eq!(exec_ok(&root, "multinet", &["cat", "/sys/class/net/eth2/address"]).trim(), "aa:ca:e9:12:34:56");
    let o = common::ignite(&root, &["exec", "multinet", "--", "cat", "/sys/class/net/eth3/address"]);
    assert!(!o.status.success(), "baz was not annotated: it must not reach the guest");
    // eth0 is still the CNI interface, with the VM's address.
    let ip = field(&root, "multinet", "{{.Status.Network.IPAddresses[0]}}");
    assert!(exec_ok(&root, "multinet", &["ip", "addr", "show", "eth0"]).contains(&ip));
    ok(&root, &["rm", "-f", "multinet"]);
    assert!(!Path::new(&format!("/run/netns/{ns}")).exists());
    // A mode ignite does not have is refused before anything is allocated.
    let bad = write(
        d.path(),
        "bad.yaml",
        &std::fs::read_to_string(&manifest).unwrap().replace("foo: tc-redirect", "foo: macvtap"),
    );
    ok(&root, &["create", "--config", &bad, "--name", "badnet"]);
    fails(&root, &["start", "badnet"], 1, "mode \"macvtap\" is not supported");
}

/// Ignite's id-prefix tests (TestVMLifecycle with --id-prefix): the VMM's process and the
/// VM's network namespace carry the prefix.
#[test]
fn id_prefix_names_the_vmm_and_the_namespace() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["--id-prefix", "e2e-test", "run", "-d", "busybox", "--name", "prefixed", "--memory", "256MB"]);
    let uid = field(&root, "prefixed", "{{.UID}}");
    // -d: the VMM logs the guest's device errors (its argv is in the supervisor's log).
    let spawn_log = std::fs::read_to_string(root.join("vm").join(&uid).join("spawn.log")).unwrap();
    assert!(spawn_log.contains("guest_errors,unimp"), "{spawn_log}");
    assert!(Path::new(&format!("/run/netns/e2e-test-{uid}")).exists());
    let pid = field(&root, "prefixed", "{{.Status.Runtime.Pid}}");
    // A descendant of the supervisor (its child, or the jail's PID 1 beneath it) is the VMM,
    // named with the prefix.
    let ppid_of = |p: &str| -> String {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).unwrap_or("").to_string()
    };
    // Waited for: `run` returns once the supervisor has started the VMM's jail, whose PID 1
    // execs the VMM a moment later.
    until(&format!("a VMM process named e2e-test-{uid}"), 10, || vmm_below(&pid, &uid, &ppid_of));
    ok(&root, &["rm", "-f", "prefixed"]);
    assert!(!Path::new(&format!("/run/netns/e2e-test-{uid}")).exists());
}

/// Whether a process named `-name e2e-test-<uid>` runs below `pid` (at most four levels).
fn vmm_below(pid: &str, uid: &str, ppid_of: &dyn Fn(&str) -> String) -> bool {
    let mut found = false;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let me = e.file_name().to_string_lossy().to_string();
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if !cmd.contains(&format!("-name e2e-test-{uid}")) {
            continue;
        }
        let mut p = ppid_of(&me);
        for _ in 0..4 {
            if p == pid {
                found = true;
                break;
            }
            if p.is_empty() || p == "0" || p == "1" {
                break;
            }
            p = ppid_of(&p);
        }
    }
    found
}

/// Ignite's TestVMpsWithOutdatedStatus: a record that says "stopped" while the VM runs is
/// shown as `*Up`, with a note; `rm -f` still stops the VM and releases everything.
#[test]
fn ps_marks_a_record_older_than_the_vm() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "outdated", "--memory", "256MB"]);
    let uid =
        ok(&root, &["ps", "-a", "-f", "{{.ObjectMeta.Name}}=outdated", "-t", "{{.ObjectMeta.UID}}"]).trim().to_string();
    let meta = root.join("vm").join(&uid).join("metadata.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    v["status"]["running"] = serde_json::Value::Bool(false);
    std::fs::write(&meta, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let o = common::ignite(&root, &["ps", "-a"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("*Up"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stderr).contains("The symbol *"), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = v["status"]["runtime"]["pid"].as_u64().unwrap();
    ok(&root, &["rm", "-f", "outdated"]);
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().is_empty(),
        "the supervisor survived rm -f"
    );
    assert!(!Path::new(&format!("/run/netns/ignite-{uid}")).exists(), "its network survived rm -f");
}

/// Ignite's cp tests: TestCopyFileFromHostToVM, TestCopySymlinkedFileFromHostToVM,
/// TestCopyFileFromVMToHost, TestCopyDirectoryFromHostToVM, TestCopyDirectoryFromVMToHost.
#[test]
fn cp_files_symlinks_and_directories_both_ways() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "cpvm", "--memory", "256MB", "--network-plugin", "none"]);
    exec_ok(&root, "cpvm", &["true"]);
    // A file, to the same path in the VM.
    let file = d.path().join("ignite-cp-test");
    std::fs::write(&file, "Some file content.").unwrap();
    exec_ok(&root, "cpvm", &["mkdir", "-p", &d.path().to_string_lossy()]);
    let f = file.to_string_lossy();
    ok(&root, &["cp", &f, &format!("cpvm:{f}")]);
    assert_eq!(exec_ok(&root, "cpvm", &["cat", &f]), "Some file content.");
    // A symlink to that file: its content arrives (the link is followed, as Ignite's scp did).
    let link = d.path().join("ignite-cp-test-link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let l = link.to_string_lossy();
    ok(&root, &["cp", &l, &format!("cpvm:{l}")]);
    assert_eq!(exec_ok(&root, "cpvm", &["cat", &l]), "Some file content.");
    // A file made in the VM, to the host.
    exec_ok(&root, "cpvm", &["sh", "-c", "echo from the vm > /root/vmfile"]);
    let back = d.path().join("vmfile-back");
    ok(&root, &["cp", "cpvm:/root/vmfile", &back.to_string_lossy()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the vm\n");
    // A directory to the VM, and one back.
    let dir = d.path().join("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/a.txt"), "a").unwrap();
    std::fs::write(dir.join("b.txt"), "b").unwrap();
    ok(&root, &["cp", &dir.to_string_lossy(), "cpvm:/root/tree"]);
    assert_eq!(exec_ok(&root, "cpvm", &["cat", "/root/tree/sub/a.txt", "/root/tree/b.txt"]), "ab");
    exec_ok(&root, "cpvm", &["sh", "-c", "mkdir -p /root/vmtree/x && echo y > /root/vmtree/x/y"]);
    let back = d.path().join("vmtree-back");
    ok(&root, &["cp", "cpvm:/root/vmtree", &back.to_string_lossy()]);
    assert_eq!(std::fs::read_to_string(back.join("x/y")).unwrap(), "y\n");
    ok(&root, &["rm", "-f", "cpvm"]);
}

/// Ignite's TestVMExecInteractive (stdin to a command, in the user's home) and
/// TestRunWithoutName (a generated name, found back by a label filter).
#[test]
fn exec_interactive_and_run_without_name() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(
        &root,
        &["run", "busybox", "--memory", "256MB", "--network-plugin", "none", "--label", "testName=TestRunWithoutName"],
    );
    let name = ok(
        &root,
        &["ps", "--filter={{.ObjectMeta.Labels}}=~testName:TestRunWithoutName", "--template={{.ObjectMeta.Name}}"],
    )
    .trim()
    .to_string();
    assert!(!name.is_empty() && name.contains('-'), "generated name {name:?}");
    exec_ok(&root, &name, &["true"]);
    let mut child = Command::new(common::bin())
        .args(["exec", &name, "tee", "afile.txt"])
        .env("IGNITE_ROOT", &*root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"foooo...").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(exec_ok(&root, &name, &["cat", "afile.txt"]), "foooo...");
    assert_eq!(exec_ok(&root, &name, &["pwd"]).trim(), "/root", "commands run in the user's home");
    // One command line as one argument, as Ignite's tests pass them.
    assert_eq!(exec_ok(&root, &name, &["mkdir -p /x && echo ok"]).trim(), "ok");
    ok(&root, &["rm", "-f", &name]);
}

/// A web server on the host's side of the VM bridge (10.61.0.1), for guests to fetch from
/// (Ignite's tests curled google.com; this host has no internet).
struct HostServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HostServer {
    fn start() -> HostServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "hello-from-the-host\n").unwrap();
        let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "0.0.0.0", "--directory"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        common::until_listening(&format!("127.0.0.1:{port}"), 10);
        HostServer { child, port, _dir: dir }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ignite's TestVMLifecycle*, TestIgniteRunWith*, TestCurlWith*, TestVMProviderSwitch,
/// TestVMStartNonDefaultProvider, TestVMStopStartDefaultProviders: run with CNI (Ignite's
/// docker-bridge is CNI's bridge here, and --runtime has no effect), reach the network, stop,
/// start with another network plugin and back.
#[test]
fn lifecycle_across_network_plugins() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let web = HostServer::start();
    let url = format!("http://10.61.0.1:{}/", web.port);
    ok(
        &root,
        &[
            "--runtime",
            "containerd",
            "--network-plugin",
            "docker-bridge",
            "run",
            "busybox",
            "--name",
            "life",
            "--memory",
            "256MB",
        ],
    );
    assert_eq!(exec_ok(&root, "life", &["wget", "-qO-", &url]), "hello-from-the-host\n");
    ok(&root, &["stop", "life"]);
    // The provider switch: no network at all ...
    ok(&root, &["start", "life", "--network-plugin", "none"]);
    assert_eq!(exec_ok(&root, "life", &["sh", "-c", "ls /sys/class/net | grep -c eth || true"]).trim(), "0");
    ok(&root, &["stop", "life"]);
    // ... and CNI again, with the runtime flag Ignite users pass.
    ok(&root, &["start", "life", "--network-plugin", "cni", "--runtime", "docker"]);
    assert_eq!(exec_ok(&root, "life", &["wget", "-qO-", &url]), "hello-from-the-host\n");
    ok(&root, &["rm", "-f", "life"]);
}

/// Ignite's TestVolumeWith*: a volume written by one VM is read by the next.
#[test]
fn a_volume_carries_data_from_one_vm_to_the_next() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let vol = d.path().join("vol.ext4");
    let o = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&vol).arg("64M").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = format!("{}:/my-vol", vol.display());
    ok(&root, &["run", "busybox", "--name", "vol-1", "--memory", "256MB", "--network-plugin", "none", "--volumes", &v]);
    exec_ok(&root, "vol-1", &["sh", "-c", "touch /my-vol/hello-world && sync"]);
    ok(&root, &["stop", "vol-1"]);
    ok(&root, &["run", "busybox", "--name", "vol-2", "--memory", "256MB", "--network-plugin", "none", "--volumes", &v]);
    assert_eq!(exec_ok(&root, "vol-2", &["ls", "/my-vol"]).lines().filter(|l| *l == "hello-world").count(), 1);
    ok(&root, &["rm", "-f", "vol-1", "vol-2"]);
}

/// Ignite's TestConcurrentVMCreation (4 runs at once) and TestPortmapCleanup (the port's
/// iptables rules go with the VM).
#[test]
fn concurrent_runs_and_port_rules_cleaned_up() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let runs: Vec<_> = (1..=4)
        .map(|i| {
            let r = root.0.clone();
            std::thread::spawn(move || {
                let name = format!("conc-{i}");
                let port = format!("{}:80", 18300 + i);
                common::ignite(&r, &["run", "busybox", "--name", &name, "--memory", "128MB", "-p", &port])
            })
        })
        .collect();
    for r in runs {
        let o = r.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut ips = std::collections::BTreeSet::new();
    let mut uids = Vec::new();
    for i in 1..=4 {
        let name = format!("conc-{i}");
        assert_eq!(field(&root, &name, "{{.Status.Running}}"), "true");
        ips.insert(field(&root, &name, "{{index .Status.Network.IPAddresses 0}}"));
        uids.push(field(&root, &name, "{{.UID}}"));
    }
    assert_eq!(ips.len(), 4, "distinct addresses: {ips:?}");
    let nat = || {
        String::from_utf8_lossy(&Command::new("iptables-save").args(["-t", "nat"]).output().unwrap().stdout)
            .into_owned()
    };
    assert!(uids.iter().all(|u| nat().contains(u.as_str())), "port rules installed");
    ok(&root, &["rm", "-f", "conc-1", "conc-2", "conc-3", "conc-4"]);
    let left = nat();
    assert!(uids.iter().all(|u| !left.contains(u.as_str())), "port rules left behind");
    for i in 1..=4 {
        assert!(!left.contains(&format!("--dport {}", 18300 + i)), "a DNAT rule of port {} stayed", 18300 + i);
    }
}
