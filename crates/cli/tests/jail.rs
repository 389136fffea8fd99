//! Every VMM in a jail: its own uid, no capabilities, no_new_privs, a seccomp filter, a cgroup
//! with the VM's limits, a filesystem of a few entries, its own PID namespace. Checked from the
//! host on real VMs (TCG here), as the jail issue's "done when" says.

mod common;

use std::path::Path;
use std::process::Command;

use common::{field, ok, pid_with_args, prepared_root, status_field, until, until_exec_works, until_ok};

/// The VMM process of VM `uid` (QEMU names itself `<prefix>-<uid>`).
fn vmm_pid(uid: &str) -> u32 {
    pid_with_args(&["qemu-system", &format!("-name ignite-{uid}")])
}

/// The HOST MEMORY column of `ignite ps -o wide` for VM `name`, MB.
fn host_memory_mb(root: &Path, name: &str) -> f64 {
    let out = ok(root, &["ps", "-o", "wide"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    let (from, to) = (header.find("HOST MEMORY").unwrap(), header.find("LABELS").unwrap());
    let at_name = header.find(" NAME ").unwrap() + 1;
    let row = lines
        .find(|l| l.get(at_name..).and_then(|r| r.split_whitespace().next()) == Some(name))
        .unwrap_or_else(|| panic!("{out}"));
    let cell = row.get(from..to.min(row.len())).unwrap_or_default().trim();
    let (value, unit) = cell.split_once(' ').unwrap_or_else(|| panic!("HOST MEMORY {cell:?}:\n{out}"));
    let v: f64 = value.parse().unwrap();
    match unit {
        "MB" => v,
        "GB" => v * 1024.0,
        _ => panic!("HOST MEMORY {cell:?}:\n{out}"),
    }
}

#[test]
fn a_jailed_vmm_has_no_privileges_its_own_limits_and_sees_almost_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "ja", "--memory", "256MB", "--cpus", "2"]);
    ok(&root, &["run", "busybox", "--name", "jb", "--memory", "128MB"]);
    let (ua, ub) = (field(&root, "ja", "{{.UID}}"), field(&root, "jb", "{{.UID}}"));
    let (pa, pb) = (vmm_pid(&ua), vmm_pid(&ub));
    // Booted: the VMM has set up its own filter (right after its exec).
    until_exec_works(&root, "ja", 120);
    until_exec_works(&root, "jb", 120);
    // Its own unprivileged identity; no capabilities; no new privileges; seccomp.
    for pid in [pa, pb] {
        let uid: Vec<&str> = status_field(pid, "Uid").leak().split_whitespace().collect();
        assert!(uid.iter().all(|u| *u != "0") && uid.len() == 4, "Uid {uid:?}");
        assert!(status_field(pid, "Gid").split_whitespace().all(|g| g != "0"));
        assert_eq!(status_field(pid, "Groups"), "");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
        assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, "Seccomp"), "2");
    }
    assert_ne!(status_field(pa, "Uid"), status_field(pb, "Uid"), "each VM has its own uid");
    // Its descriptors: only what it was given. No pipe but its console (0 and 1): not the
    // supervisor's liveness pipe's write end (a VMM holding it would outlive its killed
    // supervisor), not what the test harness passed down (cargo's jobserver).
    for e in std::fs::read_dir(format!("/proc/{pa}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
        let fd = e.file_name().to_string_lossy().into_owned();
        assert!(!target.starts_with("pipe:") || fd == "0" || fd == "1", "the VMM holds fd {fd} -> {target}");
    }
    assert_eq!(
        field(&root, "ja", "{{.Status.Runtime.Jail.UID}}"),
        status_field(pa, "Uid").split_whitespace().next().unwrap()
    );
    // Its own PID namespace: it is PID 1 there.
    assert_eq!(status_field(pa, "NSpid").split_whitespace().last(), Some("1"), "NSpid {}", status_field(pa, "NSpid"));
    // Its own cgroup, with the VM's limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pa}/cgroup")).unwrap();
    let v1: Vec<&str> =
        cgroups.lines().filter(|l| l.contains(":memory:") || l.contains(":cpu:") || l.contains(":pids:")).collect();
    if v1.is_empty() {
        // cgroup v2: one line.
        assert!(
            cgroups.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("ignite.slice/{ua}"))),
            "{cgroups}"
        );
    } else {
        assert_eq!(v1.len(), 3, "{cgroups}");
        assert!(v1.iter().all(|l| l.ends_with(&format!("/ignite/{ua}"))), "{cgroups}");
    }
    let memory_max: u64 = field(&root, "ja", "{{.Status.Runtime.Jail.MemoryMax}}").parse().unwrap();
    assert!(memory_max > 256 << 20 && memory_max < (256 << 20) + (1 << 30), "memory limit {memory_max}");
    let dirs = ok(&root, &["inspect", "vm", "ja", "-t", "{{range .Status.Runtime.Jail.Cgroups}}{{.}} {{end}}"]);
    let read = |d: &str, f: &str| std::fs::read_to_string(Path::new(d).join(f)).ok().map(|s| s.trim().to_string());
    let mut saw_memory = false;
    let mut saw_cpu = false;
    for dir in dirs.split_whitespace() {
        if let Some(m) = read(dir, "memory.max").or_else(|| read(dir, "memory.limit_in_bytes")) {
            assert_eq!(m.parse::<u64>().unwrap(), memory_max, "{dir}");
            saw_memory = true;
        }
        if let Some(c) = read(dir, "cpu.max") {
            assert_eq!(c, "300000 100000", "two vCPUs' worth and one for the VMM");
            saw_cpu = true;
        } else if let Some(q) = read(dir, "cpu.cfs_quota_us") {
            assert_eq!(q, "300000", "two vCPUs' worth and one for the VMM");
            saw_cpu = true;
        }
    }
    assert!(saw_memory && saw_cpu, "cgroups {dirs}");
    // Its own filesystem: a few entries, read-only, none of the state root.
    let mut entries: Vec<String> = std::fs::read_dir(format!("/proc/{pa}/root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for e in &entries {
        assert!(
            ["bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "proc", "sbin", "usr"].contains(&e.as_str()),
            "unexpected {e} in the jail: {entries:?}"
        );
    }
    let inside = |args: &[&str]| {
        let mut a = vec!["-t".to_string(), pa.to_string(), "-m".into(), "-p".into(), "--".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        Command::new("nsenter").args(&a).output().unwrap()
    };
    let other_disk = root.join("vm").join(&ub).join("disk.qcow2");
    let own_meta = root.join("vm").join(&ua).join("metadata.json");
    for p in [other_disk.as_path(), own_meta.as_path(), root.0.as_path()] {
        let o = inside(&["cat", &p.to_string_lossy()]);
        assert!(!o.status.success(), "{} can be read from inside the jail", p.display());
    }
    // Its processes: only itself.
    let o = inside(&["ls", "/proc"]);
    let pids: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter(|x| x.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert!(pids.iter().all(|p| p == "1" || pids.len() <= 2), "processes visible in the jail: {pids:?}");
    // And the VM works as ever; `ps -o wide` shows what it takes, from its cgroup.
    until_exec_works(&root, "ja", 120);
    let mb = host_memory_mb(&root, "ja");
    assert!(mb > 10.0 && mb * 1048576.0 <= memory_max as f64, "{mb} MB");
    assert_eq!(ok(&root, &["exec", "ja", "--", "hostname"]).trim(), "ja");
    ok(&root, &["rm", "-f", "ja", "jb"]);
    // Nothing of the jails is left.
    for dir in dirs.split_whitespace() {
        assert!(!Path::new(dir).exists(), "cgroup {dir} left behind");
    }
    assert!(!Path::new(&format!("/run/ignite/jail/{ua}")).exists());
}

#[test]
fn a_forbidden_syscall_stops_the_vmm_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "victim", "--memory", "128MB", "--network-plugin", "none"]);
    ok(&root, &["run", "busybox", "--name", "bystander", "--memory", "128MB", "--network-plugin", "none"]);
    let uid = field(&root, "victim", "{{.UID}}");
    // Ask QEMU to start a process (migration to a command): its seccomp filter (spawn=deny)
    // stops it there.
    let sock = root.join("vm").join(&uid).join("qmp.sock");
    let s = until_ok("QEMU's QMP socket", 30, || std::os::unix::net::UnixStream::connect(&sock));
    use std::io::{BufRead, Write};
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    writeln!(w, r#"{{"execute":"migrate","arguments":{{"uri":"exec:cat >/dev/null"}}}}"#).unwrap();
    until("the VMM to be stopped", 30, || field(&root, "victim", "{{.Status.Running}}") != "true");
    assert_eq!(field(&root, "victim", "{{.Status.Exit.Reason}}"), "VMM killed by signal 31");
    assert_eq!(field(&root, "bystander", "{{.Status.Running}}"), "true");
    until_exec_works(&root, "bystander", 120);
    ok(&root, &["rm", "-f", "victim", "bystander"]);
}

#[test]
fn without_the_jail_the_vmm_runs_as_root_for_debugging() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "free", "--memory", "128MB", "--network-plugin", "none", "--jail=false"]);
    let pid = vmm_pid(&field(&root, "free", "{{.UID}}"));
    assert!(status_field(pid, "Uid").starts_with("0\t") || status_field(pid, "Uid").starts_with("0 "));
    assert_eq!(status_field(pid, "Seccomp"), "0");
    assert_eq!(field(&root, "free", "{{.Status.Runtime.Jail}}"), "<nil>");
    until_exec_works(&root, "free", 120);
    // Its host memory, from the VMM's resident set (no cgroup to ask).
    let mb = host_memory_mb(&root, "free");
    assert!((10.0..2048.0).contains(&mb), "{mb} MB");
    ok(&root, &["rm", "-f", "free"]);
}

/// ignited's /metrics shows each jailed VM's memory and CPU, from its cgroup.
#[test]
fn metrics_show_each_vms_memory_and_cpu() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    let manifests = d.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let sock = d.path().join("api.sock");
    let mut daemon = Command::new(Path::new(common::bin()).with_file_name("ignited"))
        .args(["daemon", "--manifest-dir"])
        .arg(&manifests)
        .arg("--socket")
        .arg(&sock)
        .env("IGNITE_ROOT", &*root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ok(&root, &["run", "busybox", "--name", "metered", "--memory", "128MB", "--network-plugin", "none"]);
    until_exec_works(&root, "metered", 120);
    let body = until_ok("per-VM metrics", 30, || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| e.to_string())?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if out.contains("ignite_vm_memory_bytes{vm=\"metered\"") {
            Ok(out)
        } else {
            Err("not there yet".to_string())
        }
    });
    let value = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(&format!("{name}{{vm=\"metered\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(value("ignite_vm_memory_bytes") > 10e6, "{body}");
    assert!(value("ignite_vm_cpu_seconds_total") > 0.0, "{body}");
    let _ = daemon.kill();
    let _ = daemon.wait();
    ok(&root, &["rm", "-f", "metered"]);
}
