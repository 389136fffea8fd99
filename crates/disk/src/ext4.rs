//! ext4 images from directory trees (`mke2fs -d`), and size-class bases (`resize2fs`).

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, run_tool, DiskError};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// How to size a new ext4 image.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    pub min_size: u64,
    pub headroom_percent: u64,
    pub extra_bytes: u64,
    pub label: Option<String>,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options { min_size: 64 * MIB, headroom_percent: 20, extra_bytes: 64 * MIB, label: None }
    }
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    pub size_bytes: u64,
    pub content_bytes: u64,
    pub inodes: u64,
}

/// Space the tree needs: blocks of regular files (hardlinks once), directories, symlinks.
fn tree_usage(root: &Path) -> Result<(u64, u64), DiskError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
        for e in rd {
            let e = e.map_err(io_err(&dir))?;
            let m = std::fs::symlink_metadata(e.path()).map_err(io_err(e.path()))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            inodes += 1;
            bytes += 256; // inode
            if m.is_dir() {
                bytes += BLOCK;
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len().div_ceil(BLOCK) * BLOCK;
            } else if m.file_type().is_symlink() && m.len() > 60 {
                bytes += BLOCK;
            }
        }
    }
    Ok((bytes, inodes))
}

fn tmp_beside(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    out.with_file_name(name)
}

/// Builds an ext4 filesystem image at `out` holding the tree at `rootfs`, without mounting.
pub fn build_ext4(rootfs: &Path, out: &Path, opts: &Ext4Options) -> Result<Ext4Info, DiskError> {
    let (content, files) = tree_usage(rootfs)?;
    let with_room = content + content * opts.headroom_percent / 100 + opts.extra_bytes;
    let size = with_room.max(opts.min_size).div_ceil(MIB) * MIB;
    // One inode per 16 KiB of disk is mke2fs's default ratio; make sure the tree fits twice.
    let inodes = (files * 2 + 1024).max(size / 16384);
    let tmp = tmp_beside(out);
    let _ = std::fs::remove_file(&tmp);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-E", "root_owner=0:0", "-N"])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(rootfs);
    if let Some(l) = &opts.label {
        cmd.arg("-L").arg(l);
    }
    cmd.arg(&tmp).arg(format!("{}k", size / 1024));
    if let Err(e) = run_tool("mke2fs", "e2fsprogs", &tmp, &mut cmd) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(Ext4Info { size_bytes: size, content_bytes: content, inodes })
}

/// Size of the ext4 filesystem in `path` (block count × block size), read with dumpe2fs.
pub fn fs_size(path: &Path) -> Result<u64, DiskError> {
    let out = run_tool("dumpe2fs", "e2fsprogs", path, Command::new("dumpe2fs").arg("-h").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).and_then(|v| v.trim().parse().ok())
    };
    match (field("Block count"), field("Block size")) {
        (Some(c), Some(s)) => Ok(c * s),
        _ => Err(DiskError::Parse { tool: "dumpe2fs", message: "no block count/size".into() }),
    }
}

/// Copies `base` to `out` keeping holes, and grows its filesystem to `size` bytes.
pub fn grow_ext4(base: &Path, out: &Path, size: u64) -> Result<(), DiskError> {
    let have = fs_size(base)?;
    if size < have {
        return Err(DiskError::TooSmall { want: size, have, have_mb: have.div_ceil(MIB) });
    }
    let tmp = tmp_beside(out);
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        run_tool(
            "cp",
            "coreutils",
            &tmp,
            Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(base).arg(&tmp),
        )?;
        if size > have {
            // resize2fs wants a checked filesystem; a fresh mke2fs image is clean.
            run_tool("e2fsck", "e2fsprogs", &tmp, Command::new("e2fsck").args(["-f", "-p"]).arg(&tmp))?;
            run_tool(
                "resize2fs",
                "e2fsprogs",
                &tmp,
                Command::new("resize2fs").arg(&tmp).arg(format!("{}K", size / 1024)),
            )?;
        }
        std::fs::rename(&tmp, out).map_err(io_err(out))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The base of `size` bytes for the image in `image_dir` (built from `base` once; concurrent
/// callers wait for the first).
pub fn size_class_base(image_dir: &Path, base: &Path, size: u64) -> Result<PathBuf, DiskError> {
    let size = size.div_ceil(MIB) * MIB;
    let out = image_dir.join(format!("base-{}M.ext4", size / MIB));
    if out.is_file() {
        return Ok(out);
    }
    let lock_path = image_dir.join(".size-class.lock");
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    if !out.is_file() {
        grow_ext4(base, &out, size)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn debugfs(img: &Path, req: &str) -> String {
        let o = Command::new("debugfs").arg("-R").arg(req).arg(img).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    #[test]
    fn builds_tree_with_owners_modes_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/tool"), vec![7u8; 10_000]).unwrap();
        std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(root.join("secret"), b"s").unwrap();
        std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(root.join("secret"), Some(1000), Some(1000)).unwrap();
        symlink("bin/tool", root.join("link")).unwrap();
        std::fs::hard_link(root.join("bin/tool"), root.join("hard")).unwrap();
        let img = d.path().join("img.ext4");
        let info = build_ext4(&root, &img, &Ext4Options::default()).unwrap();
        assert!(info.size_bytes >= 64 * MIB);
        let stat = debugfs(&img, "stat /secret");
        assert!(stat.contains("User:  1000") && stat.contains("Mode:  0600"), "{stat}");
        let stat = debugfs(&img, "stat /bin/tool");
        assert!(stat.contains("Mode:  04755") && stat.contains("Links: 2"), "{stat}");
        assert!(debugfs(&img, "stat /link").contains("Fast link dest: \"bin/tool\""));
        let fsck = Command::new("e2fsck").args(["-f", "-n"]).arg(&img).output().unwrap();
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    }

    #[test]
    fn size_classes_grow_once_and_refuse_shrinking() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        let base = d.path().join("base.ext4");
        build_ext4(&root, &base, &Ext4Options::default()).unwrap();
        let before = std::fs::read(&base).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (dir, base) = (d.path().to_path_buf(), base.clone());
                std::thread::spawn(move || size_class_base(&dir, &base, 256 * MIB).unwrap())
            })
            .collect();
        let outs: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(outs.iter().all(|o| *o == outs[0]));
        assert_eq!(fs_size(&outs[0]).unwrap(), 256 * MIB);
        assert_eq!(std::fs::read(&base).unwrap(), before, "the base changed");
        assert!(matches!(size_class_base(d.path(), &base, 16 * MIB), Err(DiskError::TooSmall { .. })));
    }
}
