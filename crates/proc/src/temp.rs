//! Temporary files written beside the file they become: named `.<file>.tmp-<pid>-<n>`, unique
//! per process and call (parallel writers never share one), and swept once the process that
//! wrote one is gone (a writer killed between its write and its rename or link leaves it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the name of every temporary of `path` starts with: `.<file>.tmp-`.
pub fn prefix(path: &Path) -> String {
    format!(".{}.tmp-", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
}

/// A fresh temporary's path for `path`, in the same directory.
pub fn path_for(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    path.with_file_name(format!("{}{}-{}", prefix(path), std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)))
}

/// Removes the temporaries of `path` whose writer is no longer running.
pub fn sweep(path: &Path) {
    let (Some(dir), prefix) = (path.parent(), prefix(path)) else { return };
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_only_dead_writers_files_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("a.conf");
        let (t1, t2) = (path_for(&file), path_for(&file));
        assert_ne!(t1, t2);
        assert!(t1.file_name().unwrap().to_string_lossy().starts_with(".a.conf.tmp-"));
        // pid_max is at most 2^22: this writer cannot be running.
        let dead = d.path().join(".a.conf.tmp-4194305-0");
        let other = d.path().join(".b.conf.tmp-4194305-0");
        for p in [&t1, &dead, &other, &file] {
            std::fs::write(p, b"x").unwrap();
        }
        sweep(&file);
        assert!(t1.exists(), "a live writer's temporary stays");
        assert!(!dead.exists(), "a dead writer's temporary goes");
        assert!(other.exists() && file.exists(), "nothing else is touched");
    }
}
