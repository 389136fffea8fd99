//! cpio archives unpack with GNU cpio to the tree they were made from; the VM initramfs holds
//! what the shim expects.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use ignite_disk::{build_vm_initramfs, guest_init_script, Initramfs, VmBoot};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn unpack(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let f = std::fs::File::open(archive).unwrap();
    let o = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(into)
        .stdin(f)
        .output()
        .unwrap();
    assert!(o.status.success(), "cpio: {}", String::from_utf8_lossy(&o.stderr));
}

/// (relative path, kind, mode, mtime for files, contents or link target), sorted.
fn describe(root: &Path) -> Vec<(String, &'static str, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let name = r.to_string_lossy().into_owned();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                out.push((name, "link", 0, 0, t.to_string_lossy().as_bytes().to_vec()));
            } else if m.is_dir() {
                out.push((name, "dir", mode, 0, Vec::new()));
                stack.push(r);
            } else {
                out.push((name, "file", mode, m.mtime(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn host_tree_round_trips_through_cpio() {
    if !have("cpio") {
        skip!("cpio missing (apt-get install cpio)");
    }
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::create_dir_all(tree.join("private")).unwrap();
    chmod(&tree.join("private"), 0o700);
    std::fs::write(tree.join("a/b/c/deep.txt"), b"deep").unwrap();
    std::fs::write(tree.join("empty"), b"").unwrap();
    std::fs::write(tree.join("odd"), b"12345").unwrap(); // not a multiple of 4
    let big: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("big.bin"), &big).unwrap();
    std::fs::write(tree.join("private/key"), b"k").unwrap();
    chmod(&tree.join("private/key"), 0o600);
    std::fs::write(tree.join("tool"), b"#!/bin/sh\n").unwrap();
    chmod(&tree.join("tool"), 0o4755);
    std::os::unix::fs::symlink("a/b/c/deep.txt", tree.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/somewhere", tree.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("missing", tree.join("a/dangling")).unwrap();

    let mut i = Initramfs::new();
    i.add_host_tree("", &tree).unwrap();
    let archive = d.path().join("tree.cpio");
    i.write_to(&archive).unwrap();
    assert_eq!(std::fs::metadata(&archive).unwrap().len() % 4, 0);
    let x = d.path().join("x");
    unpack(&archive, &x);
    assert_eq!(describe(&x), describe(&tree));
    if is_root() {
        assert_eq!(std::fs::metadata(x.join("private/key")).unwrap().uid(), 0);
    }

    // The same tree under a prefix, plus hand-made entries.
    let mut i = Initramfs::new();
    i.add_host_tree("opt/t", &tree).unwrap();
    i.add_dir("etc", 0o711).unwrap();
    i.add_file("etc/motd", b"hi\n", 0o640).unwrap();
    i.add_file_from("bin/copy", &tree.join("big.bin"), 0o700).unwrap();
    i.add_symlink("bin/sh", "busybox").unwrap();
    let archive = d.path().join("more.cpio");
    i.write_to(&archive).unwrap();
    let y = d.path().join("y");
    unpack(&archive, &y);
    assert_eq!(describe(&y.join("opt/t")), describe(&tree));
    assert_eq!(std::fs::metadata(y.join("etc")).unwrap().mode() & 0o7777, 0o711);
    assert_eq!(std::fs::read(y.join("etc/motd")).unwrap(), b"hi\n");
    assert_eq!(std::fs::metadata(y.join("etc/motd")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(y.join("bin/copy")).unwrap(), big);
    assert_eq!(std::fs::read_link(y.join("bin/sh")).unwrap(), Path::new("busybox"));
    let listing = run(Command::new("cpio").args(["-t", "--quiet"]).stdin(std::fs::File::open(&archive).unwrap()));
    let pos = |n: &str| listing.lines().position(|l| l == n).unwrap_or_else(|| panic!("{n} not in {listing}"));
    assert!(pos("opt") < pos("opt/t") && pos("opt/t") < pos("opt/t/a") && pos("bin") < pos("bin/copy"));
}

#[test]
fn vm_initramfs_holds_busybox_shim_and_files() {
    if !have("cpio") || !Path::new("/bin/busybox").is_file() {
        skip!("cpio or /bin/busybox missing (apt-get install cpio busybox-static)");
    }
    let d = tempfile::tempdir().unwrap();
    let host = d.path().join("data");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("sub/a.txt"), b"alpha").unwrap();
    std::os::unix::fs::symlink("sub/a.txt", host.join("ln")).unwrap();
    std::fs::write(d.path().join("single"), b"one file").unwrap();
    std::os::unix::fs::symlink("single", d.path().join("single-link")).unwrap();
    let boot = VmBoot {
        hostname: "vm1".into(),
        hosts: "127.0.0.1 localhost vm1\n".into(),
        resolv_conf: Some("nameserver 10.0.0.1\n".into()),
        authorized_keys: Some("ssh-ed25519 AAAA test\n".into()),
        copy_files: vec![(host.clone(), "/opt/data/".into()), (d.path().join("single-link"), "/etc/single".into())],
        mounts: vec![("/dev/vdb".into(), "/mnt/data".into())],
        ipv4_only: vec!["eth0".into()],
        ..VmBoot::default()
    };
    let out = d.path().join("initrd.cpio");
    let t = Instant::now();
    build_vm_initramfs(&boot, &out).unwrap();
    println!("FIGURE build_vm_initramfs: {:?}, {} KiB", t.elapsed(), std::fs::metadata(&out).unwrap().len() / 1024);
    let x = d.path().join("x");
    unpack(&out, &x);
    let f = |p: &str| x.join(p);
    assert_eq!(std::fs::read(f("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
    assert_eq!(std::fs::metadata(f("bin/busybox")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_to_string(f("init")).unwrap(), guest_init_script());
    assert_eq!(std::fs::metadata(f("init")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_to_string(f("ignite/env")).unwrap(),
        "IGNITE_HOSTNAME='vm1'\nIGNITE_ROOT='/dev/vda'\nIGNITE_UPPER=''\nIGNITE_INIT='/sbin/init'\nIGNITE_AGENT_VSOCK=\nIGNITE_IPV4_ONLY='eth0'\n"
    );
    assert_eq!(std::fs::read_to_string(f("ignite/mounts")).unwrap(), "/dev/vdb /mnt/data\n");
    assert_eq!(std::fs::read_to_string(f("ignite/files/etc/hostname")).unwrap(), "vm1\n");
    assert_eq!(std::fs::read_to_string(f("ignite/files/etc/hosts")).unwrap(), "127.0.0.1 localhost vm1\n");
    assert_eq!(std::fs::read_to_string(f("ignite/files/etc/resolv.conf")).unwrap(), "nameserver 10.0.0.1\n");
    assert_eq!(std::fs::metadata(f("ignite/files/root/.ssh")).unwrap().mode() & 0o7777, 0o700);
    let keys = f("ignite/files/root/.ssh/authorized_keys");
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(std::fs::read(&keys).unwrap(), b"ssh-ed25519 AAAA test\n");
    assert_eq!(std::fs::read(f("ignite/files/opt/data/sub/a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read_link(f("ignite/files/opt/data/ln")).unwrap(), Path::new("sub/a.txt"));
    assert_eq!(std::fs::read(f("ignite/files/etc/single")).unwrap(), b"one file");
    assert!(std::fs::symlink_metadata(f("ignite/files/etc/single")).unwrap().is_file(), "top-level link followed");
    if is_root() {
        let console = std::fs::symlink_metadata(f("dev/console")).unwrap();
        assert!(console.file_type().is_char_device());
        assert_eq!(console.rdev(), rustix::fs::makedev(5, 1));
        // The shim's redirections before devtmpfs is mounted must not create a plain file.
        let null = std::fs::symlink_metadata(f("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    }
}

#[test]
fn init_script_parses() {
    if !Path::new("/bin/busybox").is_file() {
        skip!("/bin/busybox missing (apt-get install busybox-static)");
    }
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("init");
    std::fs::write(&script, guest_init_script()).unwrap();
    run(Command::new("/bin/busybox").args(["sh", "-n"]).arg(&script));
    assert!(guest_init_script().starts_with("#!/bin/busybox sh\n"));
    if have("shellcheck") {
        run(Command::new("shellcheck").args(["-s", "sh", "-e", "SC1091"]).arg(&script));
    }
}
