//! A cpio "newc" archive writer: the format the Linux kernel unpacks as an initramfs.
//!
//! Owns: archive paths and their validation, and the byte format. Each entry is a 110-byte
//! ASCII header (`070701` and 13 eight-digit hex fields: ino, mode, uid, gid, nlink, mtime,
//! filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated
//! name padded to 4 bytes, then the data padded to 4 bytes; `TRAILER!!!` ends the archive.
//! Everything is owned by 0:0. Entries are written in the order they were added, each
//! directory before what it holds (missing parents are added as 0755 directories); adding a
//! path again replaces the earlier entry in place. Host files are streamed when the archive
//! is written, not held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{fs_err, DiskError, TmpFile};

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Source),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    /// Permission bits (0o7777).
    mode: u32,
    mtime: u32,
}

/// An initramfs being assembled.
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

/// Checks an archive path: relative, non-empty, no `.`/`..`/empty components, no NUL or
/// newline (the init shim reads file lists line by line), shorter than PATH_MAX.
fn check_path(path: &str) -> Result<(), DiskError> {
    let bad = |reason| Err(DiskError::BadArchivePath { path: path.to_string(), reason });
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with('/') {
        return bad("must be relative to the archive root");
    }
    if path.contains('\0') || path.contains('\n') {
        return bad("contains a NUL or newline character");
    }
    if path.len() >= 4096 {
        return bad("longer than 4095 bytes");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, `.` or `..` component");
    }
    Ok(())
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    /// Number of entries (directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn put(&mut self, path: &str, kind: Kind, mode: u32, mtime: u32) -> Result<(), DiskError> {
        check_path(path)?;
        // Parents first.
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let parent = &path[..end];
            match self.index.get(parent) {
                Some(&i) if matches!(self.entries[i].kind, Kind::Dir) => {}
                Some(_) => {
                    return Err(DiskError::BadArchivePath {
                        path: path.to_string(),
                        reason: "a parent is already in the archive as something other than a directory",
                    })
                }
                None => {
                    self.index.insert(parent.to_string(), self.entries.len());
                    self.entries.push(Entry { path: parent.to_string(), kind: Kind::Dir, mode: 0o755, mtime });
                }
            }
            end += 1;
        }
        let e = Entry { path: path.to_string(), kind, mode: mode & 0o7777, mtime };
        match self.index.get(path) {
            Some(&i) => self.entries[i] = e,
            None => {
                self.index.insert(path.to_string(), self.entries.len());
                self.entries.push(e);
            }
        }
        Ok(())
    }

    /// Adds a directory (and its missing parents).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), DiskError> {
        self.put(path, Kind::Dir, mode, now())
    }

    /// Adds a regular file with the given contents.
    pub fn add_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), DiskError> {
        if data.len() as u64 > u32::MAX as u64 {
            return Err(DiskError::BadArchivePath { path: path.into(), reason: "file larger than 4 GiB" });
        }
        self.put(path, Kind::File(Source::Bytes(data.to_vec())), mode, now())
    }

    /// Adds a regular file whose contents are read from `host` when the archive is written.
    pub fn add_file_from(&mut self, path: &str, host: &Path, mode: u32) -> Result<(), DiskError> {
        let m = std::fs::metadata(host).map_err(fs_err("read", host))?;
        if !m.is_file() {
            return Err(DiskError::Invalid {
                what: "initramfs source",
                value: host.display().to_string(),
                reason: "not a regular file".into(),
            });
        }
        self.put(path, Kind::File(Source::Host(host.to_path_buf())), mode, mtime_of(&m))
    }

    /// Adds a symbolic link to `target` (stored verbatim).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), DiskError> {
        if target.is_empty() || target.contains('\0') {
            return Err(DiskError::BadArchivePath { path: path.into(), reason: "empty link target or NUL in it" });
        }
        self.put(path, Kind::Symlink(target.to_string()), 0o777, now())
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1, which the kernel opens for
    /// init's stdio before anything mounts devtmpfs).
    pub fn add_char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<(), DiskError> {
        self.put(path, Kind::CharDevice { major, minor }, mode, now())
    }

    /// Adds the host file, symlink or directory tree `host` at `prefix` (`""`: the tree's
    /// contents at the archive root): directories, regular files and symlinks with their
    /// permission bits and mtimes, owned by 0:0. Other file types (sockets, fifos, devices)
    /// are skipped with a warning.
    pub fn add_host_tree(&mut self, prefix: &str, host: &Path) -> Result<(), DiskError> {
        let m = std::fs::symlink_metadata(host).map_err(fs_err("read", host))?;
        let ft = m.file_type();
        if prefix.is_empty() && !ft.is_dir() {
            return Err(DiskError::BadArchivePath {
                path: String::new(),
                reason: "only a directory can be added at the archive root",
            });
        }
        if ft.is_symlink() {
            let t = std::fs::read_link(host).map_err(fs_err("read the link", host))?;
            let t = t.to_str().ok_or_else(|| DiskError::Invalid {
                what: "symlink target",
                value: t.display().to_string(),
                reason: "not UTF-8".into(),
            })?;
            return self.put(prefix, Kind::Symlink(t.to_string()), 0o777, mtime_of(&m));
        }
        if ft.is_file() {
            return self.put(prefix, Kind::File(Source::Host(host.to_path_buf())), m.mode(), mtime_of(&m));
        }
        if !ft.is_dir() {
            tracing::warn!(path = %host.display(), "not a file, directory or symlink: left out of the initramfs");
            return Ok(());
        }
        if !prefix.is_empty() {
            self.put(prefix, Kind::Dir, m.mode(), mtime_of(&m))?;
        }
        let mut names: Vec<_> = std::fs::read_dir(host)
            .map_err(fs_err("read directory", host))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(fs_err("read directory", host))?;
        names.sort();
        for n in names {
            let name = n.to_str().ok_or_else(|| DiskError::Invalid {
                what: "file name",
                value: host.join(&n).display().to_string(),
                reason: "not UTF-8".into(),
            })?;
            let child = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
            self.add_host_tree(&child, &host.join(&n))?;
        }
        Ok(())
    }

    /// Writes the archive to `out`, atomically (temporary file, rename). Not synced: an
    /// initramfs is made for one boot and made again before the next, and a VM's (3.5 MB) took
    /// 11–13 ms of every start to sync here.
    pub fn write_to(&self, out: &Path) -> Result<(), DiskError> {
        let tmp = TmpFile::beside(out);
        let f = File::create(tmp.path()).map_err(fs_err("create", tmp.path()))?;
        let mut w = BufWriter::with_capacity(256 << 10, f);
        self.write(&mut w, tmp.path())?;
        w.into_inner().map_err(|e| DiskError::Fs { op: "write", path: tmp.path().into(), source: e.into_error() })?;
        tmp.commit_unsynced(out)
    }

    /// Writes the archive to `w`; `dest` names it in errors. Returns the bytes written.
    pub fn write(&self, w: &mut impl Write, dest: &Path) -> Result<u64, DiskError> {
        let werr = || fs_err("write", dest);
        let mut at = 0u64;
        for (ino, e) in (1u32..).zip(&self.entries) {
            let mut h = Header { ino, mode: e.mode, nlink: 1, mtime: e.mtime, size: 0, rdev: (0, 0) };
            match &e.kind {
                Kind::Dir => {
                    h.mode |= 0o040000;
                    h.nlink = 2;
                    at += h.write(w, &e.path).map_err(werr())?;
                }
                Kind::Symlink(t) => {
                    h.mode = 0o120777;
                    h.size = t.len() as u32;
                    at += h.write(w, &e.path).map_err(werr())?;
                    at += data(w, t.as_bytes(), at).map_err(werr())?;
                }
                Kind::CharDevice { major, minor } => {
                    h.mode |= 0o020000;
                    h.rdev = (*major, *minor);
                    at += h.write(w, &e.path).map_err(werr())?;
                }
                Kind::File(Source::Bytes(b)) => {
                    h.mode |= 0o100000;
                    h.size = b.len() as u32;
                    at += h.write(w, &e.path).map_err(werr())?;
                    at += data(w, b, at).map_err(werr())?;
                }
                Kind::File(Source::Host(p)) => {
                    let f = File::open(p).map_err(fs_err("open", p))?;
                    let len = f.metadata().map_err(fs_err("read", p))?.len();
                    let size = u32::try_from(len).map_err(|_| DiskError::Invalid {
                        what: "initramfs file",
                        value: p.display().to_string(),
                        reason: "larger than 4 GiB".into(),
                    })?;
                    h.mode |= 0o100000;
                    h.size = size;
                    at += h.write(w, &e.path).map_err(werr())?;
                    let copied = std::io::copy(&mut f.take(len), w).map_err(fs_err("read", p))?;
                    if copied != len {
                        return Err(DiskError::Invalid {
                            what: "initramfs file",
                            value: p.display().to_string(),
                            reason: "it shrank while being archived".into(),
                        });
                    }
                    at += copied;
                    at += pad(w, at).map_err(werr())?;
                }
            }
        }
        let trailer = Header { ino: 0, mode: 0, nlink: 1, mtime: 0, size: 0, rdev: (0, 0) };
        at += trailer.write(w, "TRAILER!!!").map_err(werr())?;
        at += pad(w, at).map_err(werr())?;
        Ok(at)
    }
}

fn mtime_of(m: &std::fs::Metadata) -> u32 {
    m.mtime().clamp(0, u32::MAX as i64) as u32
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

impl Header {
    /// Writes the header and the padded name; returns the bytes written.
    fn write(&self, w: &mut impl Write, name: &str) -> std::io::Result<u64> {
        let fields = [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            self.mtime,
            self.size,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        w.write_all(h.as_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        let n = 110 + name.len() as u64 + 1;
        Ok(n + pad(w, n)?)
    }
}

fn data(w: &mut impl Write, b: &[u8], at: u64) -> std::io::Result<u64> {
    w.write_all(b)?;
    Ok(b.len() as u64 + pad(w, at + b.len() as u64)?)
}

/// Pads to the next multiple of 4 from offset `at`.
fn pad(w: &mut impl Write, at: u64) -> std::io::Result<u64> {
    let p = (4 - at % 4) % 4;
    w.write_all(&[0u8; 3][..p as usize])?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let mut i = Initramfs::new();
        for bad in ["", "/", "/abs", "a/../b", "..", "a//b", "a\0b", "./a", "a/", "a\nb"] {
            assert!(matches!(i.add_file(bad, b"x", 0o644), Err(DiskError::BadArchivePath { .. })), "{bad:?} accepted");
        }
        assert!(i.is_empty());
        i.add_file("a/b/c", b"x", 0o644).unwrap();
        assert_eq!(i.len(), 3, "parents a and a/b added");
        assert!(i.add_file("a/b/c/d", b"x", 0o644).is_err(), "a file cannot be a parent");
        assert!(i.add_symlink("l", "").is_err());
    }

    #[test]
    fn format_is_newc() {
        let mut i = Initramfs::new();
        i.add_dir("d", 0o700).unwrap();
        i.add_file("d/f", b"hello", 0o4755).unwrap();
        i.add_char_device("console", 0o600, 5, 1).unwrap();
        i.add_file("d/f", b"hi", 0o644).unwrap(); // replaces in place
        let mut out = Vec::new();
        let n = i.write(&mut out, Path::new("mem")).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The directory: 110-byte header, "d\0" padded to 112 + 4.
        assert!(text.starts_with("07070100000001000041c0000000000000000000000002"), "{text}");
        assert_eq!(&out[110..112], b"d\0");
        let f = 112;
        assert_eq!(&out[f..f + 22], b"07070100000002000081a4");
        assert_eq!(&text[f + 54..f + 62], "00000002", "file size");
        assert_eq!(&out[f + 110..f + 114], b"d/f\0");
        assert_eq!(&out[f + 116..f + 118], b"hi");
        let c = text.find("0707010000000300002180").unwrap();
        assert_eq!(&text[c + 78..c + 94], "0000000500000001", "rdev 5:1");
        assert!(text.contains("TRAILER!!!"));
    }
}
