//! Boots real guests under QEMU microvm (TCG): ext4 base → size class → qcow2 overlay → VM
//! initramfs → the shim provisions the VM's files and hands over to the image's init.
//!
//! Needs `/usr/bin/qemu-system-x86_64`, `/bin/busybox` (static) and the guest kernel from
//! `images/kernel/build.sh` (or `IGNITE_TEST_KERNEL=/path/to/vmlinux`); skips loudly without.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ignite_disk::{build_ext4, build_vm_initramfs, create_overlay, overlay_info, size_class_base, Ext4Options, VmBoot};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const MIB: u64 = 1 << 20;

/// The guest kernel, or why there is none.
fn kernel() -> Result<PathBuf, String> {
    if let Some(k) = std::env::var_os("IGNITE_TEST_KERNEL") {
        return Ok(k.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/kernel/build.sh");
    if !script.is_file() {
        return Err(format!("{} missing", script.display()));
    }
    let o = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !o.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    let path = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim().to_string();
    let vmlinux = PathBuf::from(&path);
    if !vmlinux.is_file() {
        return Err(format!("{} printed {path:?}, not a file", script.display()));
    }
    if let Ok(config) = std::fs::read_to_string(vmlinux.with_file_name("config")) {
        for opt in ["CONFIG_BLK_DEV_INITRD=y", "CONFIG_DEVTMPFS=y", "CONFIG_VIRTIO_BLK=y", "CONFIG_EXT4_FS=y"] {
            if !config.lines().any(|l| l == opt) {
                return Err(format!("the kernel lacks {opt}"));
            }
        }
    }
    Ok(vmlinux)
}

fn tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

/// What must be in place to boot, or the reason to skip.
fn prerequisites() -> Result<PathBuf, String> {
    if !Path::new(QEMU).is_file() {
        return Err(format!("{QEMU} missing (apt-get install qemu-system-x86)"));
    }
    if !Path::new("/bin/busybox").is_file() {
        return Err("/bin/busybox missing (apt-get install busybox-static)".into());
    }
    if !have("mke2fs") {
        return Err("mke2fs missing (apt-get install e2fsprogs)".into());
    }
    kernel()
}

/// A minimal image: busybox, and an init that reports what the shim provisioned.
fn image_tree(root: &Path, init: &str) {
    busybox_tree(root);
    for dir in ["sbin", "etc", "dev", "proc", "sys", "root", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("sbin/init"), init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("sbin/init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("etc/hosts"), b"# the image's own\n").unwrap();
    std::fs::write(root.join("etc/motd"), b"image motd\n").unwrap();
    // A link the shim must replace, never write through.
    std::os::unix::fs::symlink("/tmp/elsewhere", root.join("etc/hostname")).unwrap();
    // A dangling resolver link, as images made for systemd-resolved have.
    std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", root.join("etc/resolv.conf")).unwrap();
}

/// Boots and returns the console output; stops at `until` (or when QEMU exits, or 60 s).
fn boot(vmlinux: &Path, initrd: &Path, disk: &Path, until: &[&str]) -> String {
    let append = format!("console=ttyS0 reboot=k panic=1 pci=off rdinit=/init tsc_early_khz={}", tsc_khz());
    let mut child = Command::new(QEMU)
        .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"])
        .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .arg("-drive")
        .arg(format!("id=root,file={},format=qcow2,if=none", disk.display()))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut console = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if until.iter().any(|u| line.contains(u)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            console.push_str("\n[test: 60 s timeout]\n");
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("--- console ---\n{console}--- end ---");
    println!("FIGURE boot until {:?}: {:?} (TCG)", until, started.elapsed());
    console
}

fn file_hash(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p)).split_whitespace().next().unwrap().to_string()
}

#[test]
fn boots_and_provisions_into_the_overlay() {
    let vmlinux = match prerequisites() {
        Ok(k) => k,
        Err(why) => skip!("{why}"),
    };
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("rootfs");
    image_tree(
        &root,
        "#!/bin/busybox sh\n\
         /bin/busybox echo \"ROOT-INIT-OK $(/bin/busybox hostname) $(/bin/busybox cat /etc/hostname)\"\n\
         /bin/busybox echo \"ROOT-INIT-PID $$\"\n\
         /bin/busybox sync\n\
         /bin/busybox poweroff -f\n",
    );
    let image_dir = d.path().join("image");
    std::fs::create_dir(&image_dir).unwrap();
    let base = image_dir.join("base.ext4");
    build_ext4(&root, &base, &Ext4Options::default()).unwrap();
    let class = size_class_base(&image_dir, &base, 256 * MIB).unwrap();
    let (base_hash, class_hash) = (file_hash(&base), file_hash(&class));
    let disk = d.path().join("vm.qcow2");
    create_overlay(&class, &disk, 256 * MIB).unwrap();
    let before = overlay_info(&disk).unwrap();

    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/f.txt"), b"copied").unwrap();
    let initrd = d.path().join("initrd.cpio");
    let boot_spec = VmBoot {
        hostname: "testvm".into(),
        hosts: "127.0.0.1\tlocalhost\n10.61.0.2\ttestvm\n".into(),
        resolv_conf: Some("nameserver 10.61.0.1\n".into()),
        authorized_keys: Some("ssh-ed25519 AAAATEST test\n".into()),
        copy_files: vec![(data.clone(), "/opt/data".into())],
        ..VmBoot::default()
    };
    build_vm_initramfs(&boot_spec, &initrd).unwrap();

    let console = boot(&vmlinux, &initrd, &disk, &["reboot: Power down", "System halted", "Kernel panic"]);
    assert!(console.contains("ignite-init: provisioned testvm"), "console:\n{console}");
    assert!(console.contains("ROOT-INIT-OK testvm testvm"), "console:\n{console}");
    assert!(console.contains("ROOT-INIT-PID 1"), "the image's init is PID 1; console:\n{console}");
    assert!(!console.contains("ignite-init: error"), "console:\n{console}");

    assert_eq!(file_hash(&base), base_hash, "the image base changed");
    assert_eq!(file_hash(&class), class_hash, "the size-class base changed");
    let after = overlay_info(&disk).unwrap();
    assert!(after.actual_size > before.actual_size, "the overlay grew: {before:?} -> {after:?}");
    run(Command::new("qemu-img").args(["check", "-q"]).arg(&disk));

    // The VM's files are in its own layer: read the flattened disk without mounting.
    let flat = d.path().join("flat.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&disk).arg(&flat));
    assert_eq!(debugfs(&flat, "cat /etc/hostname"), "testvm\n");
    assert_eq!(debugfs(&flat, "cat /etc/hosts"), "127.0.0.1\tlocalhost\n10.61.0.2\ttestvm\n");
    assert_eq!(debugfs(&flat, "cat /etc/resolv.conf"), "nameserver 10.61.0.1\n", "dangling link replaced");
    assert_eq!(debugfs(&flat, "cat /opt/data/sub/f.txt"), "copied");
    let keys = debugfs(&flat, "stat /root/.ssh/authorized_keys");
    assert_eq!((field(&keys, "Mode:"), field(&keys, "User:")), ("0600", "0"), "{keys}");
    assert_eq!(field(&debugfs(&flat, "stat /root/.ssh"), "Mode:"), "0700");
    assert_eq!(debugfs(&flat, "cat /root/.ssh/authorized_keys"), "ssh-ed25519 AAAATEST test\n");
    assert_eq!(debugfs(&flat, "cat /etc/motd"), "image motd\n", "the image's /etc kept");
    assert!(debugfs(&flat, "stat /etc/hostname").contains("Type: regular"));
    assert!(debugfs(&flat, "stat /tmp/elsewhere").is_empty(), "a link was written through");
    assert_fsck_clean(&flat);

    // The next boot of the same disk: files are refreshed, but the resolver configuration
    // it now has stays.
    let again = VmBoot {
        hostname: "renamed".into(),
        resolv_conf: Some("nameserver 9.9.9.9\n".into()),
        copy_files: Vec::new(),
        ..boot_spec
    };
    build_vm_initramfs(&again, &initrd).unwrap();
    let console = boot(&vmlinux, &initrd, &disk, &["reboot: Power down", "System halted", "Kernel panic"]);
    assert!(console.contains("ROOT-INIT-OK renamed renamed"), "console:\n{console}");
    std::fs::remove_file(&flat).unwrap();
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&disk).arg(&flat));
    assert_eq!(debugfs(&flat, "cat /etc/resolv.conf"), "nameserver 10.61.0.1\n", "an existing resolv.conf stays");
    assert_eq!(debugfs(&flat, "cat /opt/data/sub/f.txt"), "copied");
    assert_eq!(file_hash(&class), class_hash, "the size-class base changed");
}

#[test]
fn missing_init_powers_off_with_an_error() {
    let vmlinux = match prerequisites() {
        Ok(k) => k,
        Err(why) => skip!("{why}"),
    };
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("rootfs");
    image_tree(&root, "#!/bin/busybox sh\n");
    let base = d.path().join("base.ext4");
    build_ext4(&root, &base, &Ext4Options::default()).unwrap();
    let disk = d.path().join("vm.qcow2");
    create_overlay(&base, &disk, 128 * MIB).unwrap();
    let initrd = d.path().join("initrd.cpio");
    let spec = VmBoot { hostname: "noinit".into(), init: "/sbin/no-such-init".into(), ..VmBoot::default() };
    build_vm_initramfs(&spec, &initrd).unwrap();
    let console = boot(&vmlinux, &initrd, &disk, &["reboot: Power down", "System halted", "Kernel panic"]);
    assert!(
        console.contains("ignite-init: error: /sbin/no-such-init is missing or not executable"),
        "console:\n{console}"
    );
    assert!(console.contains("reboot: Power down") || console.contains("System halted"), "console:\n{console}");
    assert!(!console.contains("ignite-init: provisioned"), "console:\n{console}");
}
