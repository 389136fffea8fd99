//! Applying image layers to a root directory, safely.
//!
//! Threat model: layers are untrusted. No entry may create, change or follow anything outside
//! the target directory. Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`
//! relative to a descriptor of the target, so `..` and symlinks (absolute or relative, planted
//! by an earlier entry or layer) can never leave it — the same containment a chroot gives.
//! The final component is then created with `*at` calls that do not follow it
//! (`O_NOFOLLOW`/`O_EXCL`, `AT_SYMLINK_NOFOLLOW`). Entries with `..` components are refused
//! outright (Docker refuses them too); leading `/` is stripped as Docker does. Sizes are
//! bounded (`max_total_bytes`) so a file-size bomb fails instead of filling the disk.
//!
//! Layer semantics: whiteouts (`.wh.NAME` removes NAME from lower layers), opaque directories
//! (`.wh..wh..opq` empties a directory of lower-layer content), hardlinks, symlinks,
//! character/block devices and FIFOs, numeric ownership, modes (incl. setuid/sticky), mtimes,
//! and `SCHILY.xattr.*` PAX records.

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use sha2::{Digest, Sha256};

use crate::blobs::BlobStore;
use crate::manifest::FetchedImage;
use crate::OciError;

/// Limits for applying layers.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Most bytes of file content written, over all layers.
    pub max_total_bytes: u64,
    /// Most entries, over all layers.
    pub max_entries: u64,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { max_total_bytes: 64 << 30, max_entries: 10_000_000 }
    }
}

/// What was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    /// xattrs the filesystem refused (not fatal).
    pub xattrs_skipped: u64,
}

/// Applies every layer of `image` to the empty directory `target`, verifying each layer's
/// uncompressed digest against the image config's diff_ids.
pub fn apply_layers(
    image: &FetchedImage,
    blobs: &BlobStore,
    target: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyStats, OciError> {
    let mut stats = ApplyStats::default();
    for (i, layer) in image.layers.iter().enumerate() {
        let f = blobs.open_blob(&layer.digest)?;
        let diff = apply_layer_reader(f, target, opts, &mut stats).map_err(|e| match e {
            OciError::Layer { message, .. } => OciError::Layer { digest: layer.digest.clone(), message },
            other => other,
        })?;
        if let Some(want) = image.config.diff_ids.get(i) {
            if *want != diff {
                return Err(OciError::DigestMismatch {
                    what: format!("uncompressed layer {} (diff_id)", layer.digest),
                    expected: want.clone(),
                    actual: diff,
                });
            }
        }
    }
    Ok(stats)
}

/// Reads through to a sha256 of the uncompressed stream.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies one layer (gzip or plain tar) read from `reader` to `target`; returns the sha256
/// of the uncompressed tar (its diff_id). Safe on arbitrary input.
pub fn apply_layer_reader(
    reader: impl Read,
    target: &Path,
    opts: &ApplyOptions,
    stats: &mut ApplyStats,
) -> Result<String, OciError> {
    let mut br = BufReader::new(reader);
    let head = {
        use std::io::BufRead;
        br.fill_buf().map_err(|e| layer_err(format!("read failed: {e}")))?.to_vec()
    };
    let plain: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(layer_err("zstd-compressed layers are not supported yet".into()));
    } else {
        Box::new(br)
    };
    let mut hashing = Hashing { inner: plain, hash: Sha256::new() };
    let root: OwnedFd = rustix::fs::open(target, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| OciError::Io { path: target.into(), source: e.into() })?;
    {
        let mut ar = tar::Archive::new(&mut hashing);
        let mut created: HashSet<String> = HashSet::new();
        let entries = ar.entries().map_err(|e| layer_err(format!("malformed tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("malformed tar: {e}")))?;
            stats.entries += 1;
            if stats.entries > opts.max_entries {
                return Err(OciError::TooLarge { what: "layer entry count".into(), limit: opts.max_entries });
            }
            apply_entry(&root, &mut entry, opts, stats, &mut created)?;
        }
    }
    // Hash the end-of-archive padding too: the diff_id covers the whole stream.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| layer_err(format!("read failed: {e}")))?;
    Ok(format!("sha256:{:x}", hashing.hash.finalize()))
}

fn layer_err(message: String) -> OciError {
    OciError::Layer { digest: String::new(), message: crate::printable(&message) }
}

fn io(path: &str) -> impl FnOnce(rustix::io::Errno) -> OciError + '_ {
    move |e| OciError::Io { path: path.into(), source: e.into() }
}

/// Splits an entry path into safe components.
fn components(raw: &str) -> Result<Vec<String>, OciError> {
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => continue,
            ".." => return Err(OciError::UnsafeEntry { path: raw.into(), reason: "it contains '..'" }),
            c if c.contains('\0') => return Err(OciError::UnsafeEntry { path: raw.into(), reason: "it contains NUL" }),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Opens (creating missing directories) the directory `parts` under `root`, resolved inside
/// the root by the kernel.
fn open_dir(root: &OwnedFd, parts: &[String]) -> Result<OwnedFd, OciError> {
    let mut cur = rustix::fs::openat2(
        root,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .map_err(io("."))?;
    for (i, p) in parts.iter().enumerate() {
        let shown = parts[..=i].join("/");
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let rel = parts[..=i].join("/");
        match rustix::fs::openat2(
            root,
            rel.as_str(),
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => cur = fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&cur, p.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(io(&shown)(e)),
                }
                cur = rustix::fs::openat2(
                    root,
                    rel.as_str(),
                    flags,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(io(&shown))?;
            }
            Err(rustix::io::Errno::NOTDIR) => {
                // A non-directory sits where a directory is needed: replace it (as Docker does).
                let parent = open_dir(root, &parts[..i])?;
                rustix::fs::unlinkat(&parent, p.as_str(), AtFlags::empty()).map_err(io(&shown))?;
                rustix::fs::mkdirat(&parent, p.as_str(), Mode::from_raw_mode(0o755)).map_err(io(&shown))?;
                cur = rustix::fs::openat2(
                    root,
                    rel.as_str(),
                    flags,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                )
                .map_err(io(&shown))?;
            }
            Err(e) => return Err(io(&shown)(e)),
        }
    }
    Ok(cur)
}

/// Removes `name` in `dir` (recursively for directories), never following symlinks.
fn remove_at(dir: &OwnedFd, name: &str) -> Result<(), OciError> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io(name)(e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io(name))?;
        empty_dir(&sub, &HashSet::new(), "")?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io(name))
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io(name))
    }
}

/// Removes the contents of `dir`, except paths in `keep` (relative to the layer root, with
/// `prefix` being `dir`'s path).
fn empty_dir(dir: &OwnedFd, keep: &HashSet<String>, prefix: &str) -> Result<(), OciError> {
    let names: Vec<String> = {
        let fd = rustix::fs::openat(dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(io(prefix))?;
        let mut d = rustix::fs::Dir::read_from(&fd).map_err(io(prefix))?;
        let mut v = Vec::new();
        while let Some(e) = d.read() {
            let e = e.map_err(io(prefix))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                v.push(n);
            }
        }
        v
    };
    for n in names {
        let full = if prefix.is_empty() { n.clone() } else { format!("{prefix}/{n}") };
        if !keep.contains(&full) {
            remove_at(dir, &n)?;
        }
    }
    Ok(())
}

fn apply_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    opts: &ApplyOptions,
    stats: &mut ApplyStats,
    created: &mut HashSet<String>,
) -> Result<(), OciError> {
    let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let parts = components(&raw_path)?;
    let Some((name, parent_parts)) = parts.split_last() else {
        return Ok(()); // the root itself ("./")
    };
    let rel = parts.join("/");
    let parent = open_dir(root, parent_parts)?;
    let parent_rel = parent_parts.join("/");

    // Whiteouts.
    if name == ".wh..wh..opq" {
        stats.whiteouts += 1;
        return empty_dir(&parent, created, &parent_rel);
    }
    if let Some(hidden) = name.strip_prefix(".wh.") {
        stats.whiteouts += 1;
        components(hidden)?;
        if hidden.contains('/') || hidden.is_empty() {
            return Err(OciError::UnsafeEntry { path: raw_path, reason: "malformed whiteout" });
        }
        return remove_at(&parent, hidden);
    }

    let header = entry.header().clone();
    let kind = header.entry_type();
    let mode = header.mode().map_err(|e| layer_err(format!("{rel}: bad mode: {e}")))? & 0o7777;
    let uid = header.uid().map_err(|e| layer_err(format!("{rel}: bad uid: {e}")))?;
    let gid = header.gid().map_err(|e| layer_err(format!("{rel}: bad gid: {e}")))?;
    let mtime = header.mtime().unwrap_or(0);
    let uid = u32::try_from(uid).map_err(|_| layer_err(format!("{rel}: uid out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| layer_err(format!("{rel}: gid out of range")))?;
    let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let k = e.key().ok()?;
                k.strip_prefix("SCHILY.xattr.").map(|n| (n.to_string(), e.value_bytes().to_vec()))
            })
            .collect(),
        _ => Vec::new(),
    };

    // Anything already there (from a lower layer) is replaced, except directory onto directory.
    let existing = rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
    let existing_dir =
        existing.as_ref().map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory).unwrap_or(false);
    if existing.is_some() && !(kind.is_dir() && existing_dir) {
        remove_at(&parent, name)?;
    }

    let mut fd_for_xattr: Option<OwnedFd> = None;
    match kind {
        t if t.is_dir() => {
            if !existing_dir {
                rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)).map_err(io(&rel))?;
            }
            fd_for_xattr = rustix::fs::openat(
                &parent,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok();
        }
        t if t.is_file() || t == tar::EntryType::Continuous || t.is_gnu_sparse() => {
            let size = entry.size();
            if stats.bytes.saturating_add(size) > opts.max_total_bytes {
                return Err(OciError::TooLarge {
                    what: format!("layer content (at {rel})"),
                    limit: opts.max_total_bytes,
                });
            }
            let fd = rustix::fs::openat(
                &parent,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(io(&rel))?;
            let mut file = std::fs::File::from(fd);
            let limit = opts.max_total_bytes - stats.bytes;
            let mut limited = (&mut *entry).take(limit + 1);
            let n = copy_sparse(&mut limited, &mut file).map_err(|e| layer_err(format!("{rel}: {e}")))?;
            if n > limit {
                return Err(OciError::TooLarge {
                    what: format!("layer content (at {rel})"),
                    limit: opts.max_total_bytes,
                });
            }
            stats.bytes += n;
            fd_for_xattr = Some(OwnedFd::from(file));
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name_bytes().ok_or_else(|| layer_err(format!("{rel}: symlink without target")))?;
            let target = String::from_utf8_lossy(&target).into_owned();
            if target.contains('\0') || target.is_empty() {
                return Err(OciError::UnsafeEntry { path: raw_path, reason: "bad symlink target" });
            }
            // The target is stored as-is: it is only ever resolved inside the guest, or by us
            // with RESOLVE_IN_ROOT.
            rustix::fs::symlinkat(target.as_str(), &parent, name.as_str()).map_err(io(&rel))?;
        }
        tar::EntryType::Link => {
            let target = entry.link_name_bytes().ok_or_else(|| layer_err(format!("{rel}: hardlink without target")))?;
            let target = String::from_utf8_lossy(&target).into_owned();
            let tparts = components(&target).map_err(|_| OciError::UnsafeEntry {
                path: raw_path.clone(),
                reason: "hardlink target contains '..'",
            })?;
            let Some((tname, tparent_parts)) = tparts.split_last() else {
                return Err(OciError::UnsafeEntry { path: raw_path, reason: "hardlink to the root" });
            };
            let tparent = open_dir(root, tparent_parts)?;
            rustix::fs::linkat(&tparent, tname.as_str(), &parent, name.as_str(), AtFlags::empty()).map_err(|e| {
                OciError::Layer { digest: String::new(), message: format!("{rel}: cannot hardlink to {target}: {e}") }
            })?;
            created.insert(rel);
            return Ok(()); // a hardlink shares the target's inode metadata
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let ft = match kind {
                tar::EntryType::Char => FileType::CharacterDevice,
                tar::EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            rustix::fs::mknodat(
                &parent,
                name.as_str(),
                ft,
                Mode::from_raw_mode(0o600),
                rustix::fs::makedev(major, minor),
            )
            .map_err(io(&rel))?;
        }
        tar::EntryType::XGlobalHeader
        | tar::EntryType::XHeader
        | tar::EntryType::GNULongName
        | tar::EntryType::GNULongLink => {
            return Ok(());
        }
        other => {
            tracing::warn!("skipping {rel}: unsupported tar entry type {other:?}");
            return Ok(());
        }
    }
    created.insert(rel.clone());

    // Ownership before mode (chown clears setuid bits), never following a final symlink.
    rustix::fs::chownat(
        &parent,
        name.as_str(),
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io(&rel))?;
    if kind != tar::EntryType::Symlink {
        rustix::fs::chmodat(&parent, name.as_str(), Mode::from_raw_mode(mode), AtFlags::empty()).map_err(io(&rel))?;
    }
    if let Some(fd) = &fd_for_xattr {
        for (k, v) in &xattrs {
            if rustix::fs::fsetxattr(fd.as_fd(), k.as_str(), v, XattrFlags::empty()).is_err() {
                stats.xattrs_skipped += 1;
            }
        }
    }
    let ts = Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
    let _ = rustix::fs::utimensat(
        &parent,
        name.as_str(),
        &Timestamps { last_access: ts, last_modification: ts },
        AtFlags::SYMLINK_NOFOLLOW,
    );
    Ok(())
}

/// Copies keeping runs of zero blocks as holes.
fn copy_sparse(r: &mut impl Read, f: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut pending_hole = 0i64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if buf[..n].iter().all(|b| *b == 0) {
            pending_hole += n as i64;
            continue;
        }
        if pending_hole > 0 {
            f.seek(std::io::SeekFrom::Current(pending_hole))?;
            pending_hole = 0;
        }
        f.write_all(&buf[..n])?;
    }
    if pending_hole > 0 {
        f.set_len(total)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
