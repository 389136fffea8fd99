//! `ignite cp` payloads: one file or directory tree as a tar stream, with `docker cp`'s
//! placement rule, unpacked safely from an untrusted sender.
//!
//! Owns: [`pack`] (the sender's side) and [`unpack`] (the receiver's side). The host unpacks
//! what a guest sends, so `unpack` trusts nothing in the stream: absolute paths and `..`
//! are refused, nothing is written through a symbolic link (neither one already there nor
//! one the stream itself created), and only regular files, directories and symbolic links
//! are accepted (a hard link or device node could reach outside the destination).

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// Writes `src` (a file, a symbolic link or a directory, recursively) as a tar stream whose
/// top entry is `src`'s file name. Symbolic links are stored as links, never followed.
pub fn pack(src: &Path, w: impl Write) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let name = match src.file_name() {
        Some(n) => PathBuf::from(n),
        None => PathBuf::from("."),
    };
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    if meta.is_dir() {
        b.append_dir_all(&name, src)?;
    } else {
        b.append_path_with_name(src, &name)?;
    }
    b.into_inner()?.flush()
}

/// Who unpacks: the host keeps the receiving user's ownership and drops set-id bits (like
/// `scp -p`); the guest agent keeps everything the host sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    Host,
    Guest,
}

/// Unpacks a stream made by [`pack`] at `dest`: into `dest` when it is an existing directory
/// (`dest/<name>`), otherwise as `dest` itself (the top entry renamed), whose parent must
/// exist. Returns the number of entries written.
pub fn unpack(r: impl Read, dest: &Path, who: Receiver) -> Result<u64, String> {
    let (base, rename) = if dest.is_dir() {
        (dest.to_path_buf(), None)
    } else {
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
            Some(p) => p.to_path_buf(),
            None => return Err(format!("{}: not a valid destination", dest.display())),
        };
        if !parent.is_dir() {
            return Err(format!("{}: no such directory", parent.display()));
        }
        let name = dest.file_name().ok_or_else(|| format!("{}: not a valid destination", dest.display()))?;
        (parent, Some(PathBuf::from(name)))
    };
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_ownerships(who == Receiver::Guest);
    let mut n = 0u64;
    let mut top: Option<PathBuf> = None;
    for entry in ar.entries().map_err(|e| format!("reading the archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let raw = entry.path().map_err(|e| format!("bad entry name: {e}"))?.into_owned();
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(p) => rel.push(p),
                Component::CurDir => {}
                _ => return Err(format!("refused entry {:?}: absolute paths and '..' are not allowed", raw)),
            }
        }
        let Some(first) = rel.components().next().map(|c| PathBuf::from(c.as_os_str())) else {
            continue; // "." itself
        };
        match &top {
            None => top = Some(first.clone()),
            Some(t) if *t != first => {
                return Err(format!("refused entry {:?}: outside the copied tree {:?}", raw, t));
            }
            _ => {}
        }
        if let Some(new) = &rename {
            let rest = rel.strip_prefix(&first).unwrap_or(Path::new("")).to_path_buf();
            rel = if rest.as_os_str().is_empty() { new.clone() } else { new.join(rest) };
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(format!("refused entry {:?}: only files, directories and symbolic links are copied", raw));
        }
        let target = base.join(&rel);
        // Every directory between the base and the target must be a real directory.
        let mut at = base.clone();
        let comps: Vec<_> = rel.components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!("refused entry {:?}: {} is a symbolic link", raw, at.display()));
                }
                Ok(m) if !m.is_dir() => return Err(format!("{}: not a directory", at.display())),
                Ok(_) => {}
                Err(_) => std::fs::create_dir_all(&at).map_err(|e| format!("{}: {e}", at.display()))?,
            }
        }
        // Replace, never write through, what is at the target (except a directory kept for
        // a directory).
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if !(m.is_dir() && kind.is_dir()) {
                if m.is_dir() {
                    return Err(format!("{}: is a directory", target.display()));
                }
                std::fs::remove_file(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            }
        }
        entry.set_preserve_mtime(true);
        entry.set_unpack_xattrs(false);
        match who {
            Receiver::Host => {
                entry.set_preserve_permissions(false);
            }
            Receiver::Guest => {
                entry.set_preserve_permissions(true);
            }
        }
        entry.unpack(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        n += 1;
    }
    if top.is_none() {
        return Err("the archive is empty".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree(d: &Path) -> PathBuf {
        let src = d.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), b"alpha").unwrap();
        std::fs::write(src.join("sub/b"), vec![9u8; 100_000]).unwrap();
        std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("a", src.join("link")).unwrap();
        src
    }

    #[test]
    fn into_existing_dir_and_as_new_name() {
        let d = tempfile::tempdir().unwrap();
        let src = tree(d.path());
        let mut buf = Vec::new();
        pack(&src, &mut buf).unwrap();
        let into = d.path().join("into");
        std::fs::create_dir(&into).unwrap();
        unpack(&buf[..], &into, Receiver::Guest).unwrap();
        assert_eq!(std::fs::read(into.join("src/a")).unwrap(), b"alpha");
        assert_eq!(std::fs::metadata(into.join("src/a")).unwrap().permissions().mode() & 0o7777, 0o751);
        assert_eq!(std::fs::read_link(into.join("src/link")).unwrap(), Path::new("a"));
        let renamed = d.path().join("renamed");
        unpack(&buf[..], &renamed, Receiver::Host).unwrap();
        assert_eq!(std::fs::read(renamed.join("sub/b")).unwrap().len(), 100_000);
        // A single file, renamed.
        let mut buf = Vec::new();
        pack(&src.join("a"), &mut buf).unwrap();
        unpack(&buf[..], &d.path().join("copy-of-a"), Receiver::Host).unwrap();
        assert_eq!(std::fs::read(d.path().join("copy-of-a")).unwrap(), b"alpha");
    }

    fn hostile(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(if kind.is_file() { 4 } else { 0 });
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // Bypass the builder's own path checks: write the raw name.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            let data: &[u8] = if kind.is_file() { b"evil" } else { b"" };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn hostile_streams_are_refused_and_write_nothing_outside() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = d.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        use tar::EntryType as T;
        let cases: Vec<Vec<u8>> = vec![
            hostile(&[("x/../../outside/f", T::Regular, "")]),
            hostile(&[("/abs", T::Regular, "")]),
            hostile(&[("x", T::Directory, ""), ("x/l", T::Symlink, "../../outside"), ("x/l/f", T::Regular, "")]),
            hostile(&[("x", T::Directory, ""), ("x/h", T::Link, "/etc/passwd")]),
            hostile(&[("x", T::Directory, ""), ("x/dev", T::Char, "")]),
            hostile(&[("x", T::Regular, ""), ("y", T::Regular, "")]),
        ];
        for (i, c) in cases.iter().enumerate() {
            let dest = d.path().join(format!("dest{i}"));
            std::fs::create_dir(&dest).unwrap();
            let r = unpack(&c[..], &dest, Receiver::Host);
            assert!(r.is_err(), "case {i} accepted");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A pre-existing symlink at the target is replaced, not written through.
        std::os::unix::fs::symlink(outside.join("victim"), dest.join("x")).unwrap();
        unpack(&hostile(&[("x", T::Regular, "")])[..], &dest, Receiver::Host).unwrap();
        assert!(!outside.join("victim").exists());
        assert_eq!(std::fs::read(dest.join("x")).unwrap(), b"evil");
    }
}
