//! Choosing the accelerator: KVM where this host's KVM can run a Linux guest, TCG where it
//! cannot — and saying which and why.
//!
//! Having `/dev/kvm` is not enough: nested hypervisors (e.g. PVM) expose a /dev/kvm on which
//! a Linux guest dies with KVM_EXIT_INTERNAL_ERROR or stalls. So the first time a kernel is
//! used with `auto`, ignite boots it under KVM with a probe initramfs whose /init prints a
//! marker and powers off, within a short budget. The verdict is cached in
//! `<root>/accel.json`, keyed by kernel (path, size, mtime) and QEMU binary, so the probe
//! runs once per host and kernel.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::Accel;

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

#[derive(Serialize, Deserialize, Default)]
struct Cache {
    entries: Vec<(String, AccelVerdict)>,
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

/// Chooses the accelerator for booting `kernel` with `qemu`. `probe_initrd` builds the probe
/// initramfs at the given path (done by the caller, which owns disk formats).
pub fn choose(
    root: &Path,
    choice: AccelChoice,
    qemu: &Path,
    kernel: &Path,
    probe_initrd: impl FnOnce(&Path) -> Result<(), String>,
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
    let key = cache_key(qemu, kernel);
    let cache_path = root.join("accel.json");
    let mut cache: Cache =
        std::fs::read(&cache_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some((_, v)) = cache.entries.iter().find(|(k, _)| *k == key) {
        return Ok(v.clone());
    }
    let dir = tempdir_in(root)?;
    let initrd = dir.join("probe.cpio");
    probe_initrd(&initrd)?;
    let verdict = probe(qemu, kernel, &initrd);
    let _ = std::fs::remove_dir_all(&dir);
    cache.entries.retain(|(k, _)| *k != key);
    cache.entries.push((key, verdict.clone()));
    if let Ok(bytes) = serde_json::to_vec_pretty(&cache) {
        let _ = ignite_store::write_atomic(&cache_path, &bytes);
    }
    Ok(verdict)
}

fn tempdir_in(root: &Path) -> Result<PathBuf, String> {
    let d = root.join(format!(".accel-probe-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

fn cache_key(qemu: &Path, kernel: &Path) -> String {
    let meta = std::fs::metadata(kernel).ok();
    let (size, mtime) = meta
        .map(|m| {
            (m.len(), m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()))
        })
        .unwrap_or((0, None));
    format!("{}|{}|{}|{}", qemu.display(), kernel.display(), size, mtime.unwrap_or(0))
}

fn probe(qemu: &Path, kernel: &Path, initrd: &Path) -> AccelVerdict {
    let start = Instant::now();
    let mut child = match Command::new(qemu)
        .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off", "-accel", "kvm", "-cpu", "host"])
        .args(["-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-device", "i8042", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 reboot=k panic=-1 pci=off rdinit=/init quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return AccelVerdict { accel: Accel::Tcg, reason: format!("KVM probe could not start QEMU: {e}") },
    };
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.take(1 << 20).read_to_end(&mut s);
        }
        s
    });
    let mut status = None;
    while start.elapsed() < PROBE_BUDGET {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).to_string();
    if out.contains(PROBE_MARKER) {
        return AccelVerdict {
            accel: Accel::Kvm,
            reason: format!("KVM boots Linux guests here (probe reached init in {} ms)", start.elapsed().as_millis()),
        };
    }
    let why = if err.contains("KVM internal error") || err.contains("KVM_EXIT_INTERNAL_ERROR") {
        "the guest died with a KVM internal error (nested/limited KVM)".to_string()
    } else if status.is_none() {
        format!("the guest did not reach init within {} s", PROBE_BUDGET.as_secs())
    } else {
        let first = err.lines().next().unwrap_or("QEMU exited early").to_string();
        format!("the guest did not reach init ({first})")
    };
    AccelVerdict {
        accel: Accel::Tcg,
        reason: format!("/dev/kvm cannot boot a Linux guest on this host: {why}; using TCG"),
    }
}
