//! Per-VM initramfs: a cpio ("newc") archive with a static busybox, the init shim and the
//! VM's own files. The kernel unpacks it and runs the shim as PID 1; the shim mounts the VM's
//! root disk, copies the files into it (so they land in the VM's own copy-on-write layer,
//! never in the shared base), sets the hostname and `switch_root`s to the image's init, which
//! stays PID 1 as users expect. A missing root device or init is reported on the console as
//! `ignite-init: error: ...` and the VM powers off instead of hanging.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{io_err, DiskError};

enum Entry {
    Dir { mode: u32 },
    File { data: Source, mode: u32 },
    Symlink { target: String },
}

enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// An initramfs being assembled; entries are written in insertion order.
#[derive(Default)]
pub struct Initramfs {
    entries: Vec<(String, Entry)>,
}

impl std::fmt::Debug for Initramfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Initramfs({} entries)", self.entries.len())
    }
}

fn clean(path: &str) -> Result<String, DiskError> {
    let p = path.trim_start_matches('/');
    if p.is_empty() || p.contains('\0') || p.split('/').any(|c| c == ".." || c.is_empty() || c == ".") {
        return Err(DiskError::BadArchivePath(path.to_string()));
    }
    Ok(p.to_string())
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), DiskError> {
        self.entries.push((clean(path)?, Entry::Dir { mode }));
        Ok(())
    }

    /// Adds `path` and any missing parent directories (0755).
    fn parents(&mut self, path: &str) -> Result<(), DiskError> {
        let p = clean(path)?;
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').collect();
        for c in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if !self.entries.iter().any(|(n, _)| *n == acc) {
                self.entries.push((acc.clone(), Entry::Dir { mode: 0o755 }));
            }
        }
        Ok(())
    }

    pub fn add_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), DiskError> {
        self.parents(path)?;
        self.entries.push((clean(path)?, Entry::File { data: Source::Bytes(data.to_vec()), mode }));
        Ok(())
    }

    pub fn add_file_from(&mut self, path: &str, host: &Path, mode: u32) -> Result<(), DiskError> {
        if !host.is_file() {
            return Err(DiskError::Io {
                path: host.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a regular file"),
            });
        }
        self.parents(path)?;
        self.entries.push((clean(path)?, Entry::File { data: Source::Host(host.into()), mode }));
        Ok(())
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), DiskError> {
        self.parents(path)?;
        self.entries.push((clean(path)?, Entry::Symlink { target: target.into() }));
        Ok(())
    }

    /// Adds a host file or directory tree at `prefix` (dirs, regular files and symlinks, with
    /// their modes; owned by root in the archive).
    pub fn add_host_tree(&mut self, prefix: &str, host: &Path) -> Result<(), DiskError> {
        let m = std::fs::symlink_metadata(host).map_err(io_err(host))?;
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(host).map_err(io_err(host))?;
            return self.add_symlink(prefix, &t.to_string_lossy());
        }
        if m.is_file() {
            return self.add_file_from(prefix, host, m.mode() & 0o7777);
        }
        if m.is_dir() {
            self.parents(prefix)?;
            self.add_dir(prefix, m.mode() & 0o7777)?;
            let mut names: Vec<_> =
                std::fs::read_dir(host).map_err(io_err(host))?.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
            names.sort();
            for n in names {
                let child = host.join(&n);
                self.add_host_tree(&format!("{}/{}", prefix.trim_end_matches('/'), n.to_string_lossy()), &child)?;
            }
        }
        // Sockets, fifos and devices are not copied.
        Ok(())
    }

    /// Writes the archive to `out` atomically.
    pub fn write_to(&self, out: &Path) -> Result<(), DiskError> {
        let mut tmp = out.as_os_str().to_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let res = (|| {
            let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            let mut w = std::io::BufWriter::new(f);
            self.write(&mut w).map_err(io_err(&tmp))?;
            w.into_inner()
                .map_err(|e| DiskError::Io { path: tmp.clone(), source: e.into_error() })?
                .sync_all()
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, out).map_err(io_err(out))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut written = 0u64;
        for (ino, (name, e)) in (1u32..).zip(self.entries.iter()) {
            let (mode, data): (u32, Vec<u8>) = match e {
                Entry::Dir { mode } => (0o040000 | mode, Vec::new()),
                Entry::Symlink { target } => (0o120777, target.as_bytes().to_vec()),
                Entry::File { data: Source::Bytes(b), mode } => (0o100000 | mode, b.clone()),
                Entry::File { data: Source::Host(p), mode } => {
                    let mut b = Vec::new();
                    std::fs::File::open(p)?.read_to_end(&mut b)?;
                    (0o100000 | mode, b)
                }
            };
            written += header(w, name, ino, mode, data.len())?;
            w.write_all(&data)?;
            written += data.len() as u64;
            written += pad(w, written)?;
        }
        written += header(w, "TRAILER!!!", 0, 0, 0)?;
        pad(w, written)?;
        Ok(())
    }
}

fn header(w: &mut impl Write, name: &str, ino: u32, mode: u32, size: usize) -> std::io::Result<u64> {
    let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        name.len() + 1,
        0
    );
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let n = (h.len() + name.len() + 1) as u64;
    Ok(n + pad(w, n)?)
}

fn pad(w: &mut impl Write, at: u64) -> std::io::Result<u64> {
    let p = (4 - at % 4) % 4;
    w.write_all(&[0u8; 3][..p as usize])?;
    Ok(p)
}

/// What a VM's initramfs carries.
#[derive(Debug, Clone)]
pub struct VmBoot {
    /// A static busybox on the host (Debian's busybox-static: /bin/busybox).
    pub busybox: PathBuf,
    pub hostname: String,
    /// Contents of /etc/hosts.
    pub hosts: String,
    /// Installed only where the image has no /etc/resolv.conf (or a dangling link).
    pub resolv_conf: Option<String>,
    pub authorized_keys: Option<String>,
    /// Host path → guest path.
    pub copy_files: Vec<(PathBuf, String)>,
    /// The image's init (PID 1 after the hand-over).
    pub init: String,
    pub root_device: String,
    /// Extra block devices to mount before the hand-over: (device, guest mount path).
    pub mounts: Vec<(String, String)>,
}

/// The init shim (busybox sh). `@ROOT@` and `@INIT@` are filled in by [`build_vm_initramfs`].
pub fn guest_init_script() -> &'static str {
    r#"#!/bin/busybox sh
# ignite init shim: provision the VM's own files into its root disk, then hand over to the
# image's init (which stays PID 1).
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "ignite-init: error: $*"; sync; poweroff -f; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
i=0
while [ ! -b @ROOT@ ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ -b @ROOT@ ] || fail "root device @ROOT@ did not appear"
mount -t ext4 -o rw @ROOT@ /newroot || fail "cannot mount the root disk @ROOT@"
if [ ! -e /newroot@INIT@ ] && [ ! -L /newroot@INIT@ ]; then
  umount /newroot
  fail "@INIT@ not found in the image: ignite boots the image's @INIT@ as PID 1"
fi
cp -a /ignite/files/. /newroot/ || fail "cannot write the VM's files into its root disk"
if [ -f /ignite/resolv.conf ] && [ ! -e /newroot/etc/resolv.conf ]; then
  rm -f /newroot/etc/resolv.conf
  cp /ignite/resolv.conf /newroot/etc/resolv.conf
fi
while read -r dev mp; do
  [ -n "$dev" ] || continue
  mkdir -p "/newroot$mp"
  mount "$dev" "/newroot$mp" || echo "ignite-init: warning: cannot mount $dev at $mp"
done < /ignite/mounts
hostname "$(cat /ignite/hostname)"
sync
echo "ignite-init: provisioned $(cat /ignite/hostname)"
umount /proc /sys
if [ -d /newroot/dev ]; then mount --move /dev /newroot/dev; else umount /dev; fi
exec switch_root /newroot @INIT@
"#
}

fn guest_path(p: &str) -> Result<String, DiskError> {
    if !p.starts_with('/') {
        return Err(DiskError::BadArchivePath(p.into()));
    }
    clean(p)
}

/// Builds the initramfs of one VM boot at `out`.
pub fn build_vm_initramfs(spec: &VmBoot, out: &Path) -> Result<(), DiskError> {
    for c in [spec.init.as_str(), spec.root_device.as_str()] {
        if !c.starts_with('/') || c.chars().any(|ch| !(ch.is_ascii_alphanumeric() || "/._-".contains(ch))) {
            return Err(DiskError::BadArchivePath(c.into()));
        }
    }
    let mut i = Initramfs::new();
    i.add_dir("bin", 0o755)?;
    i.add_file_from("bin/busybox", &spec.busybox, 0o755)?;
    let script = guest_init_script().replace("@ROOT@", &spec.root_device).replace("@INIT@", &spec.init);
    i.add_file("init", script.as_bytes(), 0o755)?;
    i.add_file("ignite/hostname", format!("{}\n", spec.hostname).as_bytes(), 0o644)?;
    let mut mounts = String::new();
    for (dev, mp) in &spec.mounts {
        guest_path(dev)?;
        guest_path(mp)?;
        if dev.contains(char::is_whitespace) || mp.contains(char::is_whitespace) {
            return Err(DiskError::BadArchivePath(format!("{dev} {mp}")));
        }
        mounts.push_str(&format!("{dev} {mp}\n"));
    }
    i.add_file("ignite/mounts", mounts.as_bytes(), 0o644)?;
    i.add_dir("ignite/files", 0o755)?;
    i.add_dir("ignite/files/etc", 0o755)?;
    i.add_file("ignite/files/etc/hostname", format!("{}\n", spec.hostname).as_bytes(), 0o644)?;
    i.add_file("ignite/files/etc/hosts", spec.hosts.as_bytes(), 0o644)?;
    if let Some(r) = &spec.resolv_conf {
        i.add_file("ignite/resolv.conf", r.as_bytes(), 0o644)?;
    }
    if let Some(k) = &spec.authorized_keys {
        i.add_dir("ignite/files/root", 0o700)?;
        i.add_dir("ignite/files/root/.ssh", 0o700)?;
        i.add_file("ignite/files/root/.ssh/authorized_keys", k.as_bytes(), 0o600)?;
    }
    for (host, vm) in &spec.copy_files {
        let rel = guest_path(vm)?;
        i.add_host_tree(&format!("ignite/files/{rel}"), host)?;
    }
    i.write_to(out)
}

/// Mode bits of a host path, for tests and callers.
pub fn mode_of(p: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn unpacks_with_cpio() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("tree");
        std::fs::create_dir_all(host.join("sub")).unwrap();
        std::fs::write(host.join("sub/a.txt"), b"alpha").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", host.join("ln")).unwrap();
        let boot = VmBoot {
            busybox: "/bin/busybox".into(),
            hostname: "vm1".into(),
            hosts: "127.0.0.1 localhost\n".into(),
            resolv_conf: Some("nameserver 10.0.0.1\n".into()),
            authorized_keys: Some("ssh-ed25519 AAAA test\n".into()),
            copy_files: vec![(host.clone(), "/opt/tree".into())],
            init: "/sbin/init".into(),
            root_device: "/dev/vda".into(),
            mounts: vec![("/dev/vdb".into(), "/mnt/data".into())],
        };
        if !Path::new("/bin/busybox").is_file() {
            println!("SKIPPED: /bin/busybox missing (apt-get install busybox-static)");
            return;
        }
        let out = d.path().join("initrd.cpio");
        build_vm_initramfs(&boot, &out).unwrap();
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("cd {} && cpio -idm --quiet < {}", x.display(), out.display()))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(x.join("ignite/files/opt/tree/sub/a.txt")).unwrap(), b"alpha");
        assert_eq!(std::fs::read_link(x.join("ignite/files/opt/tree/ln")).unwrap(), Path::new("sub/a.txt"));
        assert_eq!(mode_of(&x.join("ignite/files/root/.ssh/authorized_keys")).unwrap(), 0o600);
        assert_eq!(mode_of(&x.join("ignite/files/root/.ssh")).unwrap(), 0o700);
        assert_eq!(std::fs::read_to_string(x.join("ignite/files/etc/hostname")).unwrap(), "vm1\n");
        let init = std::fs::read_to_string(x.join("init")).unwrap();
        assert!(init.contains("switch_root /newroot /sbin/init") && init.contains("[ -b /dev/vda ]"));
        assert_eq!(std::fs::read(x.join("bin/busybox")).unwrap(), std::fs::read("/bin/busybox").unwrap());
        assert_eq!(std::fs::read_to_string(x.join("ignite/mounts")).unwrap(), "/dev/vdb /mnt/data\n");
    }

    #[test]
    fn rejects_bad_paths() {
        let mut i = Initramfs::new();
        for bad in ["", "/", "a/../b", "a//b", "a\0b", "./a"] {
            assert!(i.add_file(bad, b"x", 0o644).is_err(), "{bad:?}");
        }
        let boot = VmBoot {
            busybox: "/bin/busybox".into(),
            hostname: "h".into(),
            hosts: String::new(),
            resolv_conf: None,
            authorized_keys: None,
            copy_files: vec![],
            init: "/sbin/init; reboot".into(),
            root_device: "/dev/vda".into(),
            mounts: vec![],
        };
        assert!(build_vm_initramfs(&boot, Path::new("/nonexistent/x")).is_err());
    }
}
