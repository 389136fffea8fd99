//! Snapshots and clones on real VMs (TCG here): a snapshot of a running VM that runs on, two
//! clones of it that are machines of their own (hostname, MAC, address, machine-id) and reach
//! each other, a clone that boots its own disk at its next start, refusals that change
//! nothing, a snapshot killed while its guest was paused, a clone whose `run` was killed, and a
//! VM resumed from its own snapshot (`start --from-snapshot`).

mod common;

use std::path::Path;

use common::{fails, field, ignite, ignite_env, ok, prepared_root, until, until_exec_works};

fn exec(root: &Path, vm: &str, script: &str) -> String {
    ok(root, &["exec", vm, "--", "sh", "-c", script]).trim().to_string()
}

/// The bridge ports on which the host has learnt `mac` (`bridge fdb`: one per bridge).
fn ports_of(mac: &str) -> Vec<String> {
    let out = std::process::Command::new("bridge").args(["fdb", "show"]).output().expect("bridge fdb show");
    assert!(out.status.success(), "bridge fdb show: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{mac} ")) && l.contains(" master "))
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1).map(str::to_string))
        .collect()
}

fn vm_names(root: &Path) -> Vec<String> {
    ok(root, &["ps", "-a", "-q"]).lines().map(str::to_string).collect()
}

#[test]
fn two_clones_of_one_snapshot_are_machines_of_their_own() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "src", "--memory", "128MB"]);
    until_exec_works(&root, "src", 120);
    exec(&root, "src", "echo before > /root/mark");
    // Its network gives IPv4 only: IPv6 is off on eth0 (as Docker has it), on loopback not.
    let inet6 = exec(&root, "src", "cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6 /proc/net/if_inet6");
    assert!(inet6.starts_with('1') && !inet6.contains(" eth0") && inet6.contains(" lo"), "{inet6}");
    // An image may turn it on again (systemd-networkd does): then eth0 has a link-local
    // address, made from the MAC, that its clones must not share.
    exec(&root, "src", "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6");
    until("a link-local address on src's eth0", 60, || exec(&root, "src", "cat /proc/net/if_inet6").contains(" eth0"));
    let out = String::from_utf8_lossy(&ignite(&root, &["snapshot", "create", "src", "s1"]).stderr).into_owned();
    assert!(out.contains("Created snapshot \"s1\"") && out.contains("VM paused"), "{out}");
    assert!(ok(&root, &["snapshot", "ls"]).lines().any(|l| l.contains(" s1 ") && l.contains(" src ")));
    let vm_of = ok(&root, &["inspect", "snapshot", "s1", "-t", "{{.Spec.VmName}} {{.Spec.Vmm}}"]);
    assert_eq!(vm_of.trim(), "src qemu");
    // The source runs on after its snapshot; what it writes now is not in the snapshot.
    exec(&root, "src", "echo after > /root/mark");
    // The bridge knows the source's MAC on the source's port (it has sent a frame), and
    // nothing the source does moves it meanwhile (it is idle).
    let src_mac = exec(&root, "src", "cat /sys/class/net/eth0/address");
    exec(&root, "src", "ping -c 1 -W 5 $(ip route | awk '/^default/ {print $3}')");
    let src_port = ports_of(&src_mac);
    assert_eq!(src_port.len(), 1, "the source's MAC {src_mac} on the bridge: {src_port:?}");

    for c in ["ca", "cb"] {
        let o = ignite(&root, &["run", "--from-snapshot", "s1", "--name", c]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "run --from-snapshot: {err}");
        assert!(err.contains("resumed from snapshot \"s1\""), "{err}");
    }
    // A clone never speaks as its source: no frame from the source's MAC came from a clone's
    // port (QEMU's announcements after a load did, before the clone had its own MAC).
    assert_eq!(ports_of(&src_mac), src_port, "a clone claimed its source's MAC {src_mac} on the bridge");
    // `run` returned once the clone had its identity: exec works at once, without retries.
    let mut seen = Vec::new();
    for c in ["ca", "cb"] {
        let ip = field(&root, c, "{{index .Status.Network.IPAddresses 0}}");
        let guest = exec(
            &root,
            c,
            "hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; cat /etc/machine-id; cat /root/mark; date +%s",
        );
        let l: Vec<&str> = guest.lines().collect();
        assert_eq!(l.len(), 6, "{guest}");
        assert_eq!(l[0], c, "hostname: {guest}");
        assert!(l[2].contains(&format!("inet {ip}/")), "the guest's address is the clone's own {ip}: {guest}");
        assert_eq!(l[2].matches("inet ").count(), 1, "one address: {guest}");
        assert_eq!(l[3].len(), 32, "machine-id: {guest}");
        assert_eq!(l[4], "before", "the disk as it was at the snapshot: {guest}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let clock: i64 = l[5].parse().unwrap();
        assert!((clock - now).abs() < 30, "the guest's clock was stepped: {clock} vs {now}");
        // Its IPv6 link-local address is made from its own MAC (not the snapshot's, which
        // every clone would share on the bridge).
        let inet6 = exec(&root, c, "cat /proc/net/if_inet6");
        let link_local: Vec<&str> =
            inet6.lines().filter(|l| l.starts_with("fe80") && l.ends_with(" eth0")).map(|l| &l[..32]).collect();
        assert_eq!(link_local, [eui64_link_local(l[1])], "eth0's link-local addresses: {inet6}");
        seen.push((l[1].to_string(), ip, l[3].to_string()));
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.0, b.0, "MACs");
    assert_ne!(a.1, b.1, "addresses");
    assert_ne!(a.2, b.2, "machine-ids");
    // They reach each other (and the source, which kept its address).
    let src_ip = field(&root, "src", "{{index .Status.Network.IPAddresses 0}}");
    for (from, to) in [("ca", &b.1), ("cb", &a.1), ("ca", &src_ip)] {
        exec(&root, from, &format!("ping -c 1 -W 5 {to}"));
    }
    assert_eq!(exec(&root, "src", "cat /root/mark; hostname"), "after\nsrc");

    // A clone's next start boots its own disk, with its own name.
    ok(&root, &["stop", "cb"]);
    ok(&root, &["start", "cb"]);
    until_exec_works(&root, "cb", 120);
    assert_eq!(exec(&root, "cb", "cat /root/mark; hostname"), "before\ncb");

    // Clones do not need their snapshot once started.
    ok(&root, &["snapshot", "rm", "s1"]);
    assert!(!ok(&root, &["snapshot", "ls"]).contains("s1"));
    ok(&root, &["rm", "-f", "ca", "cb", "src"]);
    let left: Vec<_> = std::fs::read_dir(root.join("snapshot")).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn what_cannot_be_snapshotted_or_cloned_is_refused_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["create", "busybox", "--name", "idle", "--memory", "128MB"]);
    fails(&root, &["snapshot", "create", "idle"], 1, "is not running");
    fails(&root, &["snapshot", "create", "nosuchvm"], 3, "nosuchvm");
    ok(&root, &["run", "busybox", "--name", "noagent", "--memory", "128MB", "--agent=false"]);
    fails(&root, &["snapshot", "create", "noagent", "s"], 1, "without its guest agent");
    ok(&root, &["run", "busybox", "--name", "live", "--memory", "128MB"]);
    until_exec_works(&root, "live", 120);
    fails(&root, &["snapshot", "create", "live", "Not_A_Name"], 2, "snapshot name");
    assert_eq!(ok(&root, &["snapshot", "ls", "-q"]), "");
    ok(&root, &["snapshot", "create", "live", "s"]);
    fails(&root, &["snapshot", "create", "live", "s"], 2, "already");
    let before = vm_names(&root);
    fails(&root, &["run", "--from-snapshot", "nosuch"], 3, "nosuch");
    fails(&root, &["run", "--from-snapshot", "s", "--memory", "256MB"], 2, "--memory cannot change it");
    fails(&root, &["run", "--from-snapshot", "s", "busybox"], 2, "an IMAGE cannot change it");
    // A name `create` refuses is refused before the clone is made (its guest's agent would refuse
    // it as a hostname, after its VMM had started: rc 1 then).
    fails(&root, &["run", "--from-snapshot", "s", "--name", "bad name"], 2, "invalid name");
    fails(&root, &["run", "--from-snapshot", "s", "--name", "Upper"], 2, "invalid name");
    assert_eq!(vm_names(&root), before, "a refused clone leaves no VM");
    // A machine state QEMU cannot load (a damaged file): the clone fails with QEMU's own
    // reason, leaves no VM, and the snapshot, made whole again, still clones.
    let uid = ok(&root, &["inspect", "snapshot", "s", "-t", "{{.UID}}"]);
    let state = root.join("snapshot").join(uid.trim()).join("state");
    let whole = std::fs::read(&state).unwrap();
    std::fs::write(&state, &whole[..whole.len() / 2]).unwrap();
    fails(&root, &["run", "--from-snapshot", "s", "--name", "damaged"], 1, "while loading the snapshot's state");
    assert_eq!(vm_names(&root), before, "a failed clone leaves no VM");
    std::fs::write(&state, &whole).unwrap();
    ok(&root, &["run", "--from-snapshot", "s", "--name", "whole"]);
    until_exec_works(&root, "whole", 60);
    // The source was paused for the snapshot and runs on.
    until_exec_works(&root, "live", 30);
}

#[test]
fn a_snapshot_killed_while_its_guest_is_paused_leaves_the_vm_running() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "victim", "--memory", "128MB"]);
    until_exec_works(&root, "victim", 120);
    let o = ignite_env(&root, &["snapshot", "create", "victim", "s"], &[("IGNITE_FAULT", "snapshot.paused")]);
    assert!(!o.status.success(), "the fault point was not reached: {}", String::from_utf8_lossy(&o.stderr));
    // The next command that needs the VM running resumes its guest; the half-made snapshot is
    // not listed.
    until_exec_works(&root, "victim", 30);
    assert_eq!(ok(&root, &["snapshot", "ls", "-q"]), "");
    // And a snapshot can be taken again, its leftovers gone.
    exec(&root, "victim", "echo at-snapshot > /root/mark");
    ok(&root, &["snapshot", "create", "victim", "s"]);
    exec(&root, "victim", "echo later > /root/mark");
    until("no half-made snapshot directory", 30, || {
        std::fs::read_dir(root.join("snapshot"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with('.'))
    });
    ok(&root, &["run", "--from-snapshot", "s", "--name", "clone"]);
    assert_eq!(exec(&root, "clone", "hostname"), "clone");

    // Killed while QEMU writes the state: the next command cancels that write before it lets
    // the guest run (the write's end would pause it again), so exec answers at once.
    let o = ignite_env(&root, &["snapshot", "create", "victim", "t"], &[("IGNITE_FAULT", "snapshot.saving")]);
    assert!(!o.status.success(), "the fault point was not reached: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(exec(&root, "victim", "echo alive"), "alive");
    assert_eq!(exec(&root, "victim", "echo alive"), "alive", "paused again after the resume");

    // A `run --from-snapshot` killed once the clone's supervisor runs: the clone comes up as
    // itself all the same (its supervisor gives it its identity before it is running), never
    // as a second copy of the snapshot's VM.
    let o = ignite_env(
        &root,
        &["run", "--from-snapshot", "s", "--name", "orphan"],
        &[("IGNITE_FAULT", "start.supervisor-spawned")],
    );
    assert!(!o.status.success(), "the fault point was not reached: {}", String::from_utf8_lossy(&o.stderr));
    until("the orphaned clone running", 60, || field(&root, "orphan", "{{.Status.Running}}") == "true");
    let ip = field(&root, "orphan", "{{index .Status.Network.IPAddresses 0}}");
    let guest = exec(&root, "orphan", "hostname; ip -4 -o addr show eth0");
    assert!(guest.starts_with("orphan\n") && guest.contains(&format!("inet {ip}/")), "{guest}");
    let uid = field(&root, "orphan", "{{.UID}}");
    assert!(!root.join("vm").join(&uid).join("restore-from").exists(), "it would resume the snapshot again");
    ok(&root, &["rm", "-f", "orphan"]);

    // `start --from-snapshot`: the VM itself resumed where its snapshot was taken.
    fails(&root, &["start", "clone", "--from-snapshot", "s"], 2, "was taken of VM \"victim\"");
    fails(&root, &["start", "victim", "--from-snapshot", "s"], 1, "is running");
    let machine_id = exec(&root, "victim", "cat /etc/machine-id 2>/dev/null || true");
    ok(&root, &["stop", "victim"]);
    // Where the host's default VMM is another now: refused before anything changes.
    let fc_default = common::write(
        d.path(),
        "fc.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nspec:\n  vmm: firecracker\n",
    );
    let vdir = root.join("vm").join(field(&root, "victim", "{{.UID}}"));
    let disk_before = std::fs::read(vdir.join("disk.qcow2")).unwrap();
    fails(
        &root,
        &["--ignite-config", &fc_default, "start", "victim", "--from-snapshot", "s"],
        2,
        "was saved by qemu and VM \"victim\" starts on firecracker",
    );
    assert_eq!(std::fs::read(vdir.join("disk.qcow2")).unwrap(), disk_before);
    assert!(!vdir.join("disk.before-snapshot.qcow2").exists() && !vdir.join("restore-from").exists());
    ok(&root, &["start", "victim", "--from-snapshot", "s"]);
    assert_eq!(exec(&root, "victim", "cat /root/mark; hostname"), "at-snapshot\nvictim");
    assert_eq!(exec(&root, "victim", "cat /etc/machine-id 2>/dev/null || true"), machine_id, "its own machine-id");
    let ip = field(&root, "victim", "{{index .Status.Network.IPAddresses 0}}");
    assert!(exec(&root, "victim", "ip -4 -o addr show eth0").contains(&format!("inet {ip}/")));
    // The disk it had is kept; its next start boots the snapshot's disk, now its own.
    let uid = field(&root, "victim", "{{.UID}}");
    assert!(root.join("vm").join(&uid).join("disk.before-snapshot.qcow2").is_file());
    ok(&root, &["stop", "victim"]);
    ok(&root, &["start", "victim"]);
    until_exec_works(&root, "victim", 120);
    assert_eq!(exec(&root, "victim", "cat /root/mark"), "at-snapshot");
}

/// The IPv6 link-local address (as /proc/net/if_inet6 writes it) made from `mac` (EUI-64).
fn eui64_link_local(mac: &str) -> String {
    let b: Vec<u8> = mac.split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
    let id = [b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]];
    format!("fe80000000000000{}", id.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

#[test]
fn a_layered_disk_is_snapshotted_cloned_and_reverted_with_its_holes() {
    // Firecracker's disk layout (the image's shared base read-only, the VM's sparse writable
    // layer), under QEMU: a Linux guest cannot boot under this host's KVM, so Firecracker's
    // own snapshots are proven with a guest of their own (ignite-vmm's tests); what ignite
    // makes of the layout's files is proven here.
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let manifest = common::write(
        d.path(),
        "layered.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: layered\n  annotations:\n    ignite.weave.works/root-disk: raw-layered\nspec:\n  image: {oci: busybox}\n  memory: 128MB\n  diskSize: 1GB\n",
    );
    ok(&root, &["run", "--config", &manifest, "--vmm", "qemu"]);
    until_exec_works(&root, "layered", 120);
    exec(&root, "layered", "echo at-snapshot > /root/mark && sync");
    ok(&root, &["snapshot", "create", "layered", "s"]);
    exec(&root, "layered", "echo later > /root/mark && sync");
    // The snapshot holds the layer and its record, its holes kept: what it takes is what the
    // guest wrote, not the 1 GiB it can hold.
    let suid = ok(&root, &["inspect", "snapshot", "s", "-t", "{{.UID}}"]).trim().to_string();
    let sdir = root.join("snapshot").join(&suid);
    let mut files: Vec<String> =
        std::fs::read_dir(&sdir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(
        files,
        ["initrd.cpio", "machine.json", "metadata.json", "rootdisk.json", "state", "upper.ext4", "vmlinux"]
    );
    let layer = std::fs::metadata(sdir.join("upper.ext4")).unwrap();
    assert_eq!(layer.len(), 1 << 30);
    assert!(layer.blocks() * 512 < 64 << 20, "the layer's copy takes {} bytes", layer.blocks() * 512);
    let disk_size = ok(&root, &["inspect", "snapshot", "s", "-t", "{{.Status.DiskSize}}"]);
    assert!(!disk_size.contains("GB"), "{disk_size}");

    // A clone has a copy of the layer, on the same base, and the data of the snapshot's time.
    ok(&root, &["run", "--from-snapshot", "s", "--name", "clone"]);
    assert_eq!(exec(&root, "clone", "cat /root/mark; hostname"), "at-snapshot\nclone");
    let cdir = root.join("vm").join(field(&root, "clone", "{{.UID}}"));
    assert!(std::fs::metadata(cdir.join("upper.ext4")).unwrap().blocks() * 512 < 64 << 20);
    let base = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(dir.join("rootdisk.json")).unwrap()).unwrap()["base"]
            .clone()
    };
    assert_eq!(base(&cdir), base(&sdir));
    // A clone resumes on the VMM that saved its snapshot, whatever the host's default.
    let fc_default = common::write(
        d.path(),
        "fc.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nspec:\n  vmm: firecracker\n",
    );
    ok(&root, &["--ignite-config", &fc_default, "run", "--from-snapshot", "s", "--name", "pinned"]);
    assert_eq!(field(&root, "pinned", "{{.Status.Runtime.Name}}"), "qemu");
    assert_eq!(exec(&root, "pinned", "cat /root/mark"), "at-snapshot");
    ok(&root, &["rm", "-f", "pinned"]);
    // What the clone writes is its own.
    exec(&root, "clone", "echo clone > /root/mark && sync");
    assert_eq!(exec(&root, "layered", "cat /root/mark"), "later");

    // The source resumed from its snapshot: its layer is the snapshot's again, the one it had
    // kept beside it.
    ok(&root, &["stop", "layered"]);
    ok(&root, &["start", "layered", "--from-snapshot", "s"]);
    assert_eq!(exec(&root, "layered", "cat /root/mark"), "at-snapshot");
    let vdir = root.join("vm").join(field(&root, "layered", "{{.UID}}"));
    assert!(vdir.join("upper.before-snapshot.ext4").is_file());
    assert!(std::fs::metadata(vdir.join("upper.ext4")).unwrap().blocks() * 512 < 64 << 20);

    // The base stays while a snapshot stands on it, even with no VM left.
    let base_path = std::path::PathBuf::from(base(&sdir).as_str().unwrap());
    ok(&root, &["rm", "-f", "layered", "clone"]);
    // (The test root's two images are one content, one base.)
    ok(&root, &["image", "rm", "busybox", "weaveworks/ignite-ubuntu"]);
    ok(&root, &["image", "prune"]);
    assert!(base_path.is_file(), "the base of a snapshot was collected");
    ok(&root, &["snapshot", "rm", "s"]);
    ok(&root, &["image", "prune"]);
    assert!(!base_path.exists(), "the base outlived everything that stood on it");
}
