//! VM disks without mount, loop devices or device-mapper.
//!
//! - [`ext4`]: an image's root filesystem tree becomes an ext4 file with `mke2fs -d`
//!   (e2fsprogs writes the tree into the new filesystem directly), and a base is grown once
//!   per size class with `resize2fs`.
//! - [`overlay`]: a VM's root disk is a qcow2 overlay whose backing file is that shared base:
//!   creating one costs the same for a 64 MiB or a 1 GiB image.
//! - [`initramfs`]: a VM's per-boot initramfs (cpio newc) carrying a static busybox, the init
//!   shim and the VM's own files, which the shim copies into the VM's layer before handing
//!   over to the image's `/sbin/init`.
#![forbid(unsafe_code)]

pub mod ext4;
pub mod initramfs;
pub mod overlay;

use std::path::PathBuf;

pub use ext4::{build_ext4, grow_ext4, size_class_base, Ext4Info, Ext4Options};
pub use initramfs::{build_vm_initramfs, guest_init_script, Initramfs, VmBoot};
pub use overlay::{create_overlay, overlay_info, OverlayInfo};

/// Disk failures.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{tool} not found: install {package}")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error("{tool} failed on {path}: {stderr}")]
    Tool { tool: &'static str, path: PathBuf, stderr: String },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk size {want} bytes is smaller than the image's filesystem ({have} bytes): choose a --size of at least {have_mb}MB")]
    TooSmall { want: u64, have: u64, have_mb: u64 },
    #[error("invalid path in initramfs: {0:?}")]
    BadArchivePath(String),
    #[error("unexpected output from {tool}: {message}")]
    Parse { tool: &'static str, message: String },
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.into();
    move |source| DiskError::Io { path, source }
}

/// Runs a tool, mapping "not found" to the package that provides it.
pub(crate) fn run_tool(
    tool: &'static str,
    package: &'static str,
    path: &std::path::Path,
    cmd: &mut std::process::Command,
) -> Result<std::process::Output, DiskError> {
    let out = cmd.stdin(std::process::Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DiskError::ToolMissing { tool, package }
        } else {
            DiskError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(DiskError::Tool { tool, path: path.to_path_buf(), stderr });
    }
    Ok(out)
}
