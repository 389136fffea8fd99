use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

struct B {
    b: tar::Builder<Vec<u8>>,
}

impl B {
    fn new() -> B {
        B { b: tar::Builder::new(Vec::new()) }
    }
    fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Write the raw name so that `..` and absolute paths reach the applier unchanged.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h
    }
    fn file(mut self, path: &str, data: &[u8], mode: u32) -> B {
        let h = Self::header(path, tar::EntryType::Regular, data.len() as u64, mode);
        self.b.append(&h, data).unwrap();
        self
    }
    fn owned(mut self, path: &str, data: &[u8], uid: u64, gid: u64) -> B {
        let mut h = Self::header(path, tar::EntryType::Regular, data.len() as u64, 0o640);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    fn dir(mut self, path: &str, mode: u32) -> B {
        let h = Self::header(path, tar::EntryType::Directory, 0, mode);
        self.b.append(&h, &[][..]).unwrap();
        self
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> B {
        let mut h = Self::header(path, kind, 0, 0o777);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }
    fn dev(mut self, kind: tar::EntryType, path: &str, major: u32, minor: u32) -> B {
        let mut h = Self::header(path, kind, 0, 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.b.append(&h, &[][..]).unwrap();
        self
    }
    fn xattr_file(mut self, path: &str, key: &str, value: &[u8]) -> B {
        self.b.append_pax_extensions([(format!("SCHILY.xattr.{key}").as_str(), value)]).unwrap();
        self.file(path, b"x", 0o644)
    }
    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
    fn gz(self) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&self.bytes()).unwrap();
        e.finish().unwrap()
    }
}

/// A sandbox: `outside/` holds a canary, `root/` is the target.
struct Sandbox {
    _d: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().to_path_buf();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/canary"), b"untouched").unwrap();
        std::fs::create_dir_all(base.join("root")).unwrap();
        let root = base.join("root");
        Sandbox { _d: d, base, root }
    }
    fn apply(&self, layer: &[u8]) -> Result<String, OciError> {
        self.apply_opts(layer, &ApplyOptions::default())
    }
    fn apply_opts(&self, layer: &[u8], o: &ApplyOptions) -> Result<String, OciError> {
        apply_layer_reader(layer, &self.root, o, &mut ApplyStats::default())
    }
    /// Nothing outside root changed.
    fn outside_intact(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.base).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "something was created beside the root: {names:?}");
        assert_eq!(std::fs::read(self.base.join("outside/canary")).unwrap(), b"untouched");
        let n = std::fs::read_dir(self.base.join("outside")).unwrap().count();
        assert_eq!(n, 1, "something was created outside the root");
    }
}

#[test]
fn regular_tree_with_metadata() {
    let s = Sandbox::new();
    let layer = B::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .file("usr/bin/su", b"elf", 0o4755)
        .owned("home/u/f", b"mine", 1000, 1001)
        .dir("tmp", 0o1777)
        .link(tar::EntryType::Symlink, "bin", "usr/bin")
        .link(tar::EntryType::Link, "etc/passwd-hard", "etc/passwd")
        .dev(tar::EntryType::Char, "dev/null", 1, 3)
        .dev(tar::EntryType::Fifo, "run/fifo", 0, 0)
        .xattr_file("xf", "user.ignite", b"yes")
        .gz();
    let diff = s.apply(&layer).unwrap();
    assert!(diff.starts_with("sha256:"));
    let r = &s.root;
    assert_eq!(std::fs::read(r.join("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(std::fs::metadata(r.join("usr/bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755);
    let m = std::fs::metadata(r.join("home/u/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(std::fs::metadata(r.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_link(r.join("bin")).unwrap(), PathBuf::from("usr/bin"));
    assert_eq!(
        std::fs::metadata(r.join("etc/passwd-hard")).unwrap().ino(),
        std::fs::metadata(r.join("etc/passwd")).unwrap().ino()
    );
    let dn = std::fs::symlink_metadata(r.join("dev/null")).unwrap();
    assert_eq!(dn.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(std::fs::metadata(r.join("etc/passwd")).unwrap().mtime(), 1_600_000_000);
    s.outside_intact();
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let s = Sandbox::new();
    s.apply(
        &B::new()
            .file("a/keep", b"1", 0o644)
            .file("a/gone", b"2", 0o644)
            .file("b/x", b"3", 0o644)
            .file("c", b"4", 0o644)
            .bytes(),
    )
    .unwrap();
    s.apply(
        &B::new()
            .file("a/.wh.gone", b"", 0o644)
            .file("b/.wh..wh..opq", b"", 0o644)
            .file("b/new", b"5", 0o644)
            .file(".wh.c", b"", 0o644)
            .bytes(),
    )
    .unwrap();
    assert!(s.root.join("a/keep").exists());
    assert!(!s.root.join("a/gone").exists());
    assert!(!s.root.join("b/x").exists());
    assert!(s.root.join("b/new").exists());
    assert!(!s.root.join("c").exists());
    // A whiteout cannot reach outside.
    assert!(s.apply(&B::new().file("a/.wh...", b"", 0o644).bytes()).is_err());
    s.outside_intact();
}

#[test]
fn dotdot_paths_are_refused() {
    let s = Sandbox::new();
    let e = s.apply(&B::new().file("../../outside/canary", b"pwned", 0o644).bytes()).unwrap_err();
    assert!(matches!(e, OciError::UnsafeEntry { .. }), "{e}");
    assert!(e.to_string().contains(".."));
    let e = s.apply(&B::new().file("a/../../outside/x", b"pwned", 0o644).bytes()).unwrap_err();
    assert!(matches!(e, OciError::UnsafeEntry { .. }), "{e}");
    s.outside_intact();
}

#[test]
fn absolute_paths_stay_inside() {
    let s = Sandbox::new();
    let abs = format!("{}/outside/abs", s.base.display());
    s.apply(&B::new().file(&abs, b"in", 0o644).bytes()).unwrap();
    assert_eq!(std::fs::read(s.root.join(abs.trim_start_matches('/'))).unwrap(), b"in");
    s.outside_intact();
}

#[test]
fn symlinked_parents_cannot_escape() {
    let s = Sandbox::new();
    let outside = s.base.join("outside");
    for target in [outside.to_string_lossy().into_owned(), "../outside".into(), "../../../../..".into(), "/".into()] {
        let layer = B::new()
            .link(tar::EntryType::Symlink, "evil", &target)
            .file("evil/canary", b"pwned", 0o644)
            .file("evil/new", b"x", 0o644)
            .bytes();
        let _ = s.apply(&layer);
        s.outside_intact();
        let _ = std::fs::remove_dir_all(&s.root);
        std::fs::create_dir_all(&s.root).unwrap();
    }
    // Symlink planted in an earlier layer, used in a later one.
    s.apply(&B::new().link(tar::EntryType::Symlink, "etc", &outside.to_string_lossy()).bytes()).unwrap();
    let _ = s.apply(&B::new().file("etc/canary", b"pwned", 0o644).bytes());
    s.outside_intact();
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let s = Sandbox::new();
    let canary = s.base.join("outside/canary");
    // Absolute target: resolved inside the root, where it does not exist.
    assert!(s.apply(&B::new().link(tar::EntryType::Link, "h", &canary.to_string_lossy()).bytes()).is_err());
    assert!(s.apply(&B::new().link(tar::EntryType::Link, "h", "../outside/canary").bytes()).is_err());
    // Through a symlink to outside.
    let layer = B::new()
        .link(tar::EntryType::Symlink, "out", &s.base.join("outside").to_string_lossy())
        .link(tar::EntryType::Link, "h2", "out/canary")
        .bytes();
    assert!(s.apply(&layer).is_err());
    assert_eq!(std::fs::metadata(&canary).unwrap().nlink(), 1, "the canary gained a link");
    s.outside_intact();
}

#[test]
fn size_bomb_is_bounded() {
    let s = Sandbox::new();
    let o = ApplyOptions { max_total_bytes: 1 << 20, max_entries: 100 };
    let big = vec![0u8; 2 << 20];
    let e = s.apply_opts(&B::new().file("bomb", &big, 0o644).gz(), &o).unwrap_err();
    assert!(matches!(e, OciError::TooLarge { .. }), "{e}");
    // Entry count too.
    let mut b = B::new();
    for i in 0..200 {
        b = b.file(&format!("f{i}"), b"", 0o644);
    }
    assert!(matches!(s.apply_opts(&b.bytes(), &o), Err(OciError::TooLarge { .. })));
    s.outside_intact();
}

#[test]
fn sparse_zero_runs_become_holes() {
    let s = Sandbox::new();
    let mut data = vec![0u8; 8 << 20];
    data[0] = 1;
    s.apply(&B::new().file("sparse", &data, 0o644).gz()).unwrap();
    let m = std::fs::metadata(s.root.join("sparse")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 < 1 << 20, "holes were materialized: {} bytes", m.blocks() * 512);
}

#[test]
fn truncated_and_garbage_input() {
    let s = Sandbox::new();
    let gz = B::new().file("a", &[7u8; 100_000], 0o644).gz();
    assert!(s.apply(&gz[..gz.len() / 2]).is_err());
    let plain = B::new().file("a", &[7u8; 100_000], 0o644).bytes();
    assert!(s.apply(&plain[..700]).is_err());
    assert!(s.apply(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]).unwrap_err().to_string().contains("zstd"));
    s.outside_intact();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_bytes_never_escape(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), cut in 0usize..4096) {
        let s = Sandbox::new();
        let _ = s.apply(&data);
        // Garbled real archives too.
        let mut t = B::new().link(tar::EntryType::Symlink, "l", "/").file("l/x", b"1", 0o644).file("d/y", b"2", 0o644).bytes();
        let cut = cut % t.len();
        for (i, b) in data.iter().enumerate().take(64) {
            let at = (cut + i * 37) % t.len();
            t[at] ^= b;
        }
        let _ = s.apply(&t);
        s.outside_intact();
    }
}
