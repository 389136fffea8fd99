//! Shared image bases, blob records and the garbage collector.
//!
//! Owns: where an image's root filesystem lives (`<root>/base/<key>/`, keyed by the image's
//! content id, so that VMs keep the base they were created on whatever is later imported
//! under the image's name), which blobs an object needs (`blobs.json` beside its metadata),
//! and collecting what nothing needs any more: bases and size classes no image and no VM
//! uses, blobs no image or kernel records, and temporary files of processes that died.
//!
//! References are read from the ground truth: a VM needs the base its root disk stands on
//! (`rootdisk::base_of`: the backing file its `disk.qcow2` names, or its layered root's record), and so
//! does a snapshot (its copy of the VM's `disk.qcow2`). Imports and creates hold the collector's
//! lock shared (`tmp/locks/gc.lock`) from their first fetched blob or chosen base until their
//! object exists; a collection holds it exclusively, so it never takes what an operation in
//! flight is about to reference.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use ignite_api::{Image, Kernel, Snapshot, Vm};
use ignite_store::{Store, StoreError, StoredObject};
use sha2::Digest;

/// Directory of the shared bases under the state root.
pub const BASES_DIR: &str = "base";
pub use crate::rootdisk::BASE_DISK;
/// What an image's base directory records of the image it was built from.
pub const BASE_INFO: &str = "info.json";
/// The blobs an image or kernel object was made from, beside its metadata.
pub const BLOBS_FILE: &str = "blobs.json";

/// The directory holding the base (and size classes) of an image with content id `id`.
pub fn base_dir_for(store: &Store, id: &str) -> PathBuf {
    let key = format!("{:x}", sha2::Sha256::digest(id.as_bytes()));
    store.root().join(BASES_DIR).join(&key[..32])
}

/// Where `image`'s base lives: its own object directory for images imported before bases
/// were shared (read as they are), else the shared directory of its content.
pub fn base_dir(store: &Store, image: &Image) -> PathBuf {
    let own = store.dir::<Image>(&image.uid());
    if own.join(BASE_DISK).is_file() {
        return own;
    }
    base_dir_for(store, image.status.oci_source.id.as_deref().unwrap_or(&image.uid()))
}

/// The collector's lock, held shared by operations that add references and exclusively by a
/// collection.
#[derive(Debug)]
pub struct GcLock(#[allow(dead_code)] File);

fn lock_file(store: &Store) -> std::io::Result<File> {
    let dir = store.root().join("tmp").join("locks");
    std::fs::create_dir_all(&dir)?;
    File::options().create(true).truncate(false).write(true).open(dir.join("gc.lock"))
}

/// Holds off collections while an import or create is in flight.
pub fn hold(store: &Store) -> std::io::Result<GcLock> {
    let f = lock_file(store)?;
    f.lock_shared()?;
    Ok(GcLock(f))
}

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    pub bases: usize,
    pub size_classes: usize,
    pub blobs: usize,
    pub temp_files: usize,
    /// Removed objects whose files a killed removal left behind.
    pub objects: usize,
    pub bytes: u64,
    /// Why blobs were kept although none may be referenced (objects without a record).
    pub blobs_kept: Option<String>,
}

impl std::fmt::Display for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} unused base(s), {} size class(es), {} blob(s) and {} temporary file(s): {:.1} MiB freed",
            self.bases,
            self.size_classes,
            self.blobs,
            self.temp_files,
            self.bytes as f64 / (1024.0 * 1024.0)
        )?;
        if self.objects > 0 {
            write!(f, "; finished {} removal(s) left half-done", self.objects)?;
        }
        Ok(())
    }
}

/// Collects now (`ignite image prune`), waiting for imports and creates in flight. Besides
/// what [`collect_if_idle`] takes, this also drops the size classes of existing images that
/// no VM uses (they are a cache for creates: rebuilt when needed).
pub fn collect(store: &Store) -> Result<Collected, StoreError> {
    let f = lock_file(store).map_err(io_err("cannot open the collector's lock in", store.root()))?;
    f.lock().map_err(io_err("cannot lock", store.root()))?;
    collect_locked(store, true)
}

/// Collects unless an import or create is in flight (then the next collection will): run
/// after removals and imports. Keeps the size classes of existing images, so that creating
/// a VM stays O(1).
pub fn collect_if_idle(store: &Store) -> Option<Collected> {
    let f = lock_file(store).ok()?;
    f.try_lock().ok()?;
    match collect_locked(store, false) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("garbage collection: {e}");
            None
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

fn size_of(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn remove_file(p: &Path, c: &mut Collected) -> bool {
    let n = size_of(p);
    if std::fs::remove_file(p).is_ok() {
        c.bytes += n;
        true
    } else {
        false
    }
}

/// Temporary names whose owner (the pid in the name) is gone: `.tmp-<pid>-…` (blobs),
/// `.<name>.tmp-<pid>…` (atomic writes).
fn dead_temp(name: &str) -> bool {
    let Some(i) = name.find(".tmp-") else { return false };
    let pid = name[i + 5..].split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|p| !crate::sys::pid_exists(p))
}

/// Removes scratch directories whose owning process is gone; returns how many.
pub fn sweep_scratch(base: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(base) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !crate::sys::pid_exists(pid) && std::fs::remove_dir_all(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}

fn collect_locked(store: &Store, size_classes_too: bool) -> Result<Collected, StoreError> {
    // Objects whose removal was killed half-way: their files go first (a VM's disk holds
    // its base).
    let mut c = Collected { objects: store.finish_removals(), ..Default::default() };
    // What VMs use: the base each VM's root disk stands on.
    let mut used: HashSet<PathBuf> = HashSet::new();
    let vm_root = store.root().join(Vm::DIR);
    let mut dirs: Vec<_> = std::fs::read_dir(&vm_root).map_err(io_err("cannot read", &vm_root))?.flatten().collect();
    // A snapshot's copy of a VM's disk stands on the same base.
    dirs.extend(std::fs::read_dir(store.root().join(Snapshot::DIR)).into_iter().flatten().flatten());
    for e in dirs {
        match crate::rootdisk::base_of(&crate::vmdir::VmDir::new(e.path())) {
            Ok(Some(b)) => {
                used.insert(b);
            }
            Ok(None) => {}
            Err(e) => {
                // A disk we cannot read: keep every base rather than guess.
                tracing::warn!("garbage collection skips bases: {e}");
                return Ok(c);
            }
        }
    }
    // What images use: their base directory.
    let images = store.list::<Image>()?;
    let image_bases: HashSet<PathBuf> = images.iter().map(|i| base_dir(store, i)).collect();
    let bases = store.root().join(BASES_DIR);
    if let Ok(rd) = std::fs::read_dir(&bases) {
        for e in rd.flatten() {
            let dir = e.path();
            let has_image = image_bases.contains(&dir);
            let vm_uses = |p: &Path| used.contains(p);
            let files: Vec<PathBuf> =
                std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|f| f.path()).collect()).unwrap_or_default();
            if !has_image && !files.iter().any(|f| vm_uses(f)) {
                let n: u64 = files.iter().map(|f| size_of(f)).sum();
                if std::fs::remove_dir_all(&dir).is_ok() {
                    c.bases += 1;
                    c.bytes += n;
                }
                continue;
            }
            for f in files {
                let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let size_class = name.starts_with("base-") && name.ends_with(".ext4");
                if size_class && !vm_uses(&f) && (size_classes_too || !has_image) {
                    // Rebuilt in milliseconds (sparse copy + resize2fs) when a VM needs it again.
                    if remove_file(&f, &mut c) {
                        c.size_classes += 1;
                    }
                } else if name == BASE_DISK && !has_image && !vm_uses(&f) {
                    // No image can make new VMs from it; the VMs that remain use size classes.
                    if remove_file(&f, &mut c) {
                        c.bases += 1;
                    }
                } else if dead_temp(&name) && remove_file(&f, &mut c) {
                    c.temp_files += 1;
                }
            }
        }
    }
    // Blobs: those recorded by some image or kernel.
    let kernels = store.list::<Kernel>()?;
    let mut wanted: HashSet<String> = HashSet::new();
    let mut unrecorded = Vec::new();
    let records = images
        .iter()
        .map(|i| (i.metadata.name.clone(), store.dir::<Image>(&i.uid())))
        .chain(kernels.iter().map(|k| (k.metadata.name.clone(), store.dir::<Kernel>(&k.uid()))));
    for (name, dir) in records {
        match std::fs::read(dir.join(BLOBS_FILE)).ok().and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok()) {
            Some(list) => wanted.extend(list.into_iter().filter_map(|d| d.strip_prefix("sha256:").map(String::from))),
            None => unrecorded.push(name),
        }
    }
    let blob_dir = store.root().join("blobs").join("sha256");
    if let Ok(rd) = std::fs::read_dir(&blob_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let unwanted = !name.starts_with('.') && !wanted.contains(&name);
            if name.starts_with('.') {
                if dead_temp(&name) && remove_file(&e.path(), &mut c) {
                    c.temp_files += 1;
                }
            } else if unwanted && unrecorded.is_empty() && remove_file(&e.path(), &mut c) {
                c.blobs += 1;
            }
        }
    }
    if !unrecorded.is_empty() {
        c.blobs_kept = Some(format!(
            "blobs kept: {} imported before blobs were recorded (re-import them to record theirs)",
            unrecorded.join(", ")
        ));
    }
    // Scratch directories of imports whose process died.
    c.temp_files += sweep_scratch(&store.root().join("tmp"));
    // Atomic-write leftovers in object directories.
    for dir in ignite_store::KIND_DIRS {
        let Ok(rd) = std::fs::read_dir(store.root().join(dir)) else { continue };
        for obj in rd.flatten() {
            let Ok(files) = std::fs::read_dir(obj.path()) else { continue };
            for f in files.flatten() {
                if dead_temp(&f.file_name().to_string_lossy()) && remove_file(&f.path(), &mut c) {
                    c.temp_files += 1;
                }
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_of_dead_processes() {
        assert!(dead_temp(".tmp-999999999-0x7ffd"));
        assert!(dead_temp(".metadata.json.tmp-999999999"));
        assert!(!dead_temp(&format!(".tmp-{}-x", std::process::id())));
        assert!(!dead_temp("metadata.json"));
    }
}
