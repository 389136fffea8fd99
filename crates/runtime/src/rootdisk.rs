//! A VM's root disk in the layout its backend chose at create ([`RootDisk`]): the files in the
//! VM's directory, the shared base they stand on, what the guest sees, and the drives they are
//! to a VMM. Create, start, the collector and import ask here; no other module knows a
//! layout's files.
//!
//! - `qcow2-overlay`: `disk.qcow2`, a qcow2 overlay whose backing file (named in its header)
//!   is the image's base of the VM's size class.
//! - `raw-layered`: the image's own base (`base.ext4`), attached read-only and shared by every
//!   VM of the image, and `upper.ext4`, the VM's writable layer (an empty ext4 of the VM's disk
//!   size), which the guest's init stacks on the base with overlayfs. `rootdisk.json` records
//!   the layout and the base.
//!
//! Both are O(1) in the image's size to create and copy nothing of it.

use std::path::{Path, PathBuf};

use ignite_disk::DiskError;
use ignite_vmm::{DiskFormat, Drive, RootDisk};
use serde::{Deserialize, Serialize};

use crate::vmdir::VmDir;

/// The full-size base of an image inside its base directory.
pub const BASE_DISK: &str = "base.ext4";

/// Asks for a root-disk layout other than the backend's first choice (`qcow2-overlay`,
/// `raw-layered`): e.g. to boot under QEMU the layout Firecracker boots.
pub const LAYOUT_ANNOTATION: &str = "ignite.weave.works/root-disk";

/// The layout a VM's root disk is created in: the one it asks for, which its backend must
/// boot, else the backend's first choice.
pub fn layout_for(vm: &ignite_api::Vm, caps: &ignite_vmm::Capabilities) -> Result<RootDisk, String> {
    let Some(want) = vm.metadata.annotations.get(LAYOUT_ANNOTATION) else { return Ok(caps.root_disks[0]) };
    let names = |l: &[RootDisk]| l.iter().map(|d| name(*d)).collect::<Vec<_>>().join(", ");
    let all = [RootDisk::Qcow2Overlay, RootDisk::RawLayered];
    let layout = all
        .into_iter()
        .find(|l| name(*l) == want)
        .ok_or_else(|| format!("unknown root-disk layout {want:?} (one of {})", names(&all)))?;
    if !caps.root_disks.contains(&layout) {
        return Err(format!("this VM's VMM boots {} root disks, not {want}", names(caps.root_disks)));
    }
    Ok(layout)
}

/// A layout's name, as in [`LAYOUT_ANNOTATION`].
pub fn name(layout: RootDisk) -> &'static str {
    match layout {
        RootDisk::Qcow2Overlay => "qcow2-overlay",
        RootDisk::RawLayered => "raw-layered",
    }
}

/// A VM's root disk as found in its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub layout: RootDisk,
    /// The VM's own file: the qcow2 overlay, or the writable layer.
    pub disk: PathBuf,
    /// The shared base it stands on (`None`: a qcow2 disk without a backing file).
    pub base: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    layout: RootDisk,
    base: PathBuf,
}

/// The base a VM of `size` bytes in `layout` stands on, built if need be (outside the store's
/// lock: a size-class base may take seconds to grow the first time).
pub fn base_for(layout: RootDisk, image_dir: &Path, size: u64) -> Result<PathBuf, DiskError> {
    let base = image_dir.join(BASE_DISK);
    match layout {
        RootDisk::Qcow2Overlay => ignite_disk::size_class_base(image_dir, &base, size),
        RootDisk::RawLayered => Ok(base),
    }
}

/// Writes the VM's own root-disk files into `dir` (a VM directory being created).
pub fn create(layout: RootDisk, base: &Path, dir: &VmDir, size: u64) -> Result<(), DiskError> {
    match layout {
        RootDisk::Qcow2Overlay => ignite_disk::create_overlay(base, &dir.root_disk(), size),
        RootDisk::RawLayered => {
            ignite_disk::empty_ext4(&dir.upper_disk(), size, "ignite-upper")?;
            let record = Record { layout, base: base.to_path_buf() };
            let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
            ignite_store::write_atomic(&dir.root_record(), &json).map_err(|e| DiskError::Fs {
                op: "write",
                path: dir.root_record(),
                source: std::io::Error::other(e.to_string()),
            })
        }
    }
}

/// The VM's root disk; `None` when it has none.
pub fn read(dir: &VmDir) -> Result<Option<Root>, DiskError> {
    let record = dir.root_record();
    match std::fs::read(&record) {
        Ok(bytes) => {
            let r: Record = serde_json::from_slice(&bytes).map_err(|e| DiskError::Invalid {
                what: "root disk record",
                value: record.display().to_string(),
                reason: e.to_string(),
            })?;
            let disk = dir.upper_disk();
            Ok(disk.is_file().then_some(Root { layout: r.layout, disk, base: Some(r.base) }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let disk = dir.root_disk();
            if !disk.exists() {
                return Ok(None);
            }
            let base = ignite_disk::backing_file(&disk)?;
            Ok(Some(Root { layout: RootDisk::Qcow2Overlay, disk, base }))
        }
        Err(e) => Err(DiskError::Fs { op: "read", path: record, source: e }),
    }
}

/// The shared base the VM in `dir` stands on.
pub fn base_of(dir: &VmDir) -> Result<Option<PathBuf>, DiskError> {
    Ok(read(dir)?.and_then(|r| r.base))
}

/// The files of a root of `layout` in its directory, by name: what a snapshot copies of a VM
/// (into its own directory, under the same names, where the collector finds the base they
/// stand on as in a VM's), what a clone is given, what a revert replaces.
pub fn own_files(layout: RootDisk) -> &'static [&'static str] {
    match layout {
        RootDisk::Qcow2Overlay => &[crate::vmdir::QCOW2_DISK],
        RootDisk::RawLayered => &[crate::vmdir::UPPER_DISK, crate::vmdir::ROOT_RECORD],
    }
}

/// How many drives a root of `layout` takes (volumes follow them).
pub fn drive_count(layout: RootDisk) -> usize {
    match layout {
        RootDisk::Qcow2Overlay => 1,
        RootDisk::RawLayered => 2,
    }
}

/// The guest's name of drive `i` (`/dev/vda`, `/dev/vdb`, ...).
pub fn guest_device(i: usize) -> String {
    format!("/dev/vd{}", (b'a' + i as u8) as char)
}

/// What the guest's init mounts: the root device and, for a layered root, its writable layer.
pub fn guest_root(layout: RootDisk) -> (String, Option<String>) {
    match layout {
        RootDisk::Qcow2Overlay => (guest_device(0), None),
        RootDisk::RawLayered => (guest_device(0), Some(guest_device(1))),
    }
}

/// The root's drives, in the order the guest sees them.
pub fn drives(root: &Root) -> Vec<Drive> {
    match root.layout {
        RootDisk::Qcow2Overlay => vec![Drive {
            path: root.disk.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
            backing: root.base.clone(),
        }],
        RootDisk::RawLayered => vec![
            Drive {
                path: root.base.clone().unwrap_or_default(),
                format: DiskFormat::Raw,
                read_only: true,
                backing: None,
            },
            Drive { path: root.disk.clone(), format: DiskFormat::Raw, read_only: false, backing: None },
        ],
    }
}
