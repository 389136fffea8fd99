//! Choosing the accelerator: KVM where this host's KVM can run a Linux guest, software
//! emulation where it cannot — and saying which and why.
//!
//! Having `/dev/kvm` is not enough: nested hypervisors (e.g. PVM) expose a /dev/kvm on which
//! a Linux guest dies with KVM_EXIT_INTERNAL_ERROR or stalls. So the first time a kernel is
//! used with `auto`, the backend boots it under KVM with a probe initramfs whose /init prints
//! [`PROBE_MARKER`] and powers off, within [`PROBE_BUDGET`]. The verdict is cached in
//! `<state dir>/accel.json`, keyed by the backend's key (kernel path, size, mtime, VMM
//! binary), so the probe runs once per host, VMM and kernel. [`cached`] is that cache, for
//! other facts about a kernel too (what it handles).

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How guest CPUs execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation (no KVM needed; ~10-50x slower guest CPU).
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" | "" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            o => Err(format!("invalid accelerator {o:?}: use kvm, tcg or auto")),
        }
    }
}

/// The accelerator chosen and the reason, for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    pub accel: Accel,
    pub reason: String,
}

/// A cache file's contents: (key, value), oldest first.
#[derive(Serialize, Deserialize)]
struct Cache<T> {
    entries: Vec<(String, T)>,
}

/// Marker the probe's init prints.
pub const PROBE_MARKER: &str = "IGNITE-KVM-PROBE-OK";
/// Time a KVM guest gets to reach the marker.
pub const PROBE_BUDGET: Duration = Duration::from_secs(6);

/// Whether /dev/kvm can be opened for read and write.
pub fn kvm_device_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// The part of choosing that every backend shares: an explicit choice is checked and taken;
/// `auto` without a usable /dev/kvm is TCG; else the cached verdict for `key`, or `probe`'s
/// (given the path of a freshly written probe initramfs), cached.
pub fn choose_cached(
    state_dir: &Path,
    choice: AccelChoice,
    key: &str,
    probe_initrd: &dyn Fn(&Path) -> Result<(), String>,
    probe: impl FnOnce(&Path) -> AccelVerdict,
) -> Result<AccelVerdict, String> {
    match choice {
        AccelChoice::Tcg => return Ok(AccelVerdict { accel: Accel::Tcg, reason: "requested (--accel tcg)".into() }),
        AccelChoice::Kvm => {
            kvm_device_usable().map_err(|e| format!("--accel kvm: {e}"))?;
            return Ok(AccelVerdict { accel: Accel::Kvm, reason: "requested (--accel kvm)".into() });
        }
        AccelChoice::Auto => {}
    }
    if let Err(e) = kvm_device_usable() {
        return Ok(AccelVerdict { accel: Accel::Tcg, reason: format!("KVM unavailable ({e}): software emulation") });
    }
    cached(&state_dir.join("accel.json"), key, || {
        let dir = state_dir.join(format!(".accel-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let initrd = dir.join("probe.cpio");
        let verdict = probe_initrd(&initrd).map(|()| probe(&initrd));
        let _ = std::fs::remove_dir_all(&dir);
        verdict
    })
}

/// Entries a cache file keeps (the oldest go first): one per kernel and VMM in use.
const CACHE_ENTRIES: usize = 64;

/// The entry `key` of the JSON cache file at `path`, else `compute`'s answer, stored there
/// (an error is not). The file is replaced atomically: a reader sees the old cache or the new
/// one; of two writers at once one entry may be lost, and computed again the next time.
pub fn cached<T: Serialize + DeserializeOwned + Clone, E>(
    path: &Path,
    key: &str,
    compute: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let mut cache: Cache<T> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| Cache { entries: Vec::new() });
    if let Some((_, v)) = cache.entries.iter().find(|(k, _)| k == key) {
        return Ok(v.clone());
    }
    let value = compute()?;
    cache.entries.retain(|(k, _)| k != key);
    cache.entries.push((key.to_string(), value.clone()));
    let excess = cache.entries.len().saturating_sub(CACHE_ENTRIES);
    cache.entries.drain(..excess);
    // Of this writer alone; a killed writer's is swept by the next.
    ignite_proc::temp::sweep(path);
    let tmp = ignite_proc::temp::path_for(path);
    if let Ok(bytes) = serde_json::to_vec_pretty(&cache) {
        if std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(value)
}

/// A cache key naming the kernel by path, size and mtime, and the VMM binary.
pub fn cache_key(vmm: &Path, kernel: &Path) -> String {
    let meta = std::fs::metadata(kernel).ok();
    let (size, mtime) = meta
        .map(|m| {
            (m.len(), m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()))
        })
        .unwrap_or((0, None));
    format!("{}|{}|{}|{}", vmm.display(), kernel.display(), size, mtime.unwrap_or(0))
}
