//! The `ignite` binary driven as a user drives it: real processes against a temp state root.

mod common;

use std::process::{Command, Stdio};

use common::{bin, fails, ok, snapshot, store_root, write};

#[test]
fn fifty_concurrent_creates_with_distinct_names() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    let children: Vec<_> = (0..50)
        .map(|i| {
            Command::new(bin())
                .args(["create", "--name", &format!("vm{i}"), "busybox"])
                .env("IGNITE_ROOT", root)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ids = ok(root, &["ps", "-a", "-q"]);
    assert_eq!(ids.lines().count(), 50);
    let names = ok(root, &["ps", "-a", "-t", "{{.ObjectMeta.Name}}"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 50);
}

#[test]
fn fifty_concurrent_creates_with_one_name() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    let children: Vec<_> = (0..50)
        .map(|_| {
            Command::new(bin())
                .args(["create", "--name", "same", "busybox"])
                .env("IGNITE_ROOT", root)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut won = 0;
    let mut lost = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            won += 1;
        } else {
            assert_eq!(o.status.code(), Some(2));
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("a VM named \"same\" already exists"), "{err}");
            lost += 1;
        }
    }
    assert_eq!((won, lost), (1, 49));
    assert_eq!(ok(root, &["ps", "-a", "-q"]).lines().count(), 1);
}

// Ignite's documented manifests, one per API version (docs/declarative-config.md of the
// respective releases, docs/my-vm.yaml and its CLI test inputs), written out here.
const IGNITE_EXAMPLES: &[(&str, &str)] = &[
    (
        "v1alpha2",
        "apiVersion: ignite.weave.works/v1alpha2\nkind: VM\nmetadata:\n  name: test-vm\nspec:\n  image:\n    oci: weaveworks/ignite-ubuntu\n  cpus: 2\n  diskSize: 3GB\n  memory: 800MB\n",
    ),
    (
        "v1alpha3",
        "apiVersion: ignite.weave.works/v1alpha3\nkind: VM\nmetadata:\n  name: my-vm\nspec:\n  image:\n    oci: weaveworks/ignite-ubuntu\n  cpus: 2\n  diskSize: 3GB\n  memory: 800MB\n",
    ),
    (
        "v1alpha4",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: my-vm\n  uid: 599615df99804ae8\nspec:\n  image:\n    oci: weaveworks/ignite-ubuntu\n  cpus: 2\n  diskSize: 3GB\n  memory: 800MB\n  ssh: true\nstatus:\n  running: true\n",
    ),
];

#[test]
fn ignite_example_manifests_round_trip_as_v1alpha4() {
    for (version, doc) in IGNITE_EXAMPLES {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "vm.yaml", doc);
        let root = store_root(d.path());
        ok(&root, &["create", "--config", &f]);
        let name = if *version == "v1alpha2" { "test-vm" } else { "my-vm" };
        let yaml = ok(&root, &["inspect", "vm", name, "-o", "yaml"]);
        assert!(yaml.starts_with("apiVersion: ignite.weave.works/v1alpha4\nkind: VM\n"), "{version}: {yaml}");
        for want in ["cpus: 2", "memory: 800MB", "diskSize: 3GB", "oci: weaveworks/ignite-ubuntu:latest"] {
            assert!(yaml.contains(want), "{version}: missing {want} in\n{yaml}");
        }
        // A status in a manifest is what some host saw, not what this host has.
        assert!(yaml.contains("running: false"), "{yaml}");
        // The output is itself a valid manifest that reads back the same.
        let again = write(d.path(), "again.yaml", &yaml);
        let d2 = tempfile::tempdir().unwrap();
        let root2 = store_root(d2.path());
        ok(&root2, &["create", "--config", &again]);
        let yaml2 = ok(&root2, &["inspect", "vm", name, "-o", "yaml"]);
        let strip = |s: &str| s.lines().filter(|l| !l.contains("created:")).collect::<Vec<_>>().join("\n");
        assert_eq!(strip(&yaml), strip(&yaml2));
    }
}

#[test]
fn full_reference_manifest_and_config_layering() {
    let d = tempfile::tempdir().unwrap();
    let root = store_root(d.path());
    let k = common::unbootable_kernel();
    ok(&root, &["kernel", "import", k.to_str().unwrap(), "--name", "weaveworks/ignite-kernel:5.10.51"]);
    let admin = write(d.path(), "admin.conf", "apiVersion: v1\n");
    let vol = d.path().join("vol.img");
    std::fs::File::create(&vol).unwrap().set_len(16 << 20).unwrap();
    let cfg = write(
        d.path(),
        "config.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata:\n  name: test-config\nspec:\n  runtime: containerd\n  networkPlugin: cni\n  vmDefaults:\n    memory: 2GB\n    diskSize: 3GB\n    cpus: 2\n",
    );
    let vm = write(
        d.path(),
        "vm.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: full\n  labels: {foo: bar}\n  annotations: {foo: bar}\nspec:\n  cpus: 4\n  image: {oci: weaveworks/ignite-ubuntu}\n  kernel: {cmdLine: \"console=ttyS0 reboot=k panic=1 pci=off ip=dhcp\", oci: weaveworks/ignite-kernel:5.10.51}\n  sandbox: {oci: weaveworks/ignite:dev}\n  network:\n    ports:\n    - {hostPort: 433, vmPort: 6443, bindAddress: 10.0.0.2, protocol: udp}\n  storage:\n    volumeMounts: [{mountPath: /mnt, name: volume0}]\n    volumes: [{blockDevice: {path: VOL}, name: volume0}]\n  copyFiles:\n  - {hostPath: ADMIN, vmPath: /home/user/.kube/config}\n  ssh: true\n"
            .replace("VOL", &vol.to_string_lossy())
            .replace("ADMIN", &admin)
            .as_str(),
    );
    // defaults < config file < --config manifest < flags
    ok(&root, &["--ignite-config", &cfg, "create", "--config", &vm, "--memory", "1GB"]);
    let t = "{{.Spec.CPUs}} {{.Spec.Memory}} {{.Spec.DiskSize}} {{.Spec.Network.Ports[0].BindAddress}} {{.Labels.foo}}";
    assert_eq!(ok(&root, &["inspect", "vm", "full", "-t", t]).trim(), "4 1024.0 MB 3.0 GB 10.0.0.2 bar");
    let ps = ok(&root, &["ps", "-a"]);
    assert!(ps.starts_with("VM ID"), "{ps}");
    for col in ["IMAGE", "KERNEL", "SIZE", "CPUS", "MEMORY", "CREATED", "STATUS", "IPS", "PORTS", "NAME"] {
        assert!(ps.lines().next().unwrap().contains(col));
    }
    assert!(ps.contains("10.0.0.2:433->6443/udp") && ps.contains("Created") && ps.contains("full"), "{ps}");
    assert_eq!(ok(&root, &["ps"]).lines().count(), 1, "ps without -a lists only running VMs");
    assert_eq!(ok(&root, &["ps", "-a", "-f", "{{.Spec.CPUs}}!=4"]).lines().count(), 1);
    assert_eq!(ok(&root, &["ps", "-a", "-f", "{{.Spec.Image.OCI}}=~ignite-ubuntu"]).lines().count(), 2);
    let json: serde_json::Value = serde_json::from_str(&ok(&root, &["ps", "-a", "-o", "json"])).unwrap();
    assert_eq!(json[0]["metadata"]["name"], "full");
}

#[test]
fn bad_input_is_refused_and_leaves_the_store_alone() {
    let missing_image = vec!["create".to_string(), "--pull".into(), "never".into(), "nosuchimage".into()];
    let d = tempfile::tempdir().unwrap();
    let root = store_root(d.path());
    ok(&root, &["create", "busybox", "--name", "keep"]);
    let before = snapshot(&root);
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["create".into(), "busybox".into(), "--bogus".into()], 2, "unexpected argument '--bogus'"),
        (vec!["create".into(), "busybox".into(), "--memory".into(), "12XB".into()], 2, "unknown unit \"XB\""),
        (vec!["create".into(), "busybox".into(), "--memory".into(), "-1GB".into()], 2, "cannot be negative"),
        (vec!["create".into(), "busybox".into(), "--size".into(), "0".into()], 2, "must be greater than zero"),
        (vec!["create".into(), "busybox".into(), "--cpus".into(), "0".into()], 2, "--cpus"),
        (vec!["create".into(), "busybox".into(), "--cpus".into(), "1000".into()], 2, "spec.cpus"),
        (vec!["create".into(), "busybox".into(), "--name".into(), "Bad_Name".into()], 2, "metadata.name"),
        (vec!["create".into(), "busybox".into(), "--name".into(), "keep".into()], 2, "already exists"),
        (vec!["create".into(), "Not An Image".into()], 2, "invalid image"),
        (vec!["create".into(), "busybox".into(), "-p".into(), "80".into()], 2, "host port is required"),
        (vec!["create".into(), "busybox".into(), "--ssh=/nonexistent.pub".into()], 2, "does not exist"),
        (vec!["create".into()], 2, "an image is required"),
        (missing_image, 2, "is not imported and --pull never is set"),
        (
            vec!["create".into(), "busybox".into(), "-k".into(), "localhost/nokernel:1".into()],
            2,
            "kernel localhost/nokernel:1 is not imported",
        ),
        (vec!["create".into(), "busybox".into(), "--size".into(), "20MB".into()], 2, "choose a --size of at least"),
        (vec!["create".into(), "oci:/nonexistent/layout".into()], 1, "no oci-layout file"),
        (vec!["run".into(), "busybox".into(), "--accel".into(), "warp".into()], 2, "invalid accelerator"),
        (vec!["run".into(), "busybox".into(), "--memory".into(), "1XB".into()], 2, "unknown unit"),
        (vec!["inspect".into(), "vm".into(), "nope".into()], 3, "no VM matches \"nope\""),
        (vec!["rm".into(), "nope".into()], 3, "no VM matches"),
        (vec!["ps".into(), "-f".into(), "{{.Spec.CPUs}}".into()], 2, "invalid filter"),
    ];
    for (args, code, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&root, &args, *code, needle);
    }
    let manifests: Vec<(&str, String, &str)> = vec![
        ("unknown-version", "apiVersion: ignite.weave.works/v9\nkind: VM\nspec: {image: {oci: a}}\n".into(), "unknown apiVersion"),
        ("unknown-kind", "apiVersion: ignite.weave.works/v1alpha4\nkind: Pod\n".into(), "unknown kind \"Pod\""),
        ("ignite-invalid-kind", "apiVersion: ignite.weave.works/v1alpha4\nkind: kernel\nspec:\n  memory: 1500MB\n".into(), "unknown kind \"kernel\""),
        ("unknown-field", "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: x}\nspec: {image: {oci: a}, cpu: 2}\n".into(), "spec.cpu: unknown field `cpu`"),
        ("bad-size", "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: x}\nspec: {image: {oci: a}, memory: 12XB}\n".into(), "spec.memory"),
        ("not-yaml", "apiVersion: [\n".into(), "malformed YAML"),
        ("huge", format!("# {}\n", "x".repeat(2 << 20)), "too large"),
        ("bomb", {
            let mut s = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
            let mut prev = 'a';
            for c in 'b'..='j' {
                s.push_str(&format!("{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
                prev = c;
            }
            s
        }, "malformed YAML"),
        ("config-kind", "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nspec: {}\n".into(), "expected kind VM"),
    ];
    for (name, body, needle) in &manifests {
        let f = write(d.path(), &format!("{name}.yaml"), body);
        let err = fails(&root, &["create", "--config", &f], 2, needle);
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
    assert_eq!(before, snapshot(&root), "bad input changed the store");
}

#[test]
fn lookup_by_prefix_and_ambiguity() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    ok(root, &["create", "busybox", "--name", "web-1"]);
    ok(root, &["create", "busybox", "--name", "web-2"]);
    // Prefixes that are not hex digits: a UID (16 hex characters) cannot start with them.
    ok(root, &["create", "busybox", "--name", "queue"]);
    assert_eq!(ok(root, &["inspect", "vm", "q", "-t", "{{.Name}}"]).trim(), "queue");
    let err = fails(root, &["inspect", "vm", "web", "-t", "{{.Name}}"], 2, "is ambiguous");
    assert!(err.contains("web-1") && err.contains("web-2"), "{err}");
    let uid = ok(root, &["inspect", "vm", "web-2", "-t", "{{.UID}}"]).trim().to_string();
    assert_eq!(ok(root, &["inspect", "vm", &uid[..10], "-t", "{{.Name}}"]).trim(), "web-2");
    ok(root, &["rm", "web-1", &uid]);
    assert_eq!(ok(root, &["ps", "-a", "-q"]).lines().count(), 1);
}

#[test]
fn verbs_on_a_vm_that_is_not_running() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    ok(root, &["create", "busybox", "--name", "idle"]);
    let before = snapshot(root);
    fails(root, &["stop", "idle"], 1, "is not running");
    fails(root, &["kill", "idle"], 1, "is not running");
    fails(root, &["attach", "idle"], 1, "is not running");
    fails(root, &["exec", "idle", "--", "true"], 1, "is not running");
    fails(root, &["ssh", "idle"], 1, "is not running");
    fails(root, &["cp", "idle:/etc/hostname", "/tmp/x"], 1, "is not running");
    fails(root, &["cp", "idle:../../etc/passwd", "/tmp/x"], 2, "'..' is not allowed");
    fails(root, &["logs", "idle"], 1, "never been started");
    assert_eq!(before, snapshot(root), "a verb that could not act changed the store");
}

#[test]
fn version_completion_man() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    assert!(ok(root, &["version"]).contains("Ignite version: v"));
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["version", "-o", "json"])).unwrap();
    assert!(v["gitVersion"].as_str().unwrap().starts_with('v'));
    assert!(ok(root, &["version", "-o", "yaml"]).contains("gitVersion:"));
    assert!(ok(root, &["version", "-o", "short"]).starts_with('v'));
    for sh in ["bash", "zsh", "fish"] {
        assert!(ok(root, &["completion", sh]).contains("ignite"), "{sh}");
    }
    let man = d.path().join("man");
    ok(root, &["man", "--out", man.to_str().unwrap()]);
    for page in ["ignite.1", "ignite-run.1", "ignite-image-import.1", "ignite-vm-ps.1"] {
        assert!(man.join(page).is_file(), "{page}");
    }
    // Ignite's aliases.
    ok(root, &["images"]);
    ok(root, &["kernels"]);
    ok(root, &["image", "ls"]);
    ok(root, &["vm", "ps", "-a"]);
}

#[test]
fn doctor_reports_each_check_with_its_fix() {
    let d = tempfile::tempdir().unwrap();
    let root = store_root(d.path());
    let out = ok(&root, &["doctor"]);
    for check in ["e2fsprogs", "vmm", "qemu-img", "busybox-static", "openat2", "disk-space", "kernel", "kvm"] {
        assert!(out.lines().any(|l| l.starts_with(check)), "no {check} line in\n{out}");
    }
    // The VMM line is the backend's own check: its name, binary and version.
    assert!(
        out.lines().any(|l| l.starts_with("vmm") && l.contains("qemu: /") && l.contains("QEMU emulator version")),
        "{out}"
    );
    // A broken host is reported with the package that fixes it.
    let o = std::process::Command::new(bin())
        .arg("doctor")
        .env("IGNITE_ROOT", d.path().join("empty"))
        .env("IGNITE_BUSYBOX", "/usr/bin/ls")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("dynamically linked: apt-get install busybox-static"), "{text}");
    assert!(text.contains("not imported: run images/kernel/build.sh"), "{text}");
}

/// Weave Ignite users' commands, as they typed them (issue: Ignite's CLI, unchanged).
#[test]
fn weave_ignite_commands_work_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    ok(root, &["create", "busybox", "--name", "idle"]);
    // `ssh -t VM`: -t is a switch, the VM is the VM.
    fails(root, &["ssh", "-t", "idle"], 1, "is not running");
    // `vm ls` / `vm list` / `vms ls` list every VM (Ignite's aliases of `ps -a`).
    for args in [&["vm", "ls"][..], &["vm", "list"], &["vms", "ls"]] {
        assert!(ok(root, args).contains("idle"), "{args:?}");
    }
    assert!(!ok(root, &["vm", "ps"]).contains("idle"), "ps lists running VMs only");
    // images/kernels as aliases of image/kernel, with their subcommands.
    for args in [&["images"][..], &["images", "ls"], &["image", "list"]] {
        assert!(ok(root, args).contains("busybox:latest"), "{args:?}");
    }
    assert!(ok(root, &["kernels", "ls"]).contains("localhost/ignite-kernel:6.1"));
    // Short image names, everywhere a name is taken.
    assert_eq!(
        ok(root, &["inspect", "image", "busybox:latest", "-t", "{{.ObjectMeta.Name}}"]).trim(),
        "docker.io/library/busybox:latest"
    );
    assert!(ok(root, &["inspect", "image", "busybox", "-o", "json"]).contains("docker.io/library/busybox:latest"));
    fails(root, &["rmi", "busybox"], 1, "is used by VMs idle");
    ok(root, &["rmi", "weaveworks/ignite-ubuntu"]);
    // Global flags before the verb; --runtime says once what it does here.
    let o =
        common::ignite(root, &["--network-plugin", "cni", "--runtime", "docker", "create", "busybox", "--name", "g1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stderr).matches("--runtime docker has no effect").count(), 1);
    fails(root, &["--network-plugin", "warp", "create", "busybox"], 2, "invalid --network-plugin");
    // --id-prefix is recorded (and names the VM's VMM process and network namespace).
    ok(root, &["--id-prefix", "acme", "create", "busybox", "--name", "g2"]);
    assert_eq!(ok(root, &["inspect", "vm", "g2", "-t", "{{.Status.IDPrefix}}"]).trim(), "acme");
    fails(root, &["--id-prefix", "Bad_Prefix", "create", "busybox"], 2, "invalid --id-prefix");
    // A validation message is said once.
    let err = fails(root, &["create", "busybox", "--cpus", "1000"], 2, "spec.cpus");
    assert_eq!(err.matches("spec.cpus").count(), 1, "{err}");
    // A run that cannot start says nothing was created, and leaves nothing.
    let before = ok(root, &["ps", "-a", "-q"]);
    let err = fails(root, &["run", "busybox", "--name", "huge", "--memory", "100000GB"], 1, "memory");
    assert!(!err.contains("Created VM"), "{err}");
    assert_eq!(ok(root, &["ps", "-a", "-q"]), before);
    // A kernel file that does not exist, and an archive that is not one: clear, printable.
    fails(root, &["kernel", "import", "/nonexistent/vmlinux"], 1, "no kernel file /nonexistent/vmlinux");
    let junk = d.path().join("junk.tar");
    std::fs::write(&junk, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>()).unwrap();
    let err = fails(root, &["image", "import", &format!("docker-archive:{}", junk.display())], 1, "junk.tar");
    assert!(err.chars().all(|c| c == '\n' || !c.is_control()) && !err.contains('\u{fffd}'), "{err:?}");
    // Output into a pipe closed early (`| head -1`): no panic.
    let mut child = Command::new(bin())
        .args(["vm", "ls", "-o", "json"])
        .env("IGNITE_ROOT", &**root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Manifests Weave Ignite wrote or documented are read: v1alpha2's `spec.network.mode`, and
/// status blocks as `ignite inspect -o yaml` printed them.
#[test]
fn manifests_written_by_weave_ignite_are_read() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    let v2 = write(
        d.path(),
        "v2.yaml",
        "apiVersion: ignite.weave.works/v1alpha2\nkind: VM\nmetadata:\n  name: old\nspec:\n  image:\n    oci: busybox\n  network:\n    mode: cni\n",
    );
    ok(root, &["create", "--config", &v2]);
    assert!(ok(root, &["inspect", "vm", "old"]).contains("\"ignite.weave.works/network-plugin\": \"cni\""));
    let v4 = write(
        d.path(),
        "v4.yaml",
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: written\nspec:\n  image:\n    oci: busybox\n  memory: 512MB\nstatus:\n  idPrefix: ignite\n  image:\n    id: null\n    size: 0B\n  kernel:\n    id: null\n    size: 0B\n  network:\n    ipAddresses: null\n    plugin: cni\n  running: false\n  runtime: null\n  startTime: null\n",
    );
    ok(root, &["create", "--config", &v4]);
    assert!(ok(root, &["ps", "-a"]).contains("written"));
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// `ignited` as Weave Ignite's users call it: version, completion, a checked log level,
/// global flags, and `gitops` with `-b`, `-p`, Go durations, `--timeout`.
#[test]
fn ignited_takes_weave_ignites_flags() {
    let ignited = std::path::Path::new(bin()).with_file_name("ignited");
    let run = |root: &std::path::Path, args: &[&str]| {
        Command::new(&ignited).args(args).env("IGNITE_ROOT", root).stdin(Stdio::null()).output().unwrap()
    };
    let d = tempfile::tempdir().unwrap();
    let root = store_root(d.path());
    let o = run(&root, &["--log-level", "bogus", "version"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&run(&root, &["version"]).stdout).starts_with("ignited version: v"));
    let v: serde_json::Value = serde_json::from_slice(&run(&root, &["version", "-o", "json"]).stdout).unwrap();
    assert!(v["gitVersion"].as_str().unwrap().starts_with('v'));
    assert!(String::from_utf8_lossy(&run(&root, &["completion", "bash"]).stdout).contains("ignited"));

    // A repository whose default branch is master (Ignite's default), manifests under vms/.
    let bare = d.path().join("repo.git");
    let work = d.path().join("work");
    assert!(Command::new("git").args(["init", "-q", "--bare", "-b", "master"]).arg(&bare).status().unwrap().success());
    let url = format!("file://{}", bare.display());
    assert!(Command::new("git").args(["clone", "-q", &url]).arg(&work).status().unwrap().success());
    std::fs::create_dir(work.join("vms")).unwrap();
    std::fs::write(
        work.join("vms/g.yaml"),
        "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata:\n  name: from-git\nspec:\n  image:\n    oci: busybox\nstatus:\n  running: false\n",
    )
    .unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "a VM"]);
    git(&work, &["push", "-q", "origin", "HEAD:master"]);
    let o = run(
        &root,
        &[
            "--id-prefix",
            "acme",
            "--network-plugin",
            "cni",
            "--runtime",
            "containerd",
            "gitops",
            &url,
            "-p",
            "vms",
            "--interval",
            "30s",
            "--timeout",
            "1m",
            "--once",
            "--socket",
            "none",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ok(&root, &["inspect", "vm", "from-git", "-t", "{{.Status.IDPrefix}}"]).trim(), "acme");
    // A branch that is not there: said, nothing changes.
    let o = run(&root, &["gitops", &url, "-b", "main", "--once", "--socket", "none"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("main"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ok(&root, &["ps", "-a"]).contains("from-git"));
    let o = run(&root, &["gitops", &url, "--interval", "ten", "--once"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid duration"));

    // --timeout: a server that accepts and never answers is given up on in time.
    let silent = common::Silent::start();
    let port = silent.addr.port();
    let t = std::time::Instant::now();
    let o =
        run(&root, &["gitops", &format!("git://127.0.0.1:{port}/x"), "--timeout", "2s", "--once", "--socket", "none"]);
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "waited {:?}", t.elapsed());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not finish within 2 s"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Ignite's TestConfigFile: the configuration file, a VM manifest and flags layer as Ignite
/// documented, and `ps --template` prints the result in Ignite's text forms.
#[test]
fn config_file_layering_as_ignites_test() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    let k = common::unbootable_kernel();
    for name in ["weaveworks/ignite-kernel:5.4.43", "weaveworks/ignite-kernel:5.10.51"] {
        ok(root, &["kernel", "import", k.to_str().unwrap(), "--name", name]);
    }
    let default_kernel = "localhost/ignite-kernel:6.1";
    let header = "---\napiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\n";
    // (case, configuration file, VM manifest, flags, expected properties or a failure)
    type Case<'a> = (&'a str, String, Option<&'a str>, Vec<&'a str>, Option<String>);
    let cases: Vec<Case> = vec![
        ("invalid config", String::new(), None, vec![], None),
        (
            "minimal valid config",
            header.to_string(),
            None,
            vec![],
            Some(format!("'512.0 MB 1 4.0 GB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev {default_kernel} <nil>'")),
        ),
        (
            "custom vm properties",
            format!("{header}metadata:\n  name: test-config\nspec:\n  vmDefaults:\n    memory: \"2GB\"\n    diskSize: \"3GB\"\n    cpus: 2\n    sandbox:\n      oci: weaveworks/ignite:dev\n    kernel:\n      oci: weaveworks/ignite-kernel:5.4.43\n    ssh: true\n"),
            None,
            vec![],
            Some("'2.0 GB 2 3.0 GB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev weaveworks/ignite-kernel:5.4.43 {true }'".into()),
        ),
        (
            "runtime and network config",
            format!("{header}metadata:\n  name: test-config\nspec:\n  runtime: docker\n  networkPlugin: docker-bridge\n"),
            None,
            vec![],
            Some(format!("'512.0 MB 1 4.0 GB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev {default_kernel} <nil>'")),
        ),
        (
            "override properties",
            format!("{header}metadata:\n  name: test-config\nspec:\n  vmDefaults:\n    memory: \"2GB\"\n    diskSize: \"3GB\"\n    cpus: 2\n"),
            None,
            vec!["--memory=1GB", "--size=1GB", "--cpus=1", "--ssh"],
            Some(format!("'1024.0 MB 1 1024.0 MB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev {default_kernel} {{true }}'")),
        ),
        (
            "vm config",
            format!("{header}metadata:\n  name: test-config\nspec:\n  vmDefaults:\n    memory: \"2GB\"\n    diskSize: \"3GB\"\n    cpus: 2\n"),
            Some("\napiVersion: ignite.weave.works/v1alpha4\nkind: VM\nspec:\n  memory: \"1GB\"\n  diskSize: \"2GB\"\n  cpus: 1\n"),
            vec![],
            Some(format!("'1024.0 MB 1 2.0 GB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev {default_kernel} <nil>'")),
        ),
        (
            "vm config and flags",
            format!("{header}metadata:\n  name: test-config\nspec:\n  vmDefaults:\n    memory: \"2GB\"\n    diskSize: \"3GB\"\n    cpus: 2\n"),
            Some("\napiVersion: ignite.weave.works/v1alpha4\nkind: VM\nspec:\n  memory: \"1GB\"\n  diskSize: \"2GB\"\n"),
            vec!["--size=1GB", "--cpus=1"],
            Some(format!("'1024.0 MB 1 1024.0 MB weaveworks/ignite-ubuntu:latest weaveworks/ignite:dev {default_kernel} <nil>'")),
        ),
    ];
    for (i, (name, config, vm_config, args, want)) in cases.into_iter().enumerate() {
        let cfg = write(d.path(), &format!("config-{i}.yaml"), &config);
        let vm_name = "e2e-test-ignite-config-file";
        let mut a = vec![
            format!("--ignite-config={cfg}"),
            "create".into(),
            format!("--name={vm_name}"),
            "--sandbox-image=weaveworks/ignite:dev".into(),
            "weaveworks/ignite-ubuntu".into(),
        ];
        if let Some(v) = vm_config {
            a.push(format!("--config={}", write(d.path(), &format!("vm-{i}.yaml"), v)));
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = common::ignite(root, &a);
        match want {
            None => assert!(!o.status.success(), "{name}: expected the create to fail"),
            Some(want) => {
                assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
                let got = ok(
                    root,
                    &[
                        "ps",
                        "-a",
                        &format!("--filter={{{{.ObjectMeta.Name}}}}={vm_name}"),
                        "--template='{{.Spec.Memory}} {{.Spec.CPUs}} {{.Spec.DiskSize}} {{.Spec.Image.OCI}} {{.Spec.Sandbox.OCI}} {{.Spec.Kernel.OCI}} {{.Spec.SSH}}'",
                    ],
                );
                assert_eq!(got.trim(), want, "{name}");
                ok(root, &["rm", "-f", vm_name]);
            }
        }
    }
}

/// Ignite's preflight checks at start, and `--ignore-preflight-checks` (its names or ours).
#[test]
fn preflight_checks_at_start() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    ok(root, &["create", "busybox", "--name", "pre", "--network-plugin", "none"]);
    let start = |extra: &[&str]| {
        let mut a = vec!["start", "pre"];
        a.extend_from_slice(extra);
        Command::new(bin())
            .args(&a)
            .env("IGNITE_ROOT", &**root)
            .env("IGNITE_BUSYBOX", "/usr/bin/ls")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = start(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("preflight check failed: busybox-static")
            && err.contains("--ignore-preflight-checks busybox-static"),
        "{err}"
    );
    for ignore in ["busybox-static", "ExistingFile", "all"] {
        let o = start(&["--ignore-preflight-checks", ignore]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("preflight check failed") && err.contains("failed, ignored"), "{ignore}: {err}");
        let _ = common::ignite(root, &["kill", "pre"]);
    }
}
