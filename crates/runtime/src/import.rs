//! `image import` and `kernel import`: a source (registry, `docker save` archive, OCI layout,
//! or for kernels a plain vmlinux file) becomes an Image (its rootfs as an ext4 base disk
//! built by `mke2fs -d`, no mount) or a Kernel (its `/boot/vmlinux`) in the store.
//!
//! Concurrency and crashes: imports of one source are serialized by a lock file keyed by the
//! source's normalized name, and a second import finds the first's object (Ignite #744: one
//! image per ref). All work happens in a scratch directory under `<root>/tmp`; the object
//! appears in the store with its files in one rename, or not at all; the scratch directory is
//! removed on every exit path and scratch left by a crash is swept by the next import.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ignite_api::{Image, ImageRef, Kernel, ObjectMeta, OciSource, Size};
use ignite_oci::{apply_layers, fetch, ApplyOptions, BlobStore, FetchOptions};
use ignite_store::{Store, StoreError};

use crate::start::VMLINUX;

/// Base disk file inside an image object's directory.
pub const BASE_DISK: &str = "base.ext4";
/// Annotation recording whether the image has `/sbin/init` ("true"/"false").
pub const HAS_INIT_ANNOTATION: &str = "ignite.weave.works/has-sbin-init";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot import {source_ref}")]
    Fetch {
        source_ref: String,
        #[source]
        source: ignite_oci::OciError,
    },
    #[error("cannot build the root disk of {source_ref}")]
    Disk {
        source_ref: String,
        #[source]
        source: ignite_disk::DiskError,
    },
    #[error("{source_ref} has no /boot/vmlinux: a kernel image holds the kernel at /boot/vmlinux")]
    NoVmlinux { source_ref: String },
    #[error("{path} is not a Linux kernel image (vmlinux/bzImage): no \"Linux version\" string found")]
    NotAKernel { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options shared by image and kernel imports.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Re-import even when an object of that name exists (`--pull always`).
    pub force: bool,
    pub fetch: FetchOptions,
    /// Store name (default: the source's normalized form).
    pub name: Option<String>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
    move |source| ImportError::Io { op, path: path.to_path_buf(), source }
}

/// A scratch directory under `<root>/tmp`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(store: &Store, what: &str) -> Result<Scratch, ImportError> {
        let base = store.root().join("tmp");
        std::fs::create_dir_all(&base).map_err(io("cannot create", &base))?;
        sweep_scratch(&base);
        let p = base.join(format!("{what}-{}-{:08x}", std::process::id(), rand_u32()));
        std::fs::create_dir(&p).map_err(io("cannot create", &p))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// Removes scratch directories whose owning process is gone.
fn sweep_scratch(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !crate::sys::pid_exists(pid) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Serializes imports of one name across processes.
fn name_lock(store: &Store, kind: &str, name: &str) -> Result<File, ImportError> {
    let dir = store.root().join("tmp").join("locks");
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let key: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    let path = dir.join(format!("{kind}-{key}.lock"));
    let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io("cannot open", &path))?;
    f.lock().map_err(io("cannot lock", &path))?;
    Ok(f)
}

fn blobs(store: &Store) -> Result<BlobStore, ImportError> {
    let dir = store.root().join("blobs");
    BlobStore::open(&dir).map_err(|source| ImportError::Fetch { source_ref: dir.display().to_string(), source })
}

/// Imports an OCI image as an Image with an ext4 base disk.
pub fn import_image(store: &Store, source: &ImageRef, opts: &ImportOptions) -> Result<Image, ImportError> {
    let name = opts.name.clone().unwrap_or_else(|| source.normalized());
    let shown = source.to_string();
    let _guard = name_lock(store, "image", &name)?;
    if let Some(existing) = store.by_name::<Image>(&name)? {
        if !opts.force {
            return Ok(existing);
        }
    }
    let scratch = Scratch::new(store, "import")?;
    let blobs = blobs(store)?;
    let fetched = fetch(source, &blobs, &opts.fetch)
        .map_err(|source| ImportError::Fetch { source_ref: shown.clone(), source })?;
    if let Some(existing) = store.by_name::<Image>(&name)? {
        if existing.status.oci_source.id.as_deref() == Some(fetched.id().as_str()) {
            return Ok(existing);
        }
    }
    let rootfs = scratch.0.join("rootfs");
    std::fs::create_dir(&rootfs).map_err(io("cannot create", &rootfs))?;
    apply_layers(&fetched, &blobs, &rootfs, &ApplyOptions::default())
        .map_err(|source| ImportError::Fetch { source_ref: shown.clone(), source })?;
    let has_init = resolves_to_file(&rootfs, "sbin/init");
    let base = scratch.0.join(BASE_DISK);
    let info = ignite_disk::build_ext4(&rootfs, &base, &ignite_disk::Ext4Options::default())
        .map_err(|source| ImportError::Disk { source_ref: shown.clone(), source })?;
    let mut meta = ObjectMeta { name: name.clone(), ..Default::default() };
    meta.annotations.insert(HAS_INIT_ANNOTATION.into(), has_init.to_string());
    let mut img = Image::new(meta, ignite_api::ImageSpec { oci: Some(source.clone()) });
    img.status.oci_source =
        OciSource { id: Some(fetched.id()), size: Some(Size::from_bytes(info.content_bytes.max(1))) };
    let lock = store.lock()?;
    if let Some(old) = store.by_name::<Image>(&name)? {
        // --pull always found new content: the old object gives way (VMs keep their own
        // overlays' backing files only while the old object exists, so refuse if in use).
        store.remove::<Image>(&lock, &old.uid())?;
    }
    let img = store.create_with(&lock, img, |dir, _| std::fs::rename(&base, dir.join(BASE_DISK)))?;
    Ok(img)
}

/// Whether `rel` resolves (following symlinks inside `root` only) to a regular file.
pub fn resolves_to_file(root: &Path, rel: &str) -> bool {
    let mut path = PathBuf::new();
    let mut parts: Vec<String> = rel.split('/').filter(|p| !p.is_empty()).map(String::from).collect();
    parts.reverse();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                path.pop();
                continue;
            }
            _ => {}
        }
        let candidate = path.join(&p);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                let Ok(target) = std::fs::read_link(&full) else { return false };
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    path = PathBuf::new();
                }
                let mut new: Vec<String> = t.split('/').filter(|x| !x.is_empty()).map(String::from).collect();
                new.reverse();
                parts.extend(new);
            }
            Ok(m) if parts.is_empty() => return m.is_file(),
            Ok(m) if m.is_dir() => path = candidate,
            _ => return false,
        }
    }
    false
}

/// Imports a kernel: from an OCI image holding `/boot/vmlinux`, or from a vmlinux file.
pub fn import_kernel(store: &Store, source: &str, opts: &ImportOptions) -> Result<Kernel, ImportError> {
    let file = Path::new(source);
    let is_file = !source.contains("://")
        && !source.starts_with("oci:")
        && !source.starts_with("oci-archive:")
        && !source.starts_with("docker-archive:")
        && file.is_file();
    let (oci, default_name) = if is_file {
        (None, format!("file:{}", std::path::absolute(file).map_err(io("cannot resolve", file))?.display()))
    } else {
        let r: ImageRef = source.parse().map_err(|e: ignite_api::RefError| ImportError::Io {
            op: "invalid kernel source",
            path: source.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        })?;
        let n = r.normalized();
        (Some(r), n)
    };
    let name = opts.name.clone().unwrap_or(default_name);
    let _guard = name_lock(store, "kernel", &name)?;
    if let Some(existing) = store.by_name::<Kernel>(&name)? {
        if !opts.force {
            return Ok(existing);
        }
    }
    let scratch = Scratch::new(store, "kernel")?;
    let vmlinux = scratch.0.join(VMLINUX);
    let id = match &oci {
        None => {
            std::fs::copy(file, &vmlinux).map_err(io("cannot copy", file))?;
            format!("sha256:{}", sha256_file(&vmlinux)?)
        }
        Some(r) => {
            let blobs = blobs(store)?;
            let fetched = fetch(r, &blobs, &opts.fetch)
                .map_err(|source| ImportError::Fetch { source_ref: r.to_string(), source })?;
            let rootfs = scratch.0.join("rootfs");
            std::fs::create_dir(&rootfs).map_err(io("cannot create", &rootfs))?;
            apply_layers(&fetched, &blobs, &rootfs, &ApplyOptions::default())
                .map_err(|source| ImportError::Fetch { source_ref: r.to_string(), source })?;
            let src =
                resolve_in_root(&rootfs, "boot/vmlinux").ok_or(ImportError::NoVmlinux { source_ref: r.to_string() })?;
            std::fs::rename(&src, &vmlinux).map_err(io("cannot move", &src))?;
            fetched.id()
        }
    };
    let version = kernel_version(&vmlinux)?;
    let size = std::fs::metadata(&vmlinux).map_err(io("cannot stat", &vmlinux))?.len();
    let meta = ObjectMeta { name: name.clone(), ..Default::default() };
    let mut k = Kernel::new(meta, ignite_api::KernelSpec { oci });
    k.status.version = version;
    k.status.oci_source = OciSource { id: Some(id), size: Some(Size::from_bytes(size.max(1))) };
    let lock = store.lock()?;
    if let Some(old) = store.by_name::<Kernel>(&name)? {
        store.remove::<Kernel>(&lock, &old.uid())?;
    }
    Ok(store.create_with(&lock, k, |dir, _| std::fs::rename(&vmlinux, dir.join(VMLINUX)))?)
}

fn resolve_in_root(root: &Path, rel: &str) -> Option<PathBuf> {
    if !resolves_to_file(root, rel) {
        return None;
    }
    // Follow links inside the root to the file they name.
    let mut cur = PathBuf::from(rel);
    for _ in 0..40 {
        let full = root.join(&cur);
        let m = std::fs::symlink_metadata(&full).ok()?;
        if !m.file_type().is_symlink() {
            return Some(full);
        }
        let t = std::fs::read_link(&full).ok()?;
        cur = if t.is_absolute() {
            t.strip_prefix("/").ok()?.to_path_buf()
        } else {
            cur.parent().unwrap_or(Path::new("")).join(t)
        };
        // Normalize `..` lexically inside the root.
        let mut n = PathBuf::new();
        for c in cur.components() {
            match c {
                std::path::Component::ParentDir => {
                    n.pop();
                }
                std::path::Component::Normal(x) => n.push(x),
                _ => {}
            }
        }
        cur = n;
    }
    None
}

/// The "Linux version X" string of a kernel image.
pub fn kernel_version(path: &Path) -> Result<String, ImportError> {
    let mut f = File::open(path).map_err(io("cannot open", path))?;
    let needle = b"Linux version ";
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            return Err(ImportError::NotAKernel { path: path.into() });
        }
        let mut hay = std::mem::take(&mut carry);
        hay.extend_from_slice(&buf[..n]);
        if let Some(i) = hay.windows(needle.len()).position(|w| w == needle) {
            let rest = &hay[i + needle.len()..];
            let end = rest.iter().position(|&b| b == b' ' || b == 0).unwrap_or(rest.len().min(64));
            let v = String::from_utf8_lossy(&rest[..end]).to_string();
            if !v.is_empty() && v.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                return Ok(v);
            }
        }
        let keep = hay.len().saturating_sub(256);
        carry = hay[keep..].to_vec();
    }
}

fn sha256_file(path: &Path) -> Result<String, ImportError> {
    use sha2::Digest;
    let mut f = File::open(path).map_err(io("cannot open", path))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}
