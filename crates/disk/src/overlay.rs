//! qcow2 copy-on-write overlays over a raw ext4 base: a VM's root disk. `qemu-img create`
//! writes only a header and empty tables, so the cost does not depend on the base's size
//! (see the figures printed by `benches/disk.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, run_tool, DiskError};

/// What `qemu-img info` says of an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayInfo {
    pub virtual_size: u64,
    pub backing: Option<PathBuf>,
    pub actual_size: u64,
}

/// Creates `out`, a qcow2 image of `virtual_size` bytes backed by the raw file `backing`.
pub fn create_overlay(backing: &Path, out: &Path, virtual_size: u64) -> Result<(), DiskError> {
    let backing = std::path::absolute(backing).map_err(io_err(backing))?;
    if !backing.is_file() {
        return Err(DiskError::Io {
            path: backing,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "backing file missing"),
        });
    }
    let mut tmp = out.as_os_str().to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let res = run_tool(
        "qemu-img",
        "qemu-utils",
        &tmp,
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-o", "cluster_size=65536", "-b"])
            .arg(&backing)
            .arg(&tmp)
            .arg(virtual_size.to_string()),
    )
    .and_then(|_| std::fs::rename(&tmp, out).map_err(io_err(out)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads an image's size and backing file with `qemu-img info`.
pub fn overlay_info(path: &Path) -> Result<OverlayInfo, DiskError> {
    let out = run_tool(
        "qemu-img",
        "qemu-utils",
        path,
        Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(path),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| DiskError::Parse { tool: "qemu-img", message: e.to_string() })?;
    Ok(OverlayInfo {
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
        backing: v["full-backing-filename"].as_str().or(v["backing-filename"].as_str()).map(PathBuf::from),
        actual_size: v["actual-size"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_over_a_sparse_base() {
        let d = tempfile::tempdir().unwrap();
        for size in [64u64 << 20, 1 << 30] {
            let base = d.path().join(format!("base-{size}"));
            std::fs::File::create(&base).unwrap().set_len(size).unwrap();
            let ov = d.path().join(format!("ov-{size}.qcow2"));
            create_overlay(&base, &ov, 4 << 30).unwrap();
            let info = overlay_info(&ov).unwrap();
            assert_eq!(info.virtual_size, 4 << 30);
            assert_eq!(info.backing.as_deref(), Some(base.as_path()));
            assert!(std::fs::metadata(&ov).unwrap().len() < 1 << 20, "overlay should be tiny");
            let check = Command::new("qemu-img").args(["check", "-q"]).arg(&ov).status().unwrap();
            assert!(check.success());
        }
        assert!(create_overlay(&d.path().join("missing"), &d.path().join("x.qcow2"), 1 << 30).is_err());
        assert!(!d.path().join("x.qcow2").exists());
    }
}
