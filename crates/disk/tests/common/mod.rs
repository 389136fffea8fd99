//! Helpers shared by the integration tests: they run the real tools (e2fsprogs, qemu-img,
//! cpio, QEMU) and read images without mounting them.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Prints a loud skip line (visible with `--nocapture` and in the test's captured output).
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        let msg = format!($($arg)*);
        println!("SKIPPED: {msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    }};
}

pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool} >/dev/null")).status().is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Output of `debugfs -R REQ IMG` (read-only).
pub fn debugfs(img: &Path, req: &str) -> String {
    let o = Command::new("debugfs").arg("-R").arg(req).arg(img).output().expect("run debugfs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The word after `name` (e.g. "User:") in `debugfs stat` output.
pub fn field<'a>(stat: &'a str, name: &str) -> &'a str {
    let mut words = stat.split_whitespace();
    while let Some(w) = words.next() {
        if w == name {
            return words.next().unwrap_or("");
        }
    }
    panic!("no {name} in {stat}")
}

/// `e2fsck -fn` finds nothing to fix.
pub fn assert_fsck_clean(img: &Path) {
    let o = Command::new("e2fsck").arg("-fn").arg(img).output().expect("run e2fsck");
    assert!(
        o.status.success(),
        "e2fsck -fn {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Bytes allocated on disk (st_blocks × 512).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A busybox tree: /bin/busybox plus a symlink per applet.
pub fn busybox_tree(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

pub fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}
