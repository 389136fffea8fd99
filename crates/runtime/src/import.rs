//! `image import` and `kernel import`: a source (registry, `docker save` archive, OCI layout,
//! or for kernels a plain vmlinux file) becomes an Image (its rootfs as an ext4 base disk
//! built by `mke2fs -d`, no mount) or a Kernel (its `/boot/vmlinux`) in the store.
//!
//! Concurrency and crashes: imports of one source are serialized by a lock file keyed by the
//! source's normalized name, and a second import finds the first's object (Ignite #744: one
//! image per ref). All work happens in a scratch directory under `<root>/tmp`; the object
//! appears in the store with its files in one rename, or not at all; the scratch directory is
//! removed on every exit path and scratch left by a crash is swept by the next import (or
//! collection).
//!
//! An image's root filesystem goes to the shared base directory of its content (see `gc`):
//! re-importing a name with new content makes a new object and a new base, and the VMs made
//! from the old content keep theirs. Each object records the blobs it was made from
//! (`blobs.json`), so that the collector can remove the blobs nothing needs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ignite_api::{Image, ImageRef, Kernel, ObjectMeta, OciSource, Size, Vm};
use ignite_oci::{apply_layers, fetch, ApplyOptions, BlobStore, FetchOptions};
use ignite_store::{Store, StoreError};

use crate::start::VMLINUX;

pub use crate::gc::BASE_DISK;
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
    #[error("{what} {name:?} exists with other content ({have}; {source_ref} has {new}): use --force to replace it")]
    Differs { what: &'static str, name: String, source_ref: String, have: String, new: String },
    #[error("image {name:?} was imported by an older ignite, into its own directory, and VMs {users} use it: remove them, or import the new content under another name")]
    InUseLegacy { name: String, users: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import does when an object of the name exists already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// The object is used as it is and the source is not read (`run`/`create`, `--pull
    /// missing`).
    #[default]
    Reuse,
    /// The source is read; new content replaces the object (`--pull always`, `import --force`).
    /// VMs made from the old content keep their base.
    Replace,
    /// The source is read; the same content keeps the object, other content is refused
    /// (`ignite image import` without `--force`).
    Verify,
}

/// How an import ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new object.
    Imported,
    /// The source was read and holds what the object has.
    Unchanged,
    /// The object was used without reading the source.
    Reused,
}

/// An imported (or found) object.
#[derive(Debug, Clone)]
pub struct Imported<T> {
    pub object: T,
    pub outcome: Outcome,
}

/// Options shared by image and kernel imports.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub mode: ImportMode,
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
        crate::gc::sweep_scratch(&base);
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

/// What a base directory records of the image it was built from (`info.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct BaseInfo {
    has_init: bool,
    content_bytes: u64,
}

fn blob_list(fetched: &ignite_oci::FetchedImage) -> Vec<String> {
    let mut v = vec![fetched.manifest_digest.clone(), fetched.config_digest.clone()];
    v.extend(fetched.layers.iter().map(|l| l.digest.clone()));
    v
}

/// Imports an OCI image as an Image with an ext4 base disk.
pub fn import_image(store: &Store, source: &ImageRef, opts: &ImportOptions) -> Result<Imported<Image>, ImportError> {
    let res = import_image_locked(store, source, opts);
    // What a failed or replacing import (or a killed one before it) left unreferenced.
    if !matches!(res, Ok(Imported { outcome: Outcome::Reused, .. })) {
        crate::gc::collect_if_idle(store);
    }
    res
}

fn import_image_locked(store: &Store, source: &ImageRef, opts: &ImportOptions) -> Result<Imported<Image>, ImportError> {
    let name = opts.name.clone().unwrap_or_else(|| source.normalized());
    let shown = source.to_string();
    let _guard = name_lock(store, "image", &name)?;
    if let Some(existing) = store.by_name::<Image>(&name)? {
        if opts.mode == ImportMode::Reuse {
            return Ok(Imported { object: existing, outcome: Outcome::Reused });
        }
    }
    let _gc = crate::gc::hold(store).map_err(io("cannot lock", store.root()))?;
    ignite_proc::fault::point("import.fetch");
    let scratch = Scratch::new(store, "import")?;
    let blobs = blobs(store)?;
    let fetched = fetch(source, &blobs, &opts.fetch)
        .map_err(|source| ImportError::Fetch { source_ref: shown.clone(), source })?;
    ignite_proc::fault::point("import.fetched");
    let id = fetched.id();
    let old = store.by_name::<Image>(&name)?;
    if let Some(existing) = &old {
        let have = existing.status.oci_source.id.clone().unwrap_or_default();
        if have == id {
            return Ok(Imported { object: existing.clone(), outcome: Outcome::Unchanged });
        }
        if opts.mode == ImportMode::Verify {
            return Err(ImportError::Differs { what: "image", name, source_ref: shown, have, new: id });
        }
    }
    let base_dir = crate::gc::base_dir_for(store, &id);
    let base = base_dir.join(BASE_DISK);
    let info_path = base_dir.join(crate::gc::BASE_INFO);
    let known = std::fs::read(&info_path).ok().and_then(|b| serde_json::from_slice::<BaseInfo>(&b).ok());
    let info = match known.filter(|_| base.is_file()) {
        // The same content under another name (or imported before): its base is shared.
        Some(info) => info,
        None => {
            let rootfs = scratch.0.join("rootfs");
            std::fs::create_dir(&rootfs).map_err(io("cannot create", &rootfs))?;
            apply_layers(&fetched, &blobs, &rootfs, &ApplyOptions::default())
                .map_err(|source| ImportError::Fetch { source_ref: shown.clone(), source })?;
            ignite_proc::fault::point("import.applied");
            let has_init = resolves_to_file(&rootfs, "sbin/init");
            let built = scratch.0.join(BASE_DISK);
            let ext4 = ignite_disk::build_ext4(&rootfs, &built, &ignite_disk::Ext4Options::default())
                .map_err(|source| ImportError::Disk { source_ref: shown.clone(), source })?;
            ignite_proc::fault::point("import.built");
            let info = BaseInfo { has_init, content_bytes: ext4.content_bytes };
            std::fs::create_dir_all(&base_dir).map_err(io("cannot create", &base_dir))?;
            // The base first, then what describes it: a base without info.json is rebuilt.
            std::fs::rename(&built, &base).map_err(io("cannot move into place", &base))?;
            let json = serde_json::to_vec(&info).map_err(|e| io("cannot encode", &info_path)(e.into()))?;
            ignite_store::write_atomic(&info_path, &json)?;
            info
        }
    };
    let mut meta = ObjectMeta { name: name.clone(), ..Default::default() };
    meta.annotations.insert(HAS_INIT_ANNOTATION.into(), info.has_init.to_string());
    let mut img = Image::new(meta, ignite_api::ImageSpec { oci: Some(source.clone()) });
    img.status.oci_source = OciSource { id: Some(id), size: Some(Size::from_bytes(info.content_bytes.max(1))) };
    let record = serde_json::to_vec(&blob_list(&fetched)).unwrap_or_default();
    let lock = store.lock()?;
    ignite_proc::fault::point("import.replacing");
    if let Some(old) = store.by_name::<Image>(&name)? {
        // New content under the name: the old object gives way. Its base stays for as long as
        // VMs made from it exist (the collector keeps what a VM's disk names).
        if crate::gc::base_dir(store, &old) == store.dir::<Image>(&old.uid()) {
            let users: Vec<String> = store
                .list::<Vm>()?
                .into_iter()
                .filter(|v| {
                    crate::rootdisk::base_of(&crate::vmdir::VmDir::of(store, &v.uid()))
                        .ok()
                        .flatten()
                        .is_some_and(|b| b.starts_with(store.dir::<Image>(&old.uid())))
                })
                .map(|v| v.metadata.name)
                .collect();
            if !users.is_empty() {
                return Err(ImportError::InUseLegacy { name, users: users.join(", ") });
            }
        }
        store.remove::<Image>(&lock, &old.uid())?;
    }
    let img = store.create_with(&lock, img, |dir, _| std::fs::write(dir.join(crate::gc::BLOBS_FILE), &record))?;
    Ok(Imported { object: img, outcome: Outcome::Imported })
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
pub fn import_kernel(store: &Store, source: &str, opts: &ImportOptions) -> Result<Imported<Kernel>, ImportError> {
    let res = import_kernel_locked(store, source, opts);
    if !matches!(res, Ok(Imported { outcome: Outcome::Reused, .. })) {
        crate::gc::collect_if_idle(store);
    }
    res
}

fn import_kernel_locked(store: &Store, source: &str, opts: &ImportOptions) -> Result<Imported<Kernel>, ImportError> {
    let file = Path::new(source);
    let is_file = !source.contains("://")
        && !source.starts_with("oci:")
        && !source.starts_with("oci-archive:")
        && !source.starts_with("docker-archive:")
        && file.is_file();
    let looks_like_a_path = source.starts_with('/') || source.starts_with("./") || source.starts_with("../");
    if looks_like_a_path && !is_file {
        return Err(ImportError::Io {
            op: "no kernel file",
            path: source.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file: build one with images/kernel/build.sh, or give an OCI kernel image",
            ),
        });
    }
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
        if opts.mode == ImportMode::Reuse {
            return Ok(Imported { object: existing, outcome: Outcome::Reused });
        }
    }
    let _gc = crate::gc::hold(store).map_err(io("cannot lock", store.root()))?;
    let scratch = Scratch::new(store, "kernel")?;
    let vmlinux = scratch.0.join(VMLINUX);
    let mut record: Vec<String> = Vec::new();
    let id = match &oci {
        None => {
            std::fs::copy(file, &vmlinux).map_err(io("cannot copy", file))?;
            format!("sha256:{}", sha256_file(&vmlinux)?)
        }
        Some(r) => {
            let blobs = blobs(store)?;
            let fetched = fetch(r, &blobs, &opts.fetch)
                .map_err(|source| ImportError::Fetch { source_ref: r.to_string(), source })?;
            record = blob_list(&fetched);
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
    if let Some(existing) = store.by_name::<Kernel>(&name)? {
        let have = existing.status.oci_source.id.clone().unwrap_or_default();
        if have == id {
            return Ok(Imported { object: existing, outcome: Outcome::Unchanged });
        }
        if opts.mode == ImportMode::Verify {
            return Err(ImportError::Differs { what: "kernel", name, source_ref: source.to_string(), have, new: id });
        }
    }
    let version = kernel_version(&vmlinux)?;
    let size = std::fs::metadata(&vmlinux).map_err(io("cannot stat", &vmlinux))?.len();
    let meta = ObjectMeta { name: name.clone(), ..Default::default() };
    let mut k = Kernel::new(meta, ignite_api::KernelSpec { oci });
    k.status.version = version;
    k.status.oci_source = OciSource { id: Some(id), size: Some(Size::from_bytes(size.max(1))) };
    let record = serde_json::to_vec(&record).unwrap_or_default();
    let lock = store.lock()?;
    if let Some(old) = store.by_name::<Kernel>(&name)? {
        // VMs name their kernel: they boot the new one at their next start.
        store.remove::<Kernel>(&lock, &old.uid())?;
    }
    let k = store.create_with(&lock, k, |dir, _| {
        std::fs::rename(&vmlinux, dir.join(VMLINUX))?;
        std::fs::write(dir.join(crate::gc::BLOBS_FILE), &record)
    })?;
    Ok(Imported { object: k, outcome: Outcome::Imported })
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
