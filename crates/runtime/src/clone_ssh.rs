//! A clone's SSH identity: its own host keys and its own `--ssh` key.
//!
//! Owns: asking a running guest which SSH host key files it has, when a snapshot of it is
//! taken ([`host_key_files`]; what the guest answers is checked: only
//! `/etc/ssh/ssh_host_{rsa,ecdsa,ed25519}_key` are taken), and, when a clone of it is
//! resumed, making new keys of those types on the host (`provision::ssh_keygen`, fast on the host where
//! an emulated guest would take seconds for RSA) and writing them over the guest's, with the
//! clone's own authorized key, through the guest agent ([`give`]). sshd re-reads its host keys
//! for each connection, so the running one serves the new keys without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ignite_agent::proto::ExecRequest;

use crate::agent::Session;
use crate::vmdir::VmDir;

/// Where a guest keeps them, and the key types made for a clone.
const SSH_DIR: &str = "/etc/ssh";
const TYPES: [&str; 3] = ["rsa", "ecdsa", "ed25519"];
/// The scratch directory of the new keys in the VM's directory (removed once they are given).
const SCRATCH: &str = ".ssh-identity";

/// The thread making a clone's host keys: the private keys' paths (each with its `.pub`).
pub type KeyMaker = std::thread::JoinHandle<Result<Vec<PathBuf>, String>>;

/// The key type of a host key file a guest named, if it is one ignite replaces.
fn key_type(path: &str) -> Option<&'static str> {
    let t = path.strip_prefix(SSH_DIR)?.strip_prefix("/ssh_host_")?.strip_suffix("_key")?;
    TYPES.into_iter().find(|k| *k == t)
}

/// The SSH host key files of the guest of the running VM in `dir`, asked through its agent
/// (an image without a shell has none; anything else the guest says is ignored).
pub fn host_key_files(dir: &VmDir, name: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let script = format!("for f in {SSH_DIR}/ssh_host_*_key; do [ -f \"$f\" ] && echo \"$f\"; done; true");
    let req = ExecRequest { argv: vec!["/bin/sh".into(), "-c".into(), script], ..Default::default() };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = Session::connect(name, dir, timeout)
        .and_then(|s| s.exec(req, None, &mut out, &mut err))
        .map_err(|e| format!("cannot ask the guest for its SSH host keys: {e}"))?;
    if exit.code != Some(0) {
        // No /bin/sh: no sshd either.
        return Ok(Vec::new());
    }
    let mut files: Vec<String> =
        String::from_utf8_lossy(&out).lines().filter(|l| key_type(l).is_some()).map(str::to_string).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Gives the resumed guest of the VM in `dir` its SSH identity: the new host keys `keys` makes
/// (see [`make_host_keys`]) over its own, and `authorized_keys` as its root's. The scratch
/// copies on the host are removed whatever happens.
pub fn give(
    dir: &VmDir,
    name: &str,
    authorized_keys: Option<&str>,
    keys: Option<KeyMaker>,
    timeout: Duration,
) -> Result<(), String> {
    let put = |src: &Path, dest: &str| {
        Session::connect(name, dir, timeout)
            .and_then(|s| s.put(src, dest))
            .map_err(|e| format!("cannot write {dest} in the guest: {e}"))
    };
    let scratch = dir.join(SCRATCH);
    let given = (|| {
        if let Some(keys) = keys {
            for key in keys.join().map_err(|_| "making its SSH host keys failed".to_string())?? {
                put(&key, SSH_DIR)?;
                put(&key.with_extension("pub"), SSH_DIR)?;
            }
        }
        if let Some(k) = authorized_keys {
            let file = scratch.join("authorized_keys");
            write_private(&file, k.as_bytes())?;
            put(&file, "/root/.ssh")?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    given
}

/// Waits for `keys` and removes them: the identity they were made for was not given.
pub fn abandon(dir: &VmDir, keys: Option<KeyMaker>) {
    if let Some(k) = keys {
        let _ = k.join();
    }
    let _ = std::fs::remove_dir_all(dir.join(SCRATCH));
}

/// Starts making new host keys for the files `files` of the VM in `dir` (commented
/// `root@<hostname>`, as `ssh-keygen -A` does), in the VM's scratch directory; the thread
/// returns the private keys' paths (each with its `.pub`).
pub fn make_host_keys(dir: &VmDir, hostname: &str, files: &[String]) -> Option<KeyMaker> {
    if files.is_empty() {
        return None;
    }
    let scratch = dir.join(SCRATCH);
    let hostname = hostname.to_string();
    let types: Vec<&'static str> = files.iter().filter_map(|f| key_type(f)).collect();
    Some(std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(&scratch);
        create_private_dir(&scratch)?;
        types
            .into_iter()
            .map(|t| {
                let key = scratch.join(format!("ssh_host_{t}_key"));
                crate::provision::ssh_keygen(t, &format!("root@{hostname}"), &key)
                    .map_err(|e| format!("cannot make the clone's SSH host keys: {e}"))?;
                Ok(key)
            })
            .collect()
    }))
}

fn create_private_dir(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn write_private(p: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = p.parent().filter(|d| !d.is_dir()) {
        create_private_dir(d)?;
    }
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .and_then(|mut f| f.write_all(data))
        .map_err(|e| format!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_standard_host_key_files_are_replaced() {
        assert_eq!(key_type("/etc/ssh/ssh_host_ed25519_key"), Some("ed25519"));
        assert_eq!(key_type("/etc/ssh/ssh_host_rsa_key"), Some("rsa"));
        assert_eq!(key_type("/etc/ssh/ssh_host_ecdsa_key"), Some("ecdsa"));
        for bad in [
            "/etc/ssh/ssh_host_dsa_key",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/ssh/../ssh/ssh_host_rsa_key",
            "/etc/ssh/ssh_host_rsa_key/x",
            "/root/ssh_host_rsa_key",
            "/etc/sshssh_host_rsa_key",
            "",
        ] {
            assert_eq!(key_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_host_keys_are_made_for_the_types_asked_and_private() {
        if std::process::Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("SKIPPED: ssh-keygen is not installed (apt-get install openssh-client)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = VmDir::new(d.path());
        let files = ["/etc/ssh/ssh_host_ed25519_key".to_string(), "/etc/ssh/ssh_host_ecdsa_key".to_string()];
        let keys = make_host_keys(&dir, "clone1", &files).unwrap().join().unwrap().unwrap();
        let names: Vec<_> = keys.iter().map(|k| k.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["ssh_host_ed25519_key", "ssh_host_ecdsa_key"]);
        for k in &keys {
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(k).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600);
            assert!(std::fs::read_to_string(k.with_extension("pub")).unwrap().trim_end().ends_with(" root@clone1"));
        }
        assert!(make_host_keys(&dir, "clone1", &[]).is_none());
    }
}
