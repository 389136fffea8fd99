//! The faults a user meets in a week, survived: VMs restarted again and again keep a working
//! agent, a start killed at any step leaks nothing and blocks nothing, a re-imported image
//! never takes a VM's disk away, removed images leave no blobs or bases behind, and a host
//! port is published once per host. Real VMs (TCG here), real CNI plugins.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{fails, field, fixtures, ignite_env, ok, prepared_root};

fn logs(root: &Path, vm: &str) -> String {
    String::from_utf8_lossy(&common::ignite(root, &["logs", vm]).stdout).into_owned()
}

/// Waits until the busybox image has printed its ready line `n` times in all.
fn wait_boots(root: &Path, vm: &str, n: usize) {
    common::until_ok(&format!("boot {n} of VM {vm}"), 120, || {
        let l = logs(root, vm);
        if l.matches("IGNITE-BUSYBOX-READY").count() >= n {
            Ok(())
        } else {
            Err(format!("console so far:\n{l}"))
        }
    });
}

fn sh(cmd: &str) -> String {
    String::from_utf8_lossy(&Command::new("sh").arg("-c").arg(cmd).output().unwrap().stdout).into_owned()
}

/// The addresses the host-local IPAM has leased to container `uid`.
fn leases(uid: &str) -> BTreeSet<String> {
    let dir = Path::new("/var/lib/cni/networks/ignite-cni-bridge");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        if owner.lines().next().map(str::trim) == Some(uid) {
            out.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Whatever the host still holds for VM `uid` with addresses `ips`.
fn leftovers(uid: &str, ips: &BTreeSet<String>) -> Vec<String> {
    let mut v = Vec::new();
    if sh("ip netns list").contains(uid) {
        v.push("netns".to_string());
    }

    for ip in leases(uid) {
        v.push(format!("IPAM lease {ip}"));
    }
    if sh("iptables-save -t nat").contains(uid) {
        v.push("nat rules".into());
    }
    let filter = sh("iptables-save -t filter");
    for ip in ips {
        for l in filter.lines().filter(|l| l.contains(&format!("{ip}/32"))) {
            v.push(format!("filter rule {l}"));
        }
    }
    v
}

/// Restarting a VM, again and again: its guest agent answers after every boot. (Weave-era
/// bug: the init shim started the agent as a background job that opened the initramfs's
/// /dev/null while switch_root emptied it, and lost that race one boot in four.)
#[test]
fn every_restart_brings_the_agent_back() {
    let cycles: usize = std::env::var("IGNITE_TEST_RESTARTS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "cyc", "--memory", "128MB", "--network-plugin", "none"]);
    let t = Instant::now();
    for i in 1..=cycles {
        wait_boots(&root, "cyc", i);
        let o = common::ignite(&root, &["exec", "--timeout", "20", "cyc", "--", "cat", "/proc/uptime"]);
        assert!(
            o.status.success(),
            "boot {i}: exec failed: {}\nconsole:\n{}",
            String::from_utf8_lossy(&o.stderr),
            logs(&root, "cyc")
        );
        if i == 1 {
            // The race itself, made visible: a background job of the shim took the initramfs's
            // /dev/null (a plain file that switch_root deletes) as its stdin, and lost the race
            // when switch_root came first. The agent must hold nothing of the initramfs.
            let fds = ok(
                &root,
                &["exec", "cyc", "--", "sh", "-c", "for p in $(pidof ignite-agent); do readlink /proc/$p/fd/0; done"],
            );
            assert!(!fds.is_empty() && !fds.contains("(deleted)"), "the agent's stdin: {fds}");
        }
        ok(&root, &["kill", "cyc"]);
        ok(&root, &["start", "cyc"]);
    }
    let l = logs(&root, "cyc");
    assert!(!l.contains("can't open '/dev/null'"), "{l}");
    assert!(!l.contains("guest agent did not start"), "{l}");
    println!("FIGURE {cycles} kill/start cycles, exec worked after each: {:.1} s", t.elapsed().as_secs_f64());
    ok(&root, &["rm", "-f", "cyc"]);
}

/// `ignite start` killed (SIGKILL, or SIGTERM) at every step between its first allocation and
/// the VMM's launch: the next start works, and once the VM is removed nothing of it is left.
#[test]
fn a_start_killed_at_any_step_leaks_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["create", "busybox", "--name", "victim", "--memory", "128MB"]);
    let uid = field(&root, "victim", "{{.UID}}");
    let mut ips = BTreeSet::new();
    for (point, signal) in [
        ("start.network-planned", "KILL"),
        ("cni.added-bridge", "KILL"),
        ("cni.added-firewall", "TERM"),
        ("start.network-attached", "KILL"),
        ("start.network-attached", "TERM"),
        ("start.before-spawn", "KILL"),
        // Its supervisor runs, waiting for the initramfs: it gives up, no VMM boots.
        ("start.supervisor-waiting", "KILL"),
        ("spawn.vmm-started", "KILL"),
    ] {
        let o = ignite_env(&root, &["start", "victim"], &[("IGNITE_FAULT", point), ("IGNITE_FAULT_SIGNAL", signal)]);
        let err = String::from_utf8_lossy(&o.stderr);
        if point.starts_with("spawn.") {
            // The supervisor died, not `ignite start`: the start fails and says so.
            assert!(!o.status.success() && err.contains("supervisor"), "{point}: {err}");
        } else {
            let want = if signal == "TERM" { 15 } else { 9 };
            assert_eq!(o.status.signal(), Some(want), "{point}/{signal}: not killed there: {err}");
        }
        ips.extend(leases(&uid));
        // The next start finds the leftovers and starts cleanly.
        let o = common::ignite(&root, &["start", "victim"]);
        assert!(o.status.success(), "start after a kill at {point}/{signal}: {}", String::from_utf8_lossy(&o.stderr));
        let ip = field(&root, "victim", "{{.Status.Network.IPAddresses[0]}}");
        assert_eq!(leases(&uid), BTreeSet::from([ip.clone()]), "after {point}: one lease, the VM's");
        ips.insert(ip);
        ok(&root, &["kill", "victim"]);
        let left = leftovers(&uid, &ips);
        assert!(left.is_empty(), "after {point}/{signal} and a kill: {left:?}");
        // No process of the VM outlives it either: not the killed start's VMM (whose
        // supervisor died under it), not this one's.
        common::until_ok(&format!("after {point}/{signal}: no process of the VM"), 30, || {
            let left = common::procs(&uid);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:#?}"))
            }
        });
    }
    // Killed after allocating, then removed without a start in between.
    let o = ignite_env(&root, &["start", "victim"], &[("IGNITE_FAULT", "start.network-attached")]);
    assert_eq!(o.status.signal(), Some(9));
    ips.extend(leases(&uid));
    assert!(!leases(&uid).is_empty(), "the kill should have left a lease to release");
    ok(&root, &["rm", "-f", "victim"]);
    let left = leftovers(&uid, &ips);
    assert!(left.is_empty(), "after rm -f: {left:?}");

    // Killed inside the bridge plugin's ADD, after its lease and before its masquerading rules
    // (made here: killed after the bridge's ADD, its nat rules then removed). The bridge's DEL
    // fails on the missing chain after releasing the lease: nothing is left, and `rm -f` says
    // nothing about it (it warned "CNI plugin bridge failed (DEL)" to every such user).
    ok(&root, &["create", "busybox", "--name", "victim2", "--memory", "128MB"]);
    let uid = field(&root, "victim2", "{{.UID}}");
    let o = ignite_env(&root, &["start", "victim2"], &[("IGNITE_FAULT", "cni.added-bridge")]);
    assert_eq!(o.status.signal(), Some(9), "not killed after the bridge's ADD: {}", String::from_utf8_lossy(&o.stderr));
    let ips = leases(&uid);
    assert_eq!(ips.len(), 1, "the bridge's ADD leased one address");
    let nat = sh(&format!(
        "iptables-save -t nat | grep -F 'id: \\\"{uid}\\\"' | grep '^-A ' | sed 's/^-A /-D /' | \
         while read -r l; do eval iptables -t nat $l --wait; echo \"$l\"; done | grep -o ' -j CNI-[0-9a-f]*' | \
         while read -r _ c; do iptables -t nat -F $c --wait && iptables -t nat -X $c --wait && echo $c; done"
    ));
    assert!(nat.contains("CNI-"), "no masquerading chain of {uid} found to remove");
    assert!(!sh("iptables-save -t nat").contains(&uid), "nat rules of {uid} left after removing them");
    let o = common::ignite(&root, &["rm", "-f", "victim2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("WARN") && !err.contains("failed"), "rm -f: {err}");
    let left = leftovers(&uid, &ips);
    assert!(left.is_empty(), "after rm -f: {left:?}");
}

/// A `run` whose supervisor is killed after the VMM started fails, and the VM it removes
/// leaves nothing: not its network, not its jail's cgroup and root (recorded in the VM's
/// directory only). A clone's supervisor is killed while its resumed guest runs (seen: each
/// such `run` left the clone's cgroup and jail root, removed with the directory unreleased),
/// while it attaches the clone's network (CNI ADD runs in it, beside the VMM's start), and
/// once it has.
#[test]
fn a_run_whose_supervisor_is_killed_leaves_no_cgroup_or_jail_root() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "src", "--memory", "128MB"]);
    common::until_exec_works(&root, "src", 120);
    ok(&root, &["snapshot", "create", "src", "s"]);
    let clone = &["run", "--from-snapshot", "s", "--name", "gone"][..];
    for (args, fault) in [
        (&["run", "busybox", "--name", "gone", "--memory", "128MB"][..], "spawn.vmm-started"),
        (clone, "spawn.vmm-started"),
        (clone, "cni.added-bridge"),
        (clone, "spawn.network-attached"),
    ] {
        let o = ignite_env(&root, args, &[("IGNITE_FAULT", fault)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("supervisor"), "{args:?} {fault}: {err}");
        // The VM's ID, from the error's pointer to its supervisor's log (vm/<uid>/spawn.log).
        let uid = err.split("/vm/").nth(1).and_then(|r| r.get(..16)).expect("the VM's ID in the error").to_string();
        assert_eq!(
            ok(&root, &["ps", "-a", "-q"]).lines().count(),
            1,
            "{args:?} {fault}: the failed run's VM was not removed"
        );
        nothing_left_of(&uid, &format!("{args:?} {fault}"));
    }
    ok(&root, &["rm", "-f", "src"]);
    ok(&root, &["snapshot", "rm", "s"]);
}

/// Nothing of VM `uid` is left on the host once it is removed: no cgroup, jail root, network
/// leftover or process (`what`: the case, for the messages).
fn nothing_left_of(uid: &str, what: &str) {
    let left: Vec<std::path::PathBuf> = common::vm_cgroups().into_iter().filter(|p| p.ends_with(uid)).collect();
    assert!(left.is_empty(), "{what}: cgroups left: {left:?}");
    assert!(!Path::new(&format!("/run/ignite/jail/{uid}")).exists(), "{what}: the jail's root outlived the VM");
    let left = leftovers(uid, &BTreeSet::new());
    assert!(left.is_empty(), "{what}: {left:?}");
    common::until_ok("no process of the VM", 30, || {
        let left = common::procs(uid);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:#?}"))
        }
    });
}

/// `ignite rm -f`, `stop` and `kill` of a VM whose `run` is under way, the run held at a step
/// (its CLI once it attached the network; a clone's supervisor once its VMM runs): each waits
/// for the start to end, then acts on the VM it started, and nothing of a removed VM is left.
/// (`rm -f` did not wait: it removed the directory of a VM whose supervisor went on to run its
/// VMM and attach its network, and the VM's cgroup was left behind, seen with a clone's run
/// slowed by strace; `stop` and `kill` said "not running" and the VM started after them.)
#[test]
fn a_vm_removed_or_stopped_while_it_starts_waits_for_the_start() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "src", "--memory", "128MB"]);
    common::until_exec_works(&root, "src", 120);
    ok(&root, &["snapshot", "create", "src", "s"]);
    let cold = &["run", "busybox", "--name", "gone", "--memory", "128MB"][..];
    let clone = &["run", "--from-snapshot", "s", "--name", "gone"][..];
    for (verb, args, point, held_by_supervisor) in [
        (&["rm", "-f", "gone"][..], cold, "start.network-attached", false),
        (&["rm", "-f", "gone"][..], clone, "spawn.vmm-started", true),
        (&["stop", "gone"][..], cold, "start.network-attached", false),
        (&["kill", "gone"][..], clone, "spawn.vmm-started", true),
    ] {
        let what = format!("{verb:?} during {args:?}");
        let trace = d.path().join("verb.trace");
        let _ = std::fs::remove_file(&trace);
        let run = common::spawn_ignite(&root, args, &[("IGNITE_FAULT", point), ("IGNITE_FAULT_SIGNAL", "STOP")]);
        let uid = common::until_ok("the VM created", 60, || {
            let o = common::ignite(&root, &["inspect", "vm", "gone", "-t", "{{.UID}}"]);
            let uid = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && uid.len() == 16 {
                Ok(uid)
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        });
        let held = if held_by_supervisor { common::pid_with_args(&["--hold-fd", &uid]) } else { run.id() };
        common::until(&format!("{what}: the run held at {point}"), 60, || {
            common::status_field(held, "State").starts_with('T')
        });
        let acting = common::spawn_ignite(&root, verb, &[("IGNITE_FAULT_TRACE", &trace.to_string_lossy())]);
        let waits = format!("{}.start-in-progress", verb[0]);
        common::until(&format!("{what}: waiting for the start"), 60, || {
            std::fs::read_to_string(&trace).unwrap_or_default().contains(&waits)
        });
        assert!(Command::new("kill").args(["-CONT", &held.to_string()]).status().unwrap().success());
        let run = run.wait_with_output().unwrap();
        let acting = acting.wait_with_output().unwrap();
        assert!(run.status.success(), "{what}: the run: {}", String::from_utf8_lossy(&run.stderr));
        assert!(acting.status.success(), "{what}: {}", String::from_utf8_lossy(&acting.stderr));
        if verb[0] != "rm" {
            assert_eq!(field(&root, "gone", "{{.Status.Running}}"), "false", "{what}");
            ok(&root, &["rm", "gone"]);
        }
        assert_eq!(ok(&root, &["ps", "-a", "-q"]).lines().count(), 1, "{what}: the VM was not removed");
        nothing_left_of(&uid, &what);
    }
    ok(&root, &["rm", "-f", "src"]);
    ok(&root, &["snapshot", "rm", "s"]);
}

/// Every blob in the store is one that some image or kernel records, and no temporary file
/// of a dead process is left.
fn blobs_are_all_referenced(root: &Path) {
    let mut wanted = BTreeSet::new();
    for kind in ["image", "kernel"] {
        for e in std::fs::read_dir(root.join(kind)).unwrap().flatten() {
            if let Ok(b) = std::fs::read(e.path().join("blobs.json")) {
                let list: Vec<String> = serde_json::from_slice(&b).unwrap();
                wanted.extend(list.into_iter().map(|d| d.trim_start_matches("sha256:").to_string()));
            }
        }
    }
    let dir = root.join("blobs/sha256");
    let have: BTreeSet<String> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let stray: Vec<&String> = have.iter().filter(|b| !wanted.contains(*b)).collect();
    assert!(stray.is_empty(), "blobs no object records: {stray:?}");
}

fn bases(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("base"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// An image re-imported with other content: the VMs made from the old content keep their
/// disk and data; `rmi` refuses while VMs use the image and `rmi -f` removes them with it;
/// what nothing uses any more (bases, blobs, scratch of failed imports) is collected.
#[test]
fn reimporting_an_image_never_takes_a_vms_disk_away() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let f = fixtures();
    let layout = format!("oci:{}:latest", f.busybox_oci.display());
    let archive = format!("docker-archive:{}", f.busybox_archive.display());
    ok(&root, &["run", "busybox", "--name", "keeper", "--memory", "128MB", "--network-plugin", "none"]);
    wait_boots(&root, "keeper", 1);
    ok(&root, &["exec", "keeper", "--", "sh", "-c", "echo precious >/root/precious && sync"]);
    ok(&root, &["stop", "keeper"]);
    let bases_before = bases(&root);
    assert_eq!(bases_before.len(), 1, "busybox and ignite-ubuntu share one base (same content)");

    // The same source again: read, found unchanged.
    let o = ignite_env(&root, &["image", "import", &layout, "--name", "busybox"], &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("up to date"), "{}", String::from_utf8_lossy(&o.stderr));
    // A source that does not exist is an error, whatever the store holds under the name.
    fails(
        &root,
        &["image", "import", "docker-archive:/nonexistent/busybox.tar", "--name", "busybox"],
        1,
        "busybox.tar",
    );
    // Other content under the name: refused without --force.
    fails(&root, &["image", "import", &archive, "--name", "busybox"], 1, "use --force");
    // A truncated archive fails and leaves no blob behind.
    let cut = d.path().join("cut.tar");
    let bytes = std::fs::read(&f.busybox_archive).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = common::ignite(&root, &["image", "import", &format!("docker-archive:{}", cut.display()), "--name", "cut"]);
    assert!(!o.status.success());
    blobs_are_all_referenced(&root);

    // With --force: a new image object and base; the VM keeps its own.
    let o = ignite_env(&root, &["image", "import", &archive, "--name", "busybox", "--force"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(bases(&root).len(), 2);
    ok(&root, &["start", "keeper"]);
    wait_boots(&root, "keeper", 2);
    assert_eq!(ok(&root, &["exec", "keeper", "--", "cat", "/root/precious"]), "precious\n");
    ok(&root, &["create", "busybox", "--name", "fresh", "--network-plugin", "none"]);

    // rmi names the VMs that use the image; -f removes them with it, as Weave Ignite does.
    let err = fails(&root, &["rmi", "docker.io/library/busybox:latest"], 1, "is used by VMs");
    assert!(err.contains("keeper") && err.contains("fresh"), "{err}");
    let o = common::ignite(&root, &["rmi", "-f", "docker.io/library/busybox:latest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ok(&root, &["ps", "-a", "-q"]).trim().is_empty());
    // The archive's base is gone (no image, no VM); the layout's stays for ignite-ubuntu.
    assert_eq!(bases(&root), bases_before);
    blobs_are_all_referenced(&root);
    let o = common::ignite(&root, &["image", "prune"]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Removed 0 unused base(s)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The kernel: rmk refuses while a VM names it, -f removes that VM.
    ok(&root, &["create", "weaveworks/ignite-ubuntu", "--name", "k-user", "--network-plugin", "none"]);
    fails(&root, &["rmk", "localhost/ignite-kernel:6.1"], 1, "k-user");
    ok(&root, &["rmk", "-f", "localhost/ignite-kernel:6.1"]);
    assert!(ok(&root, &["ps", "-a", "-q"]).trim().is_empty());
}

/// A host port is published by one VM on this host, whatever the state root.
#[test]
fn a_host_port_is_published_once_per_host() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (ra, rb) = (prepared_root(&a), prepared_root(&b));
    ok(&ra, &["run", "busybox", "--name", "first", "--memory", "128MB", "-p", "18191:80"]);
    let err = fails(&rb, &["run", "busybox", "--name", "second", "--memory", "128MB", "-p", "18191:80"], 1, "18191");
    assert!(err.contains("already published by VM \"first\"") && err.contains(&*ra.to_string_lossy()), "{err}");
    assert!(ok(&rb, &["ps", "-a", "-q"]).trim().is_empty(), "a failed run leaves no VM");
    ok(&ra, &["kill", "first"]);
    ok(&rb, &["run", "busybox", "--name", "second", "--memory", "128MB", "-p", "18191:80"]);
    let err = fails(&ra, &["start", "first"], 1, "already published by VM \"second\"");
    assert!(err.contains(&*rb.to_string_lossy()), "{err}");
    ok(&rb, &["rm", "-f", "second"]);
    ok(&ra, &["start", "first"]);
    ok(&ra, &["rm", "-f", "first"]);
}
