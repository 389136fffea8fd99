//! qcow2 overlays: QEMU's tools read what we write, and the cost does not follow the base.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use ignite_disk::{create_overlay, overlay_info, DiskError};

fn sparse(p: &Path, size: u64) {
    std::fs::File::create(p).unwrap().set_len(size).unwrap();
}

fn qemu_check(p: &Path) {
    run(Command::new("qemu-img").args(["check", "-q"]).arg(p));
}

#[test]
fn same_bytes_as_qemu_img_create() {
    if !have("qemu-img") {
        skip!("qemu-img missing (apt-get install qemu-utils)");
    }
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.ext4");
    sparse(&base, 64 << 20);
    for size in [64u64 << 20, 4 << 30, 100 << 30, 5 << 40, 1_000_000_001] {
        let ours = d.path().join(format!("ours-{size}.qcow2"));
        let theirs = d.path().join(format!("qemu-{size}.qcow2"));
        create_overlay(&base, &ours, size).unwrap();
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&theirs)
            .arg(size.to_string()));
        assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "{size}: differs from qemu-img's");
        qemu_check(&ours);
    }
}

#[test]
fn qemu_reads_and_writes_through_the_overlay() {
    if !have("qemu-img") || !have("qemu-io") {
        skip!("qemu-img/qemu-io missing (apt-get install qemu-utils)");
    }
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    let mut content = vec![0x11u8; 1 << 20];
    content[..4].copy_from_slice(b"BASE");
    std::fs::write(&base, &content).unwrap();
    let ov = d.path().join("vm.qcow2");
    create_overlay(&base, &ov, 8 << 20).unwrap();
    let info = overlay_info(&ov).unwrap();
    assert_eq!(info.virtual_size, 8 << 20);
    assert_eq!(info.backing.as_deref(), Some(base.as_path()));
    let before = info.actual_size;

    let io = |cmd: &str| run(Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(&ov));
    assert!(io("read -P 0x11 4096 4096").contains("read 4096/4096"), "the base shows through");
    io("write -P 0xab 65536 65536");
    io("write -P 0xcd 7340032 4096"); // beyond the base: reads zero before
    assert!(io("read -P 0xab 65536 65536").contains("read 65536/65536"));
    assert!(io("read -P 0x00 6291456 4096").contains("read 4096/4096"));
    assert_eq!(std::fs::read(&base).unwrap(), content, "the base was written");
    qemu_check(&ov);
    assert!(overlay_info(&ov).unwrap().actual_size > before, "the overlay took the writes");
}

#[test]
fn cost_does_not_follow_the_base_size() {
    if !have("qemu-img") {
        skip!("qemu-img missing (apt-get install qemu-utils)");
    }
    let d = tempfile::tempdir().unwrap();
    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    for (label, size) in [("64 MiB", 64u64 << 20), ("1 GiB", 1 << 30)] {
        let base = d.path().join(format!("base-{size}"));
        sparse(&base, size);
        let (mut t_ours, mut t_qemu) = (Vec::new(), Vec::new());
        for i in 0..15 {
            let ov = d.path().join(format!("ov-{size}-{i}.qcow2"));
            let t = Instant::now();
            create_overlay(&base, &ov, 4 << 30).unwrap();
            t_ours.push(t.elapsed());
            let q = d.path().join(format!("q-{size}-{i}.qcow2"));
            let t = Instant::now();
            run(Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&base)
                .arg(&q)
                .arg("4G"));
            t_qemu.push(t.elapsed());
            assert!(std::fs::metadata(&ov).unwrap().len() < 1 << 20, "the overlay is a header and tables");
        }
        let (o, q) = (median(t_ours), median(t_qemu));
        println!("FIGURE create_overlay over {label} base: ours {o:?}, qemu-img create {q:?} (median of 15)");
        ours.push(o);
        qemu.push(q);
        qemu_check(&d.path().join(format!("ov-{size}-0.qcow2")));
    }
    assert!(ours[1] <= ours[0] * 3 + Duration::from_millis(5), "1 GiB {:?} vs 64 MiB {:?}", ours[1], ours[0]);
}

#[test]
fn refuses_missing_or_larger_backing_files() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.qcow2");
    let e = create_overlay(&d.path().join("missing"), &out, 1 << 30).unwrap_err();
    assert!(matches!(e, DiskError::Fs { .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    let base = d.path().join("base");
    sparse(&base, 128 << 20);
    let e = create_overlay(&base, &out, 64 << 20).unwrap_err();
    assert_eq!(e.to_string(), "disk size 64MB is smaller than the image (128MB): choose a --size of at least 128MB");
    assert!(create_overlay(d.path(), &out, 1 << 30).is_err(), "a directory as backing file");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary files left");
    if have("qemu-img") {
        let e = overlay_info(&d.path().join("nope.qcow2")).unwrap_err();
        assert!(matches!(e, DiskError::Tool { tool: "qemu-img", .. }) && e.to_string().contains("nope.qcow2"), "{e}");
    }
}
