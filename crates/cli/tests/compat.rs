//! Weave Ignite's own end-to-end scenarios (its `e2e/*_test.go`), ported onto ignite: real
//! VMs (TCG here), real CNI plugins, real registries and git. Each test names the Ignite tests
//! it stands for.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fails, ok, prepared_root, write};

fn field(root: &Path, vm: &str, t: &str) -> String {
    ok(root, &["inspect", "vm", vm, "-t", t]).trim().to_string()
}

/// Runs `exec VM -- ARGS` until it works (the agent may still be starting), within 120 s.
fn exec_ok(root: &Path, vm: &str, args: &[&str]) -> String {
    let t = Instant::now();
    loop {
        let mut a = vec!["exec", "--timeout", "10", vm, "--"];
        a.extend_from_slice(args);
        let o = common::ignite(root, &a);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "exec {args:?} in {vm}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
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
    let t = Instant::now();
    while !Path::new(&format!("/run/netns/{ns}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the VM's namespace never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    ok(&root, &["--id-prefix", "e2e-test", "run", "busybox", "--name", "prefixed", "--memory", "256MB"]);
    let uid = field(&root, "prefixed", "{{.UID}}");
    assert!(Path::new(&format!("/run/netns/e2e-test-{uid}")).exists());
    let pid = field(&root, "prefixed", "{{.Status.Runtime.Pid}}");
    // The supervisor's child (through `ip netns exec`) is the VMM, named with the prefix.
    let mut found = false;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).unwrap_or("");
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if ppid == pid && cmd.contains(&format!("-name e2e-test-{uid}")) {
            found = true;
        }
    }
    assert!(found, "no VMM process named e2e-test-{uid}");
    ok(&root, &["rm", "-f", "prefixed"]);
    assert!(!Path::new(&format!("/run/netns/e2e-test-{uid}")).exists());
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
