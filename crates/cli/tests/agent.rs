//! `ignite exec` and `ignite cp` through the guest agent, on the busybox image (no sshd, no
//! SSH key): exit codes, streamed stdin and output, Ctrl-C, a TTY, copies both ways, and a
//! guest that kills its agent or floods the channel with garbage. Real VMs (TCG here).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{fails, ok, prepared_root, until, until_exec_works};

fn exec(root: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["exec"];
    a.extend_from_slice(args);
    common::ignite(root, &a)
}

fn wait_ready(root: &Path, vm: &str) {
    common::wait_for_log(root, vm, "IGNITE-BUSYBOX-READY", 120);
}

/// Run detached in the guest: kills the agent (watchdog and worker), floods the channel with
/// random bytes, then starts a fresh agent.
const HOSTILE: &str = r#"
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name")" = org.ignite.agent.0 ] && port=/dev/${p##*/}
done
sleep 1
kill -9 $(pidof ignite-agent)
while pidof ignite-agent >/dev/null; do sleep 0.05; done
# The port opens once its last user is gone.
i=0
until head -c 300000 /dev/urandom 2>/dev/null >"$port"; do
    i=$((i + 1))
    [ $i -lt 100 ] || break
    sleep 0.05
done
exec /.ignite/ignite-agent --port "$port"
"#;

#[test]
fn exec_and_cp_through_the_agent_on_an_image_without_sshd() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "ag", "--memory", "256MB"]);
    wait_ready(&root, "ag");

    // The guest's kernel command line, through the agent (no sshd, no key in this VM).
    let o = exec(&root, &["ag", "--", "cat", "/proc/cmdline"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmdline = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(cmdline.contains("rdinit=/init"), "{cmdline}");
    // Under TCG ignite's kernel is told what QEMU emulates (its patches' parameters: the test
    // kernel is ignite's); under KVM nothing.
    let inspect = ok(&root, &["inspect", "vm", "ag"]);
    let tcg = inspect.contains("\"accel\": \"tcg\"");
    for arg in [
        "tsc_early_khz=",
        "no_timer_check",
        "noreplace-smp",
        "lapic_timer_khz=1000000",
        "keep_initmem",
        "zero_freed_initmem",
    ] {
        assert_eq!(cmdline.contains(arg), tcg, "{arg} in {cmdline} ({inspect})");
    }
    // Under TCG the guest's CPU has no fast `rep movsb` (ERMS, FSRM): TCG runs that one byte
    // per step, so the guest copies memory with wider moves.
    if tcg {
        let o = exec(&root, &["ag", "--", "sh", "-c", "grep -m1 ^flags /proc/cpuinfo"]);
        let flags = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(flags.contains(" sse2") && !flags.contains(" erms") && !flags.contains(" fsrm"), "{flags}");
    }
    // Ignite's kernel takes a TSC frequency given by tsc_early_khz= as known (patch 0003): the
    // `tsc` clocksource is chosen while the kernel boots, not by a refined calibration a
    // second after; and its RNG is ready at boot where the CPU has RDRAND (RANDOM_TRUST_CPU).
    let o = exec(&root, &["ag", "--", "sh", "-c", "grep -c rdrand /proc/cpuinfo; dmesg"]);
    let log = String::from_utf8_lossy(&o.stdout).into_owned();
    let at = |needle: &str| log.lines().position(|l| l.trim_end().ends_with(needle));
    let init = at("Run /init as init process").expect("the kernel's log");
    if tcg {
        let switched = at("Switched to clocksource tsc");
        assert!(switched.is_some_and(|i| i < init), "the tsc clocksource chosen before init: {log}");
    }
    if !log.starts_with('0') {
        assert!(at("random: crng init done").is_some_and(|i| i < init), "the RNG ready before init: {log}");
    }
    // The agent runs from a tmpfs of its own at /.ignite: nothing of it is in the VM's disk
    // (under the mount, through a bind mount of / without its submounts, the directory is
    // empty).
    let o = exec(
        &root,
        &["ag", "--", "sh", "-c", "df /.ignite | tail -1 | cut -d' ' -f1; mkdir -p /tmp/r && mount --bind / /tmp/r && ls -A /tmp/r/.ignite; umount /tmp/r"],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ignite-agent\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(exec(&root, &["ag", "--", "sh", "-c", "exit 3"]).status.code(), Some(3));
    // The agent's worker is woken by its port when the host end connects (SIGIO on the port,
    // opened O_ASYNC; SIGIO blocked in the thread it is aimed at), instead of reading again
    // every 50 ms: a guest resumed from a snapshot answered its new supervisor up to 50 ms
    // late. What the agent runs starts with no signal blocked or ignored.
    let o = exec(
        &root,
        &[
            "ag",
            "--",
            "sh",
            "-c",
            "for p in $(pidof ignite-agent); do for f in /proc/$p/fd/*; do case $(readlink $f) in /dev/vport*) \
             fl=$(sed -n 's/^flags:[[:space:]]*//p' /proc/$p/fdinfo/${f##*/}); \
             echo port $(( 0$fl & 020000 )) $(sed -n 's/^SigBlk:[[:space:]]*//p' /proc/$p/status);; esac; done; done",
        ],
    );
    let ports = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!ports.is_empty(), "no agent process with its port open: {}", String::from_utf8_lossy(&o.stderr));
    for l in ports.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let blocked = u64::from_str_radix(f.get(2).copied().unwrap_or(""), 16).unwrap_or(0);
        assert!(f.get(1) == Some(&"8192") && blocked & (1 << 28) != 0, "port O_ASYNC and SIGIO (29) blocked: {l}");
    }
    let o = exec(&root, &["ag", "--", "cat", "/proc/self/status"]);
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    // (The standard signals: glibc keeps 32 and 33 for itself, and cannot be asked to reset them.)
    for field in ["SigBlk:", "SigIgn:"] {
        let v = status.lines().find_map(|l| l.strip_prefix(field)).map(|v| u64::from_str_radix(v.trim(), 16));
        assert_eq!(v.map(|m| m.map(|m| m & 0x7fff_ffff)), Some(Ok(0)), "{field} of a command the agent runs: {status}");
    }
    let o = exec(&root, &["ag", "--", "sh", "-c", "echo out; echo err >&2; exit 0"]);
    assert_eq!((o.stdout.as_slice(), o.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    // Docker's -e and -w.
    let o = exec(&root, &["-e", "FOO=bar baz", "-w", "/root", "ag", "--", "sh", "-c", "echo \"$FOO\"; pwd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "bar baz\n/root\n");
    assert_eq!(exec(&root, &["-e", "1X=2", "ag", "--", "true"]).status.code(), Some(2));
    assert_eq!(exec(&root, &["-w", "relative", "ag", "--", "true"]).status.code(), Some(2));
    let o = exec(&root, &["ag", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot run \"no-such-command\": executable file not found in $PATH"), "{err}");
    let o = exec(&root, &["ag", "--", "/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "{}", String::from_utf8_lossy(&o.stderr));

    // Stdin is streamed.
    let mut child = Command::new(common::bin())
        .args(["exec", "ag", "cat"])
        .env("IGNITE_ROOT", &*root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    assert_eq!(String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout), "hi\n");

    // 100 MiB of output streams through without being held in memory.
    let mut child = Command::new(common::bin())
        .args(["exec", "ag", "--", "head", "-c", "104857600", "/dev/zero"])
        .env("IGNITE_ROOT", &*root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut peak_kib) = (0usize, 0u64);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0));
        total += n;
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                peak_kib = l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(peak_kib);
            }
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 100 << 20);
    println!("FIGURE exec 100 MiB output: peak RSS of ignite {peak_kib} KiB");
    assert!(peak_kib > 0 && peak_kib < 64 * 1024, "ignite held {peak_kib} KiB for 100 MiB of output");

    // Ctrl-C reaches the command: it dies of SIGINT (130), and nothing is left running.
    let mut child = Command::new(common::bin())
        .args(["exec", "ag", "--", "sleep", "300"])
        .env("IGNITE_ROOT", &*root)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let running = |root: &Path| {
        let o = exec(root, &["ag", "--", "sh", "-c", "ps | grep -c '[s]leep 300' || true"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    until("the command to start in the guest", 30, || running(&root) == "1");
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let o = exec(&root, &["ag", "--", "sh", "-c", "ps | grep -c '[s]leep 300' || true"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0");

    // A TTY: the command sees a terminal of the requested size.
    let o = exec(&root, &["-t", "ag", "--", "sh", "-c", "tty; stty size"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("/dev/pts/"), "{s}");

    // cp both ways: a 10 MiB file byte-identical, a tree with modes and a symbolic link.
    let big = d.path().join("big.bin");
    let data: Vec<u8> = (0..10u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    ok(&root, &["cp", big.to_str().unwrap(), "ag:/root/big.bin"]);
    let back = d.path().join("back.bin");
    ok(&root, &["cp", "ag:/root/big.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "10 MiB round trip differs");
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(tree.join("sub/run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("sub/run.sh", tree.join("link")).unwrap();
    ok(&root, &["cp", tree.to_str().unwrap(), "ag:/root"]);
    // Into a path that does not exist: copied as that path (`docker cp`'s rule).
    ok(&root, &["cp", tree.to_str().unwrap(), "ag:/srv-tree"]);
    assert_eq!(ok(&root, &["exec", "ag", "--", "cat", "/srv-tree/sub/run.sh"]), "#!/bin/sh\necho ran\n");
    assert_eq!(ok(&root, &["exec", "ag", "--", "/root/tree/link"]), "ran\n");
    let o = ok(&root, &["exec", "ag", "--", "stat", "-c", "%a", "/root/tree/sub/run.sh"]);
    assert_eq!(o.trim(), "750");
    let tree_back = d.path().join("tree-back");
    ok(&root, &["cp", "ag:/root/tree", tree_back.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(tree_back.join("link")).unwrap(), Path::new("sub/run.sh"));
    // `..` is refused before anything is copied.
    fails(&root, &["cp", big.to_str().unwrap(), "ag:/root/../etc/x"], 2, "'..' is not allowed");
    let e = common::ignite(&root, &["cp", "ag:/no/such/file", d.path().join("x").to_str().unwrap()]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("/no/such/file"));

    // The guest kills the agent's worker under a running exec: that exec fails clearly, the
    // agent's watchdog brings it back.
    let o = exec(&root, &["ag", "--", "sh", "-c", "kill -9 $PPID; sleep 30"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("guest agent"), "{err}");
    let took = until_exec_works(&root, "ag", 30);
    println!("FIGURE agent back after its worker was killed: {took:?}");

    // A hostile guest: kills the whole agent, writes 300 KB of garbage into the channel, then
    // starts a fresh agent. The supervisor (and the VM) survive, and exec works again.
    let script = d.path().join("hostile.sh");
    std::fs::write(&script, HOSTILE).unwrap();
    ok(&root, &["cp", script.to_str().unwrap(), "ag:/root/hostile.sh"]);
    let o = exec(&root, &["ag", "--", "sh", "-c", "setsid sh /root/hostile.sh </dev/null >/dev/null 2>&1 &"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The flood has reached the supervisor before exec is tried again (else the old agent
    // would answer and prove nothing).
    let uid = ok(&root, &["inspect", "vm", "ag", "-t", "{{.UID}}"]);
    let spawn_log = root.join("vm").join(uid.trim()).join("spawn.log");
    until("a malformed frame to reach the supervisor", 60, || {
        std::fs::read_to_string(&spawn_log).unwrap_or_default().contains("malformed frame")
    });
    let took = until_exec_works(&root, "ag", 60);
    println!("FIGURE exec works again {took:?} after a garbage flood");
    assert_eq!(ok(&root, &["inspect", "vm", "ag", "-t", "{{.Status.Running}}"]).trim(), "true");

    // An image whose init mounts neither /proc nor /sys (as a container image's busybox,
    // which has no rcS): a command run through the agent finds them all the same, as in a
    // container (the shim moves its own into the image's root).
    let o = exec(&root, &["ag", "--", "sed", "-i", "/mount -t proc/d; /mount -t sysfs/d", "/etc/init.d/rcS"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&root, &["stop", "ag"]);
    ok(&root, &["start", "ag"]);
    common::wait_for_log(&root, "ag", "boot=2", 120);
    let script = "cat /proc/1/comm; cat /sys/class/net/eth0/address; grep -c mount /etc/init.d/rcS";
    let o = exec(&root, &["ag", "--", "sh", "-c", script]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!((lines[0], lines[2]), ("init", "1"), "{out}");
    assert!(lines[1].len() == 17 && lines[1].matches(':').count() == 5, "eth0's MAC from /sys: {out}");

    // A stopped VM.
    ok(&root, &["stop", "ag"]);
    fails(&root, &["exec", "ag", "--", "true"], 1, "is not running");
    ok(&root, &["rm", "ag"]);
}

#[test]
fn without_agent_and_without_ssh_exec_says_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let root = prepared_root(d.path());
    ok(&root, &["run", "busybox", "--name", "noagent", "--agent=false", "--memory", "256MB"]);
    let uid = ok(&root, &["inspect", "vm", "noagent", "-t", "{{.UID}}"]);
    assert!(!root.join("vm").join(uid.trim()).join("agent.sock").exists());
    let o = exec(&root, &["--timeout", "2", "noagent", "--", "true"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--ssh") && err.contains("created with --agent=false"), "{err}");
    ok(&root, &["rm", "-f", "noagent"]);
    // A dynamically linked agent where ignite was told to take it: exec says so (not "has no
    // SSH key").
    let o = Command::new(common::bin())
        .args(["run", "busybox", "--name", "dynagent", "--memory", "256MB", "--network-plugin", "none"])
        .env("IGNITE_ROOT", &*root)
        .env("IGNITE_AGENT", "/bin/true")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = exec(&root, &["--timeout", "2", "dynagent", "--", "true"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("/bin/true: dynamically linked"), "{err}");
    ok(&root, &["rm", "-f", "dynagent"]);
    // Nothing set, nothing installed: the agent built into ignite by cargo is used.
    let o = Command::new(common::bin())
        .args(["run", "busybox", "--name", "builtin", "--memory", "256MB", "--network-plugin", "none"])
        .env("IGNITE_ROOT", &*root)
        .env_remove("IGNITE_AGENT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    until_exec_works(&root, "builtin", 120);
    let written: Vec<_> = std::fs::read_dir(root.join("agent")).unwrap().flatten().collect();
    assert_eq!(written.len(), 1, "the built-in agent is written once under the state root");
    ok(&root, &["rm", "-f", "builtin"]);
}
