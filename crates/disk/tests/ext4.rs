//! ext4 images from trees, size-class bases: checked with debugfs and e2fsck, never mounted.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use ignite_disk::{build_ext4, fs_size, grow_ext4, size_class_base, DiskError, Ext4Options};

const MIB: u64 = 1 << 20;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn small_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/motd"), b"hello\n").unwrap();
}

#[test]
fn keeps_owners_modes_links_special_files_and_xattrs() {
    if !have("mke2fs") || !have("debugfs") {
        skip!("e2fsprogs missing (apt-get install e2fsprogs)");
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/tool"), vec![7u8; 10_000]).unwrap();
    chmod(&root.join("bin/tool"), 0o4755);
    std::fs::write(root.join("secret"), b"s").unwrap();
    chmod(&root.join("secret"), 0o600);
    std::fs::create_dir(root.join("home")).unwrap();
    chmod(&root.join("home"), 0o750);
    let root_user = is_root();
    if root_user {
        std::os::unix::fs::chown(root.join("secret"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(root.join("home"), Some(1000), Some(1000)).unwrap();
    }
    std::os::unix::fs::symlink("bin/tool", root.join("link")).unwrap();
    let long_target = format!("/{}", "t".repeat(120));
    std::os::unix::fs::symlink(&long_target, root.join("longlink")).unwrap();
    std::fs::hard_link(root.join("bin/tool"), root.join("hard")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), rustix::fs::FileType::Fifo, 0o640.into(), 0).unwrap();
    if root_user {
        let dev = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null"),
            rustix::fs::FileType::CharacterDevice,
            0o666.into(),
            dev,
        )
        .unwrap();
    }
    let xattr = rustix::fs::setxattr(root.join("bin/tool"), "user.ignite", b"hello", rustix::fs::XattrFlags::empty());
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    std::fs::File::options().write(true).open(root.join("secret")).unwrap().set_modified(old).unwrap();
    chmod(&root, 0o750);

    let img = d.path().join("img.ext4");
    let info =
        build_ext4(&root, &img, &Ext4Options { label: Some("ignite-test".into()), ..Default::default() }).unwrap();
    assert_eq!(info.size_bytes % MIB, 0);
    assert!(info.size_bytes >= 64 * MIB);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), info.size_bytes);
    assert!(info.content_bytes >= 12 * 1024, "{info:?}");
    assert!(info.inodes >= info.size_bytes / 16384, "{info:?}");

    let stat = debugfs(&img, "stat /secret");
    assert_eq!(field(&stat, "Mode:"), "0600", "{stat}");
    assert!(stat.contains("mtime: 0x3a4fc880"), "mtime kept: {stat}");
    if root_user {
        assert_eq!((field(&stat, "User:"), field(&stat, "Group:")), ("1000", "1000"), "{stat}");
        let home = debugfs(&img, "stat /home");
        assert_eq!((field(&home, "User:"), field(&home, "Mode:")), ("1000", "0750"), "{home}");
        let null = debugfs(&img, "stat /null");
        assert!(
            null.contains("Type: character special") && null.contains("Device major/minor number: 01:03"),
            "{null}"
        );
    }
    let tool = debugfs(&img, "stat /bin/tool");
    assert_eq!((field(&tool, "Mode:"), field(&tool, "Links:")), ("04755", "2"), "{tool}");
    assert_eq!(field(&tool, "Inode:"), field(&debugfs(&img, "stat /hard"), "Inode:"), "a hardlink, not a copy");
    assert!(debugfs(&img, "stat /link").contains("Fast link dest: \"bin/tool\""));
    assert_eq!(debugfs(&img, "cat /longlink"), long_target, "slow symlink");
    let fifo = debugfs(&img, "stat /fifo");
    assert!(fifo.contains("Type: FIFO") && field(&fifo, "Mode:") == "0640", "{fifo}");
    if xattr.is_ok() {
        assert!(debugfs(&img, "ea_list /bin/tool").contains("user.ignite (5) = \"hello\""));
    } else {
        println!("note: the host filesystem refused user xattrs; xattr check skipped");
    }
    let top = debugfs(&img, "stat /");
    assert_eq!((field(&top, "User:"), field(&top, "Mode:")), ("0", "0750"), "{top}");
    let ls = debugfs(&img, "ls -l /");
    for name in ["bin", "secret", "home", "link", "longlink", "hard", "fifo", "lost+found"] {
        assert!(ls.contains(name), "{name} missing from {ls}");
    }
    assert!(run(std::process::Command::new("dumpe2fs").arg("-h").arg(&img)).contains("ignite-test"));
    assert_fsck_clean(&img);
    // No temporary file left beside the image.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
}

#[test]
fn busybox_tree_builds_quickly() {
    if !have("mke2fs") || !Path::new("/bin/busybox").is_file() {
        skip!("e2fsprogs or /bin/busybox missing (apt-get install e2fsprogs busybox-static)");
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    busybox_tree(&root);
    let img = d.path().join("bb.ext4");
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let info = build_ext4(&root, &img, &Ext4Options::default()).unwrap();
        times.push(t.elapsed());
        assert!(info.size_bytes >= 64 * MIB);
    }
    let info = build_ext4(&root, &img, &Ext4Options::default()).unwrap();
    println!(
        "FIGURE build_ext4 busybox tree ({} entries, content {} KiB) -> {} MiB image: median {:?} of 5",
        std::fs::read_dir(root.join("bin")).unwrap().count(),
        info.content_bytes / 1024,
        info.size_bytes / MIB,
        median(times.clone())
    );
    assert_fsck_clean(&img);
    assert!(median(times) < Duration::from_secs(5));
}

#[test]
fn rejects_bad_input_with_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let e = build_ext4(&d.path().join("missing"), &d.path().join("x"), &Ext4Options::default()).unwrap_err();
    assert!(matches!(e, DiskError::Fs { .. }), "{e}");
    std::fs::write(d.path().join("file"), b"").unwrap();
    let e = build_ext4(&d.path().join("file"), &d.path().join("x"), &Ext4Options::default()).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    let root = d.path().join("root");
    small_tree(&root);
    let long = Ext4Options { label: Some("x".repeat(17)), ..Default::default() };
    assert!(build_ext4(&root, &d.path().join("x"), &long).unwrap_err().to_string().contains("16 bytes"));
    assert!(!d.path().join("x").exists());
}

#[test]
fn grow_keeps_holes_and_refuses_shrinking() {
    if !have("resize2fs") {
        skip!("e2fsprogs missing (apt-get install e2fsprogs)");
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    small_tree(&root);
    let base = d.path().join("base.ext4");
    let info = build_ext4(&root, &base, &Ext4Options::default()).unwrap();
    let before = std::fs::read(&base).unwrap();
    let grown = d.path().join("grown.ext4");
    let t = Instant::now();
    grow_ext4(&base, &grown, 4 << 30).unwrap();
    println!("FIGURE grow_ext4 {} MiB -> 4 GiB: {:?}", info.size_bytes / MIB, t.elapsed());
    assert_eq!(fs_size(&grown).unwrap(), 4 << 30);
    assert_eq!(std::fs::metadata(&grown).unwrap().len(), 4 << 30);
    assert!(allocated(&grown) < 64 * MIB, "holes kept: {} bytes allocated", allocated(&grown));
    assert_eq!(debugfs(&grown, "cat /etc/motd"), "hello\n");
    assert_fsck_clean(&grown);
    assert_eq!(std::fs::read(&base).unwrap(), before, "the base changed");

    // Not a multiple of the block size: rounded down, never above the disk.
    let odd = d.path().join("odd.ext4");
    grow_ext4(&base, &odd, 100 * MIB + 1000).unwrap();
    assert_eq!(fs_size(&odd).unwrap(), 100 * MIB);

    // A base that looks mounted since its last check: resize2fs asks for e2fsck first.
    let used = d.path().join("used.ext4");
    std::fs::copy(&base, &used).unwrap();
    for req in ["ssv mtime 20300101", "ssv lastcheck 20200101"] {
        run(std::process::Command::new("debugfs").args(["-w", "-R", req]).arg(&used));
    }
    grow_ext4(&used, &d.path().join("used-grown.ext4"), 128 * MIB).unwrap();
    assert_eq!(fs_size(&d.path().join("used-grown.ext4")).unwrap(), 128 * MIB);

    let e = grow_ext4(&base, &d.path().join("small.ext4"), 16 * MIB).unwrap_err();
    assert!(matches!(e, DiskError::TooSmall { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "disk size 16MB is smaller than the image ({}MB): choose a --size of at least {}MB",
            info.size_bytes / MIB,
            info.size_bytes / MIB
        )
    );
    assert!(!d.path().join("small.ext4").exists());
}

#[test]
fn size_class_is_built_once_for_concurrent_callers() {
    if !have("resize2fs") {
        skip!("e2fsprogs missing (apt-get install e2fsprogs)");
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    small_tree(&root);
    let image_dir = d.path().join("image");
    std::fs::create_dir(&image_dir).unwrap();
    let base = image_dir.join("base.ext4");
    build_ext4(&root, &base, &Ext4Options::default()).unwrap();
    let before = std::fs::read(&base).unwrap();
    // A crashed builder's leftover.
    let stale = image_dir.join(".base-256M.ext4.tmp-999999-0");
    std::fs::write(&stale, b"junk").unwrap();

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (dir, base, barrier) = (image_dir.clone(), base.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let p = size_class_base(&dir, &base, 256 * MIB).unwrap();
                let ino = std::fs::metadata(&p).unwrap().ino();
                (p, ino)
            })
        })
        .collect();
    let outs: Vec<(PathBuf, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(outs[0].0, image_dir.join("base-256M.ext4"));
    assert!(outs.iter().all(|o| *o == outs[0]), "one build, one file: {outs:?}");
    assert_eq!(fs_size(&outs[0].0).unwrap(), 256 * MIB);
    assert_eq!(std::fs::read(&base).unwrap(), before, "the base changed");
    let names: Vec<String> =
        std::fs::read_dir(&image_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, [".size-class.lock", "base-256M.ext4", "base.ext4"], "no temporary files left");

    // A later call returns the same file without rebuilding it.
    let again = size_class_base(&image_dir, &base, 256 * MIB).unwrap();
    assert_eq!(std::fs::metadata(&again).unwrap().ino(), outs[0].1);
    // Sizes that are not whole MiB get their own name, and a filesystem that fits the disk.
    let odd = size_class_base(&image_dir, &base, 256 * MIB + 1000).unwrap();
    assert_eq!(odd, image_dir.join(format!("base-{}.ext4", 256 * MIB + 1000)));
    assert_eq!(fs_size(&odd).unwrap(), 256 * MIB);
    assert!(matches!(size_class_base(&image_dir, &base, 16 * MIB), Err(DiskError::TooSmall { .. })));
}
