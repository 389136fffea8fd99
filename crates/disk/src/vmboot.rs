//! A VM's per-boot initramfs: a static busybox, the init shim and the VM's own files.
//!
//! Owns: what the archive holds and the shim ([`guest_init_script`], `src/init.sh`). The
//! kernel (command line `... rdinit=/init`) unpacks the archive and runs the shim as PID 1;
//! the shim mounts the VM's root disk, copies `/ignite/files/*` into it (so the files land in
//! the VM's own copy-on-write layer, never in the shared base), sets the hostname, prints
//! `ignite-init: provisioned <hostname>` and `switch_root`s to the image's init, which stays
//! PID 1. A root device that never appears (5 s) or a missing init is reported on the console
//! as `ignite-init: error: ...` and the VM powers off instead of hanging.
//!
//! Archive layout:
//!
//! ```text
//! dev/console            char 5:1 (init's stdio before devtmpfs is mounted)
//! dev/null               char 1:3 (the shim's redirections before devtmpfs is mounted)
//! bin/busybox            the host's static busybox (0755)
//! bin/<applet>           -> busybox, for each of SHIM_APPLETS
//! init                   the shim (0755)
//! ignite/env             IGNITE_HOSTNAME, IGNITE_ROOT, IGNITE_UPPER, IGNITE_INIT,
//!                        IGNITE_AGENT_VSOCK, IGNITE_IPV4_ONLY (shell-quoted)
//! ignite/mounts          "<device> <guest path>" per extra disk
//! ignite/agent           the static guest agent, when the VM has one (0755)
//! ignite/files/etc/hostname, etc/hosts
//! ignite/files/etc/resolv.conf            applied only where the image has none (or a dangling link)
//! ignite/files/root/.ssh/authorized_keys  (directories 0700, file 0600)
//! ignite/files/<vm path>...               --copy-files (later entries win)
//! ```
//!
//! The shim takes its parameters from `ignite/env` rather than being generated, so the script
//! is one static text that tests and reviewers can read as it runs.

use std::path::{Path, PathBuf};

use crate::{fs_err, DiskError, Initramfs};

/// What a VM's initramfs carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmBoot {
    /// A static busybox on the host (Debian's busybox-static: `/bin/busybox`).
    pub busybox: PathBuf,
    pub hostname: String,
    /// Contents of `/etc/hosts`.
    pub hosts: String,
    /// Installed only where the image has no `/etc/resolv.conf` (or a dangling link).
    pub resolv_conf: Option<String>,
    /// Contents of `/root/.ssh/authorized_keys`.
    pub authorized_keys: Option<String>,
    /// Host path → absolute guest path; directories are copied recursively (a host path that
    /// is a symlink is followed; symlinks inside a directory are kept as links). Later entries
    /// win over earlier ones and over the generated files.
    pub copy_files: Vec<(PathBuf, String)>,
    /// The image's init (PID 1 after the hand-over).
    pub init: String,
    /// The VM's root disk as the guest sees it.
    pub root_device: String,
    /// Extra block devices to mount before the hand-over: (device, guest mount path).
    pub mounts: Vec<(String, String)>,
    /// The VM's writable layer, when its root is the read-only `root_device` under overlayfs
    /// (the `raw-layered` root disk).
    pub root_upper: Option<String>,
    /// The static guest agent to install at `/.ignite/ignite-agent` and start before the
    /// hand-over.
    pub agent: Option<GuestAgent>,
    /// The guest interfaces whose network gives no IPv6 address: the shim turns IPv6 off on
    /// them (`disable_ipv6`), as Docker does on a container's interface of an IPv4-only
    /// network. No link-local address, duplicate address detection or router solicitation;
    /// an image that wants IPv6 there turns it on again (systemd-networkd does).
    pub ipv4_only: Vec<String>,
}

/// The guest agent and its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAgent {
    /// The static binary on the host.
    pub binary: PathBuf,
    /// The vsock port it listens on; `None`: the virtio-serial port `org.ignite.agent.0`.
    pub vsock_port: Option<u32>,
}

impl Default for VmBoot {
    fn default() -> Self {
        VmBoot {
            busybox: "/bin/busybox".into(),
            hostname: String::new(),
            hosts: "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into(),
            resolv_conf: None,
            authorized_keys: None,
            copy_files: Vec::new(),
            init: "/sbin/init".into(),
            root_device: "/dev/vda".into(),
            root_upper: None,
            mounts: Vec::new(),
            agent: None,
            ipv4_only: Vec::new(),
        }
    }
}

/// The init shim (busybox sh), stored as `/init` in every VM initramfs.
pub fn guest_init_script() -> &'static str {
    include_str!("init.sh")
}

/// The busybox applets the shim runs, linked in `bin/` by the archive itself: `busybox
/// --install` at boot took ~0.2 s of it under TCG (~270 links).
pub const SHIM_APPLETS: &[&str] = &[
    "chroot",
    "cp",
    "find",
    "mdev",
    "mkdir",
    "mount",
    "poweroff",
    "readlink",
    "rm",
    "sh",
    "sleep",
    "switch_root",
    "sync",
    "umount",
];

/// Single-quotes a value for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> DiskError {
    DiskError::Invalid { what, value: value.to_string(), reason: reason.into() }
}

/// An absolute guest path as an archive path: `/root//x/` → `root/x`.
fn guest_rel(what: &'static str, p: &str) -> Result<String, DiskError> {
    if !p.starts_with('/') {
        return Err(invalid(what, p, "must be an absolute path in the guest"));
    }
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.contains(&"..") {
        return Err(invalid(what, p, "must not contain `..`"));
    }
    if parts.is_empty() {
        return Err(invalid(what, p, "must name something below /"));
    }
    Ok(parts.join("/"))
}

/// An absolute path without whitespace or control characters (devices, mount paths, init).
fn plain_abs(what: &'static str, p: &str) -> Result<(), DiskError> {
    guest_rel(what, p)?;
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(what, p, "must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Refuses a dynamically linked busybox: the initramfs has no libc for it, and the kernel
/// would only say "No working init found". Anything that is not an x86-64 ELF is left to the
/// kernel.
fn check_static(busybox: &Path) -> Result<(), DiskError> {
    if ignite_proc::elf::static_x86_64(busybox).map_err(fs_err("read", busybox))? == Some(false) {
        return Err(invalid(
            "busybox",
            &busybox.display().to_string(),
            "dynamically linked: the guest init needs a static busybox (install busybox-static)",
        ));
    }
    Ok(())
}

/// Builds the initramfs of one VM boot at `out` (atomically).
pub fn build_vm_initramfs(spec: &VmBoot, out: &Path) -> Result<(), DiskError> {
    let h = &spec.hostname;
    if h.is_empty() || h.len() > 64 || !h.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
        return Err(invalid("hostname", h, "use 1 to 64 letters, digits, `-`, `.` or `_`"));
    }
    plain_abs("init", &spec.init)?;
    plain_abs("root device", &spec.root_device)?;
    if let Some(u) = &spec.root_upper {
        plain_abs("writable layer device", u)?;
    }
    for name in &spec.ipv4_only {
        if name.is_empty()
            || name.len() > 15
            || name == "."
            || name == ".."
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(invalid("interface name", name, "use 1 to 15 letters, digits, `-`, `.` or `_`"));
        }
    }
    check_static(&spec.busybox)?;

    let mut i = Initramfs::new();
    // The shim's mount points are in the archive: a `mkdir` would be a process (a fork under
    // TCG costs the shim 5-15 ms).
    for dir in ["dev", "proc", "sys", "newroot"] {
        i.add_dir(dir, 0o755)?;
    }
    i.add_char_device("dev/console", 0o600, 5, 1)?;
    // Before devtmpfs is mounted, a redirection to /dev/null would create a plain file here.
    i.add_char_device("dev/null", 0o666, 1, 3)?;
    i.add_dir("bin", 0o755)?;
    i.add_file_from("bin/busybox", &spec.busybox, 0o755)?;
    for applet in SHIM_APPLETS {
        i.add_symlink(&format!("bin/{applet}"), "busybox")?;
    }
    i.add_file("init", guest_init_script().as_bytes(), 0o755)?;
    let env = format!(
        "IGNITE_HOSTNAME={}\nIGNITE_ROOT={}\nIGNITE_UPPER={}\nIGNITE_INIT={}\nIGNITE_AGENT_VSOCK={}\nIGNITE_IPV4_ONLY={}\n",
        sh_quote(h),
        sh_quote(&spec.root_device),
        sh_quote(spec.root_upper.as_deref().unwrap_or_default()),
        sh_quote(&spec.init),
        spec.agent.as_ref().and_then(|a| a.vsock_port).map(|p| p.to_string()).unwrap_or_default(),
        sh_quote(&spec.ipv4_only.join(" ")),
    );
    i.add_file("ignite/env", env.as_bytes(), 0o644)?;
    let mut mounts = String::new();
    for (dev, mp) in &spec.mounts {
        plain_abs("volume device", dev)?;
        plain_abs("volume mount path", mp)?;
        mounts.push_str(&format!("{dev} {mp}\n"));
    }
    i.add_file("ignite/mounts", mounts.as_bytes(), 0o644)?;
    if let Some(a) = &spec.agent {
        i.add_file_from("ignite/agent", &a.binary, 0o755)?;
    }

    i.add_dir("ignite/files", 0o755)?;
    i.add_dir("ignite/files/etc", 0o755)?;
    i.add_file("ignite/files/etc/hostname", format!("{h}\n").as_bytes(), 0o644)?;
    i.add_file("ignite/files/etc/hosts", spec.hosts.as_bytes(), 0o644)?;
    if let Some(r) = &spec.resolv_conf {
        i.add_file("ignite/files/etc/resolv.conf", r.as_bytes(), 0o644)?;
    }
    if let Some(k) = &spec.authorized_keys {
        i.add_dir("ignite/files/root", 0o700)?;
        i.add_dir("ignite/files/root/.ssh", 0o700)?;
        i.add_file("ignite/files/root/.ssh/authorized_keys", k.as_bytes(), 0o600)?;
    }
    for (host, vm) in &spec.copy_files {
        let rel = guest_rel("--copy-files guest path", vm)?;
        // The named file itself, when the host path is a link to it; links inside a copied
        // directory stay links.
        let host = std::fs::canonicalize(host).map_err(fs_err("read", host))?;
        i.add_host_tree(&format!("ignite/files/{rel}"), &host)?;
    }
    i.write_to(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command at a command position of the shim is a shell builtin, one of its own
    /// functions, or linked in `bin/` (the archive has no other applets).
    #[test]
    fn the_shim_runs_only_linked_applets() {
        let builtins = [
            "if", "then", "else", "elif", "fi", "for", "while", "do", "done", "case", "esac", "in", "echo", "read",
            "cd", "exec", "export", "exit", "return", "continue", "break", "set", "local", "true", "false", "test",
            "[", ".", ":", "busybox",
        ];
        let functions = ["fail", "resolve", "remove_if_there"];
        let mut missing = Vec::new();
        for line in guest_init_script().lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            // Split at the places a new command starts.
            let mut rest = line.replace("$((", "");
            for sep in ["&&", "||", ";", "|", "$(", "!", "{", "("] {
                rest = rest.replace(sep, "\n");
            }
            for part in rest.split('\n') {
                let mut words = part.split_whitespace().skip_while(|w| w.contains('=') && !w.starts_with('['));
                let Some(mut cmd) = words.next() else { continue };
                while ["then", "do", "else", "if", "while", "elif"].contains(&cmd) {
                    match words.next() {
                        Some(w) => cmd = w,
                        None => break,
                    }
                }
                let cmd = cmd.trim_start_matches("/bin/");
                let word = cmd.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                if word
                    && !cmd.is_empty()
                    && !builtins.contains(&cmd)
                    && !functions.contains(&cmd)
                    && !SHIM_APPLETS.contains(&cmd)
                {
                    missing.push(format!("{cmd} (in: {line})"));
                }
            }
        }
        assert!(missing.is_empty(), "not linked in bin/ (add to SHIM_APPLETS): {missing:#?}");
    }

    #[test]
    fn guest_paths_normalize() {
        assert_eq!(guest_rel("p", "/root//x/").unwrap(), "root/x");
        assert_eq!(guest_rel("p", "/./etc/hosts").unwrap(), "etc/hosts");
        for bad in ["relative", "/", "/a/../b", ""] {
            assert!(guest_rel("p", bad).is_err(), "{bad:?}");
        }
        assert!(plain_abs("init", "/sbin/init; reboot").is_err());
        assert!(plain_abs("init", "/sbin/init").is_ok());
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn refuses_bad_specs() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("i");
        let ok = VmBoot { hostname: "vm".into(), ..VmBoot::default() };
        for bad in [
            VmBoot { hostname: String::new(), ..ok.clone() },
            VmBoot { hostname: "a b".into(), ..ok.clone() },
            VmBoot { init: "sbin/init".into(), ..ok.clone() },
            VmBoot { root_device: "/dev/vda other".into(), ..ok.clone() },
            VmBoot { copy_files: vec![("/etc/hostname".into(), "/../x".into())], ..ok.clone() },
            VmBoot { mounts: vec![("/dev/vdb".into(), "/mnt/a b".into())], ..ok.clone() },
            VmBoot { ipv4_only: vec!["eth0/../all".into()], ..ok.clone() },
            VmBoot { ipv4_only: vec!["..".into()], ..ok.clone() },
            VmBoot { ipv4_only: vec!["eth0 lo".into()], ..ok.clone() },
            VmBoot { busybox: d.path().join("missing"), ..ok.clone() },
        ] {
            assert!(build_vm_initramfs(&bad, &out).is_err(), "{bad:?}");
            assert!(!out.exists());
        }
        // A dynamically linked program in busybox's place.
        let dynamic = Path::new("/bin/sh");
        if dynamic.is_file() && check_static(Path::new("/bin/busybox")).is_ok() {
            let e = build_vm_initramfs(&VmBoot { busybox: dynamic.into(), ..ok }, &out).unwrap_err();
            assert!(e.to_string().contains("install busybox-static"), "{e}");
        }
    }
}
