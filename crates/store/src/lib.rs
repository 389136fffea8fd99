//! The on-disk object store.
//!
//! Layout under the root (`/var/lib/ignite`, or `--root` / `IGNITE_ROOT`):
//!
//! ```text
//! .lock                      flock: held for every read-modify-write of metadata
//! vm/<uid>/metadata.json     one directory per object; other per-object files live beside
//! image/<uid>/metadata.json
//! kernel/<uid>/metadata.json
//! snapshot/<uid>/metadata.json
//! ```
//!
//! Guarantees: an object directory appears whole (it is prepared as `.tmp-<uid>` and renamed
//! into place) and disappears whole (renamed to `.rm-<uid>`, then deleted); `metadata.json`
//! is replaced by write + fsync + rename + directory fsync, so readers see the old or the new
//! object, never a torn one; creating an object checks name uniqueness under the store lock,
//! so concurrent processes can never create two objects with one name. Leftover `.tmp-*` and
//! `.rm-*` directories from a crash are removed the next time the lock is taken.
#![forbid(unsafe_code)]

mod lock;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ignite_api::{Image, Kernel, ObjectMeta, Snapshot, Uid, Vm};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use lock::StoreLock;

/// Default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/ignite";
/// Metadata file name inside an object directory.
pub const METADATA_FILE: &str = "metadata.json";
/// Largest metadata file read back.
const MAX_METADATA_BYTES: u64 = 4 << 20;

/// A kind of object the store keeps.
pub trait StoredObject: Serialize + DeserializeOwned + Clone {
    /// Directory under the root, e.g. `vm`.
    const DIR: &'static str;
    /// Kind name for messages, e.g. `VM`.
    const KIND: &'static str;
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

macro_rules! stored {
    ($t:ty, $dir:literal, $kind:literal) => {
        impl StoredObject for $t {
            const DIR: &'static str = $dir;
            const KIND: &'static str = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
stored!(Vm, "vm", "VM");
stored!(Image, "image", "image");
stored!(Kernel, "kernel", "kernel");
stored!(Snapshot, "snapshot", "snapshot");

/// The directory of every kind the store keeps.
pub const KIND_DIRS: [&str; 4] = [Vm::DIR, Image::DIR, Kernel::DIR, Snapshot::DIR];

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt object metadata in {path}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no {kind} matches {query:?}")]
    NotFound { kind: &'static str, query: String },
    #[error("{query:?} is ambiguous: it matches {kind}s {}; give more of the name or ID", .candidates.join(", "))]
    Ambiguous { kind: &'static str, query: String, candidates: Vec<String> },
    #[error("a {kind} named {name:?} already exists (ID {uid})")]
    NameTaken { kind: &'static str, name: String, uid: String },
    #[error("a {kind} with ID {uid} already exists")]
    UidTaken { kind: &'static str, uid: String },
    #[error("{kind} has no name")]
    NoName { kind: &'static str },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

/// Handle on a state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in KIND_DIRS {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err("cannot create store directory", &p))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store-wide lock (blocking). Cleans up leftovers of crashed operations.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let l = StoreLock::acquire(&self.root.join(".lock"))?;
        for dir in KIND_DIRS {
            self.sweep(&self.root.join(dir));
        }
        Ok(l)
    }

    fn sweep(&self, dir: &Path) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".rm-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Directory of the object with `uid`.
    pub fn dir<T: StoredObject>(&self, uid: &str) -> PathBuf {
        self.root.join(T::DIR).join(uid)
    }

    /// All objects of a kind, oldest first.
    pub fn list<T: StoredObject>(&self) -> Result<Vec<T>, StoreError> {
        let dir = self.root.join(T::DIR);
        let rd = fs::read_dir(&dir).map_err(io_err("cannot read", &dir))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("cannot read", &dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.parse::<Uid>().is_err() {
                continue;
            }
            match self.read::<T>(&name) {
                Ok(o) => out.push(o),
                // Removed between read_dir and read: not an error.
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a: &T, b: &T| (a.meta().created, &a.meta().name).cmp(&(b.meta().created, &b.meta().name)));
        Ok(out)
    }

    fn read<T: StoredObject>(&self, uid: &str) -> Result<T, StoreError> {
        let path = self.dir::<T>(uid).join(METADATA_FILE);
        let f = File::open(&path).map_err(io_err("cannot open", &path))?;
        let len = f.metadata().map_err(io_err("cannot stat", &path))?.len();
        if len > MAX_METADATA_BYTES {
            return Err(StoreError::Io {
                op: "metadata too large",
                path,
                source: io::Error::other(format!("{len} bytes")),
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        io::Read::read_to_end(&mut io::Read::take(f, MAX_METADATA_BYTES), &mut buf)
            .map_err(io_err("cannot read", &path))?;
        serde_json::from_slice(&buf).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// The object with exactly this UID.
    pub fn get<T: StoredObject>(&self, uid: &str) -> Result<T, StoreError> {
        if uid.parse::<Uid>().is_err() {
            return Err(StoreError::NotFound { kind: T::KIND, query: uid.to_string() });
        }
        self.read(uid).map_err(|e| match e {
            StoreError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                StoreError::NotFound { kind: T::KIND, query: uid.to_string() }
            }
            e => e,
        })
    }

    /// Finds an object by exact UID, exact name, or a prefix of either that matches only one.
    pub fn resolve<T: StoredObject>(&self, query: &str) -> Result<T, StoreError> {
        let all = self.list::<T>()?;
        resolve_in(all, query)
    }

    /// Finds an object by exact name.
    pub fn by_name<T: StoredObject>(&self, name: &str) -> Result<Option<T>, StoreError> {
        Ok(self.list::<T>()?.into_iter().find(|o| o.meta().name == name))
    }

    /// Stores a new object. Assigns a UID and creation time when missing; fails if the name or
    /// UID is taken. Must be called with the lock held (`_lock` proves it).
    pub fn create<T: StoredObject>(&self, lock: &StoreLock, obj: T) -> Result<T, StoreError> {
        self.create_with(lock, obj, |_, _| Ok(()))
    }

    /// Like [`Store::create`], but `populate` first fills the new object's directory (given the
    /// directory and the object with its UID assigned): the object appears with its files, or
    /// not at all.
    pub fn create_with<T: StoredObject>(
        &self,
        _lock: &StoreLock,
        mut obj: T,
        populate: impl FnOnce(&Path, &T) -> io::Result<()>,
    ) -> Result<T, StoreError> {
        if obj.meta().name.is_empty() {
            return Err(StoreError::NoName { kind: T::KIND });
        }
        let all = self.list::<T>()?;
        if let Some(o) = all.iter().find(|o| o.meta().name == obj.meta().name) {
            return Err(StoreError::NameTaken {
                kind: T::KIND,
                name: o.meta().name.clone(),
                uid: o.meta().uid.map(|u| u.to_string()).unwrap_or_default(),
            });
        }
        let uid = match obj.meta().uid {
            Some(u) => {
                if self.dir::<T>(u.as_str()).exists() {
                    return Err(StoreError::UidTaken { kind: T::KIND, uid: u.to_string() });
                }
                u
            }
            None => loop {
                let u = Uid::random();
                if !self.dir::<T>(u.as_str()).exists() {
                    break u;
                }
            },
        };
        obj.meta_mut().uid = Some(uid);
        if obj.meta().created.is_none() {
            obj.meta_mut().created = Some(chrono::Utc::now());
        }
        let parent = self.root.join(T::DIR);
        let tmp = parent.join(format!(".tmp-{uid}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io_err("cannot create", &tmp))?;
        if let Err(e) = populate(&tmp, &obj) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(StoreError::Io { op: "cannot prepare the files of", path: tmp, source: e });
        }
        write_json_atomic(&tmp.join(METADATA_FILE), &obj)?;
        let dst = self.dir::<T>(uid.as_str());
        fs::rename(&tmp, &dst).map_err(io_err("cannot rename into place", &dst))?;
        fsync_dir(&parent)?;
        Ok(obj)
    }

    /// Replaces an existing object's metadata. Call with the lock held when the new value was
    /// computed from a read (read-modify-write).
    pub fn update<T: StoredObject>(&self, obj: &T) -> Result<(), StoreError> {
        let uid = obj.meta().uid.ok_or(StoreError::NoName { kind: T::KIND })?;
        let dir = self.dir::<T>(uid.as_str());
        if !dir.is_dir() {
            return Err(StoreError::NotFound { kind: T::KIND, query: uid.to_string() });
        }
        write_json_atomic(&dir.join(METADATA_FILE), obj)
    }

    /// Locks, re-reads the object, applies `f` and writes the result back.
    pub fn modify<T: StoredObject, R>(&self, uid: &str, f: impl FnOnce(&mut T) -> R) -> Result<(T, R), StoreError> {
        let _l = self.lock()?;
        let mut obj = self.get::<T>(uid)?;
        let r = f(&mut obj);
        self.update(&obj)?;
        Ok((obj, r))
    }

    /// Deletes an object and everything in its directory. Call with the lock held.
    pub fn remove<T: StoredObject>(&self, _lock: &StoreLock, uid: &str) -> Result<(), StoreError> {
        let dir = self.dir::<T>(uid);
        let gone = self.root.join(T::DIR).join(format!(".rm-{uid}"));
        match fs::rename(&dir, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { kind: T::KIND, query: uid.to_string() })
            }
            Err(e) => return Err(io_err("cannot remove", &dir)(e)),
        }
        fsync_dir(&self.root.join(T::DIR))?;
        match fs::remove_dir_all(&gone) {
            // Finished by a collection running beside us (see `finish_removals`).
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(io_err("cannot remove", &gone)),
        }
    }

    /// Finishes removals that a killed process left half-done: a `.rm-<uid>` directory is an
    /// object already removed (renamed away under the lock) whose files were not all deleted.
    /// Safe without the lock: nothing reads or refers to such a directory any more. Returns
    /// how many were finished.
    pub fn finish_removals(&self) -> usize {
        let mut n = 0;
        for kind in KIND_DIRS {
            let Ok(rd) = fs::read_dir(self.root.join(kind)) else { continue };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".rm-") && fs::remove_dir_all(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }
}

/// Picks the object that `query` names: exact UID, exact name, then a unique prefix of a UID
/// or name.
pub fn resolve_in<T: StoredObject>(all: Vec<T>, query: &str) -> Result<T, StoreError> {
    let uid_of = |o: &T| o.meta().uid.map(|u| u.to_string()).unwrap_or_default();
    if query.is_empty() {
        return Err(StoreError::NotFound { kind: T::KIND, query: String::new() });
    }
    if let Some(o) = all.iter().find(|o| uid_of(o) == query) {
        return Ok(o.clone());
    }
    if let Some(o) = all.iter().find(|o| o.meta().name == query) {
        return Ok(o.clone());
    }
    let matches: Vec<&T> =
        all.iter().filter(|o| uid_of(o).starts_with(query) || o.meta().name.starts_with(query)).collect();
    match matches.len() {
        0 => Err(StoreError::NotFound { kind: T::KIND, query: query.to_string() }),
        1 => Ok(matches[0].clone()),
        _ => Err(StoreError::Ambiguous {
            kind: T::KIND,
            query: query.to_string(),
            candidates: matches.iter().map(|o| format!("{} ({})", o.meta().name, uid_of(o))).collect(),
        }),
    }
}

/// Writes `value` as pretty JSON to `path` atomically: temp file, fsync, rename, dir fsync.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let mut data =
        serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt { path: path.into(), source })?;
    data.push(b'\n');
    write_atomic(path, &data)
}

/// Replaces `path` with `data` atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    replace(path, data, true)
}

/// Replaces `path` with `data` atomically for readers while the host runs (temporary file,
/// rename), without syncing: for a file made again before each use, which a power loss may
/// leave empty or old but never half-written under its name. A VM's files about one run of
/// its supervisor (its boot configuration, its jail's instructions, where its cgroup is),
/// which a power loss ends.
pub fn write_atomic_unsynced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    replace(path, data, false)
}

fn replace(path: &Path, data: &[u8], sync: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Unique per call: two threads of one process may replace the same file at once.
    let tmp = ignite_proc::temp::path_for(path);
    let res = (|| {
        let mut f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        f.write_all(data).map_err(io_err("cannot write", &tmp))?;
        if sync {
            f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(io_err("cannot rename into place", path))?;
        if sync {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("cannot sync", dir))
}

#[cfg(test)]
mod tests;
