//! ext4 images from directory trees (`mke2fs -d`), and size-class bases (`resize2fs`).
//!
//! Owns: sizing an image for a tree, running e2fsprogs, and the `base-<N>M.ext4` files of an
//! image directory.
//!
//! - [`build_ext4`] measures the tree (lstat walk: file sizes rounded up to 4 KiB blocks,
//!   directory blocks from their entries, long symlinks, one inode each, hardlinks once), adds
//!   the filesystem's own overhead (journal, inode tables, group metadata) and the headroom of
//!   [`Ext4Options`], and runs `mke2fs -q -t ext4 -d ROOTFS -F -E root_owner=0:0 -b 4096
//!   -N INODES OUT SIZE`. `mke2fs -d` (e2fsprogs 1.47) keeps owners, modes (setuid included),
//!   xattrs (`security.capability`, `user.*`), device nodes, fifos, sockets, symlinks,
//!   hardlinks and mtimes: the tests check each with `debugfs`, without mounting. It does not
//!   copy the mode of the tree's top directory, so that is set afterwards with `debugfs -w`
//!   when it is not 0755.
//! - The inode count never falls below mke2fs's default ratio (one per 16 KiB): `resize2fs`
//!   keeps the inodes-per-group of the base, so a base with few inodes would give every VM
//!   grown from it too few.
//! - [`grow_ext4`] copies a base keeping its holes ([`crate::copy_sparse`]: `std::fs::copy`
//!   allocated all 1 GiB of a sparse base here and took 4.4 s, `cp --sparse=always` 8 ms) and
//!   grows the copy with `resize2fs`, running `e2fsck -f -p` first only when resize2fs asks.
//! - [`size_class_base`] builds `base-<N>M.ext4` once per size under a lock file.
//!
//! The filesystem of a size class is never larger than the disk it is for: sizes are rounded
//! down to whole 4 KiB blocks.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{fs_err, run_tool, run_tool_ok, DiskError, TmpFile};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
/// mke2fs's default bytes-per-inode ratio for ext4.
const BYTES_PER_INODE: u64 = 16384;
const INODE_SIZE: u64 = 256;

/// How to size a new ext4 image: `content + content × headroom_percent / 100 + extra_bytes`
/// plus the filesystem's own metadata, at least `min_size`, rounded up to 1 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Options {
    pub min_size: u64,
    pub headroom_percent: u64,
    pub extra_bytes: u64,
    /// Volume label (at most 16 bytes).
    pub label: Option<String>,
}

impl Default for Ext4Options {
    /// 20% + 64 MiB of headroom, at least 64 MiB.
    fn default() -> Self {
        Ext4Options { min_size: 64 * MIB, headroom_percent: 20, extra_bytes: 64 * MIB, label: None }
    }
}

/// What [`build_ext4`] built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// Size of the image file (and of its filesystem).
    pub size_bytes: u64,
    /// The space the tree needs in ext4: data and directory blocks plus its inodes.
    pub content_bytes: u64,
    /// Inodes of the new filesystem.
    pub inodes: u64,
}

/// The space a tree takes in ext4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Usage {
    bytes: u64,
    inodes: u64,
}

/// Bytes a directory's entries take: `.` and `..`, then 8 bytes + the name padded to 4.
fn dir_bytes(names: impl Iterator<Item = usize>) -> u64 {
    let entries: u64 = names.map(|n| 8 + (n as u64).div_ceil(4) * 4).sum();
    // 12 bytes of each block hold the checksum tail; an indexed (htree) directory needs an
    // index block beyond the first.
    let blocks = (24 + entries).div_ceil(BLOCK - 12).max(1);
    (if blocks > 1 { blocks + 1 } else { blocks }) * BLOCK
}

fn tree_usage(root: &Path) -> Result<Usage, DiskError> {
    let m = std::fs::symlink_metadata(root).map_err(fs_err("read", root))?;
    if !m.is_dir() {
        return Err(DiskError::Invalid {
            what: "root filesystem tree",
            value: root.display().to_string(),
            reason: "not a directory".into(),
        });
    }
    let mut u = Usage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        u.inodes += 1;
        u.bytes += INODE_SIZE;
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(fs_err("read directory", &dir))? {
            let e = e.map_err(fs_err("read directory", &dir))?;
            names.push(e.file_name().len());
            let path = e.path();
            let m = std::fs::symlink_metadata(&path).map_err(fs_err("read", &path))?;
            if m.is_dir() {
                stack.push(path);
                continue;
            }
            if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                continue; // another name of an inode already counted
            }
            u.inodes += 1;
            u.bytes += INODE_SIZE;
            if m.is_file() {
                u.bytes += m.len().div_ceil(BLOCK) * BLOCK;
            } else if m.file_type().is_symlink() && m.len() >= 60 {
                // Shorter targets live in the inode ("fast" symlinks).
                u.bytes += BLOCK;
            }
        }
        u.bytes += dir_bytes(names.into_iter());
    }
    // lost+found: four blocks and an inode.
    u.bytes += 4 * BLOCK + INODE_SIZE;
    u.inodes += 1;
    Ok(u)
}

/// mke2fs's default journal size for a filesystem of `size` bytes (4 KiB blocks).
fn journal_bytes(size: u64) -> u64 {
    let blocks = size / BLOCK;
    let j = match blocks {
        0..32_768 => 1024,
        32_768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16_384,
        4_194_304..8_388_608 => 32_768,
        8_388_608..16_777_216 => 65_536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    };
    j * BLOCK
}

/// Image size and inode count for a tree: content plus headroom plus the filesystem's
/// metadata (journal, inode tables, ~2% for bitmaps, group descriptors and their backups).
fn plan(u: Usage, opts: &Ext4Options) -> (u64, u64) {
    let wanted = u.bytes + u.bytes / 100 * opts.headroom_percent + opts.extra_bytes;
    let min_inodes = u.inodes + u.inodes / 4 + 1024;
    let mut size = wanted.max(opts.min_size);
    let mut inodes = min_inodes;
    // The overhead grows with the size; three rounds converge.
    for _ in 0..3 {
        inodes = min_inodes.max(size / BYTES_PER_INODE);
        let overhead = journal_bytes(size) + inodes * INODE_SIZE + size / 50;
        size = (wanted + overhead).max(opts.min_size).div_ceil(MIB) * MIB;
    }
    (size, inodes.max(size / BYTES_PER_INODE))
}

/// Builds an ext4 filesystem image at `out` holding the tree at `rootfs`, without mounting.
///
/// `out` appears whole or not at all. The tree's top directory becomes the filesystem's root
/// (owned by 0:0, with the tree's mode).
pub fn build_ext4(rootfs: &Path, out: &Path, opts: &Ext4Options) -> Result<Ext4Info, DiskError> {
    if let Some(l) = &opts.label {
        if l.len() > 16 {
            return Err(DiskError::Invalid { what: "ext4 label", value: l.clone(), reason: "at most 16 bytes".into() });
        }
    }
    let usage = tree_usage(rootfs)?;
    let (size, inodes) = plan(usage, opts);
    let tmp = TmpFile::beside(out);
    let started = std::time::Instant::now();
    let size = match mke2fs(rootfs, tmp.path(), opts, size, inodes) {
        Ok(()) => size,
        Err(DiskError::Tool { stderr, .. }) if out_of_space(&stderr) => {
            // The estimate fell short (xattr blocks, extent blocks of fragmented files):
            // once more with twice the room.
            tracing::warn!(rootfs = %rootfs.display(), size, inodes, %stderr, "ext4 image too small; retrying with twice the size");
            mke2fs(rootfs, tmp.path(), opts, size * 2, inodes * 2)?;
            size * 2
        }
        Err(e) => return Err(e),
    };
    let root_mode = std::fs::metadata(rootfs).map_err(fs_err("read", rootfs))?.permissions().mode() & 0o7777;
    if root_mode != 0o755 {
        run_tool(
            "debugfs",
            "e2fsprogs",
            tmp.path(),
            Command::new("debugfs")
                .arg("-w")
                .arg("-R")
                .arg(format!("sif / mode 0{:o}", 0o040000 | root_mode))
                .arg(tmp.path()),
        )?;
    }
    let info = fs_info(tmp.path())?;
    tmp.commit(out)?;
    tracing::debug!(rootfs = %rootfs.display(), out = %out.display(), size, elapsed = ?started.elapsed(), "built ext4 image");
    Ok(Ext4Info { size_bytes: size, content_bytes: usage.bytes, inodes: info.inodes })
}

fn out_of_space(stderr: &str) -> bool {
    ["Could not allocate", "No space left", "No free space", "no free"].iter().any(|s| stderr.contains(s))
}

fn mke2fs(rootfs: &Path, tmp: &Path, opts: &Ext4Options, size: u64, inodes: u64) -> Result<(), DiskError> {
    let _ = std::fs::remove_file(tmp);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-t", "ext4", "-d"])
        .arg(rootfs)
        .args(["-F", "-E", "root_owner=0:0", "-b", "4096", "-N"])
        .arg(inodes.to_string());
    if let Some(l) = &opts.label {
        cmd.arg("-L").arg(l);
    }
    cmd.arg(tmp).arg(format!("{}k", size / 1024));
    run_tool("mke2fs", "e2fsprogs", tmp, &mut cmd).map(|_| ())
}

/// An empty ext4 file system of `size` bytes at `out` (sparse: a few MiB of metadata whatever
/// the size; tens of milliseconds), appearing whole or not at all: a VM's own writable layer
/// when its root is the image's read-only base under overlayfs.
pub fn empty_ext4(out: &Path, size: u64, label: &str) -> Result<(), DiskError> {
    if size < 16 * MIB {
        return Err(DiskError::Invalid {
            what: "writable layer size",
            value: size.to_string(),
            reason: "at least 16 MiB".into(),
        });
    }
    let tmp = TmpFile::beside(out);
    let mut cmd = Command::new("mke2fs");
    // Lazy inode tables and journal: the guest kernel initialises them in the background.
    cmd.args(["-q", "-t", "ext4", "-F", "-m", "0", "-b", "4096", "-L", label])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0"])
        .arg(tmp.path())
        .arg(format!("{}k", size / 1024));
    run_tool("mke2fs", "e2fsprogs", tmp.path(), &mut cmd)?;
    tmp.commit(out)
}

/// Superblock figures of an ext4 image.
#[derive(Debug, Clone, Copy)]
struct FsInfo {
    bytes: u64,
    inodes: u64,
}

fn fs_info(path: &Path) -> Result<FsInfo, DiskError> {
    let out = run_tool("dumpe2fs", "e2fsprogs", path, Command::new("dumpe2fs").arg("-h").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64, DiskError> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| DiskError::Parse {
                tool: "dumpe2fs",
                path: path.to_path_buf(),
                message: format!("no {name:?} in the superblock (is this an ext4 image?)"),
            })
    };
    Ok(FsInfo { bytes: field("Block count")? * field("Block size")?, inodes: field("Inode count")? })
}

/// Size in bytes of the ext4 filesystem in `path` (block count × block size, from its
/// superblock).
pub fn fs_size(path: &Path) -> Result<u64, DiskError> {
    Ok(fs_info(path)?.bytes)
}

/// Copies `base` to `out` keeping holes, and grows the copy's filesystem to `size` bytes
/// (rounded down to whole 4 KiB blocks). `out` appears whole or not at all; `base` is only
/// read.
pub fn grow_ext4(base: &Path, out: &Path, size: u64) -> Result<(), DiskError> {
    let have = fs_size(base)?;
    let want = size / BLOCK * BLOCK;
    if want < have {
        return Err(DiskError::TooSmall { path: base.to_path_buf(), want: size, have });
    }
    let tmp = TmpFile::beside(out);
    crate::copy_sparse(base, tmp.path()).map_err(|source| DiskError::Io { path: base.to_path_buf(), source })?;
    if want > have {
        let resize = || {
            run_tool(
                "resize2fs",
                "e2fsprogs",
                tmp.path(),
                Command::new("resize2fs").arg(tmp.path()).arg(format!("{}K", want / 1024)),
            )
        };
        match resize() {
            Err(DiskError::Tool { stderr, .. }) if stderr.contains("e2fsck") => {
                // resize2fs wants a freshly checked filesystem (a base that was mounted or
                // never checked): check and repair the copy, then again. e2fsck exits 1
                // when it fixed something.
                run_tool_ok(
                    "e2fsck",
                    "e2fsprogs",
                    tmp.path(),
                    Command::new("e2fsck").args(["-f", "-p"]).arg(tmp.path()),
                    &[1],
                )?;
                resize()?;
            }
            r => {
                r?;
            }
        }
    }
    tmp.commit(out)
}

/// The base of the size class `size` for the image in `image_dir`:
/// `image_dir/base-<N>M.ext4` (`base-<bytes>.ext4` for sizes that are not whole MiB), grown
/// from `base` by [`grow_ext4`] on first use. Concurrent callers, threads or processes, wait
/// for the first (lock file `image_dir/.size-class.lock`); a half-built base is never
/// visible.
pub fn size_class_base(image_dir: &Path, base: &Path, size: u64) -> Result<PathBuf, DiskError> {
    let name =
        if size.is_multiple_of(MIB) { format!("base-{}M.ext4", size / MIB) } else { format!("base-{size}.ext4") };
    let out = image_dir.join(name);
    if out.is_file() {
        return Ok(out);
    }
    let lock_path = image_dir.join(".size-class.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(fs_err("open the lock file", &lock_path))?;
    lock.lock().map_err(fs_err("lock", &lock_path))?;
    if out.is_file() {
        return Ok(out); // built while we waited
    }
    // Leftovers of a builder that died: nobody else builds this file while we hold the lock.
    let prefix = ignite_proc::temp::prefix(&out);
    if let Ok(rd) = std::fs::read_dir(image_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let started = std::time::Instant::now();
    grow_ext4(base, &out, size)?;
    tracing::debug!(base = %out.display(), elapsed = ?started.elapsed(), "built size-class base");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_content_metadata_and_headroom() {
        let opts = Ext4Options::default();
        let (size, inodes) = plan(Usage { bytes: 10 * MIB, inodes: 500 }, &opts);
        assert_eq!(size % MIB, 0);
        assert!(size >= 10 * MIB + 2 * MIB + 64 * MIB + journal_bytes(size), "{size}");
        assert!(inodes >= size / BYTES_PER_INODE && inodes >= 500);
        // Large trees: the journal and inode tables are counted.
        let (size, inodes) = plan(Usage { bytes: 3 << 30, inodes: 200_000 }, &opts);
        assert!(size >= (3u64 << 30) * 120 / 100 + 64 * MIB + journal_bytes(size) + inodes * INODE_SIZE);
        // The minimum wins for small trees.
        let (size, _) = plan(Usage { bytes: 4096, inodes: 3 }, &Ext4Options { min_size: 200 * MIB, ..opts });
        assert_eq!(size, 200 * MIB);
    }

    #[test]
    fn directory_blocks_follow_their_entries() {
        assert_eq!(dir_bytes([1usize, 2, 3].into_iter()), BLOCK);
        // 1000 entries of 20-byte names: 28 bytes each.
        assert_eq!(dir_bytes(std::iter::repeat_n(20, 1000)), 8 * BLOCK);
    }

    /// The estimate alone (no retry, no headroom) must hold trees of many small files, long
    /// symlinks and big directories.
    #[test]
    fn estimate_without_headroom_is_enough() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        for i in 0..40 {
            let sub = root.join(format!("dir-with-a-fairly-long-name-{i:03}"));
            std::fs::create_dir_all(&sub).unwrap();
            for j in 0..100 {
                std::fs::write(sub.join(format!("file-{j:05}-{}", "x".repeat(40))), b"x").unwrap();
            }
            std::os::unix::fs::symlink("t".repeat(200), sub.join("long-link")).unwrap();
        }
        std::fs::write(root.join("big"), vec![1u8; 3 << 20]).unwrap();
        let u = tree_usage(&root).unwrap();
        let opts = Ext4Options { min_size: 0, headroom_percent: 0, extra_bytes: 0, label: None };
        let (size, inodes) = plan(u, &opts);
        let img = d.path().join("img");
        mke2fs(&root, &img, &opts, size, inodes).unwrap();
        let fsck = Command::new("e2fsck").args(["-fn"]).arg(&img).output().unwrap();
        assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
        // ... and not be wildly generous either.
        let sb = String::from_utf8_lossy(&Command::new("dumpe2fs").arg("-h").arg(&img).output().unwrap().stdout)
            .into_owned();
        let get = |k: &str| -> u64 {
            sb.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim_start_matches(':').trim().parse().unwrap()
        };
        let (total, free) = (get("Block count"), get("Free blocks"));
        println!("estimate: {size} bytes, {inodes} inodes; {free} of {total} blocks free after mke2fs");
        assert!(free * 100 / total < 35, "{free} of {total} blocks free");
    }
}
