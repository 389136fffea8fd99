//! Reaching into a VM over SSH, as Weave Ignite did: the VM's generated key
//! (`vm/<uid>/id_<uid>`) or `-i`, the VM's CNI address, the system `ssh`/`scp` clients.
//!
//! The system OpenSSH client is used rather than a Rust SSH library: it gives users exactly
//! the terminal handling, escape sequences, agent and config file behaviour they know, `exec`
//! can replace the ignite process (exit codes and signals pass through untouched), and it is a
//! Debian package everywhere. A Rust client would be needed only to avoid the dependency.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ignite_api::Vm;
use ignite_store::Store;

/// Why a VM cannot be reached over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("VM {name:?} is not running")]
    NotRunning { name: String },
    #[error("VM {name:?} has no IP address (it runs with --network-plugin none)")]
    NoAddress { name: String },
    #[error("VM {name:?} has no SSH key: create it with --ssh (or give -i KEY)")]
    NoKey { name: String },
    #[error("VM {name:?} ({addr}) has no SSH server listening after {secs}s: its image ({image}) must run sshd (e.g. openssh-server), and the VM be created with --ssh")]
    NoServer { name: String, addr: String, secs: u64, image: String },
    #[error("ssh client not found: apt-get install openssh-client")]
    NoClient,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub ip: IpAddr,
    pub key: PathBuf,
}

/// Resolves the VM's address and key and waits until its port 22 accepts connections.
pub fn target(store: &Store, vm: &Vm, identity: Option<&Path>, timeout: Duration) -> Result<Target, SshError> {
    let name = vm.metadata.name.clone();
    if !vm.status.running {
        return Err(SshError::NotRunning { name });
    }
    let ip = vm
        .status
        .network
        .as_ref()
        .and_then(|n| n.ip_addresses.first().copied())
        .ok_or_else(|| SshError::NoAddress { name: name.clone() })?;
    let key = match identity {
        Some(k) => k.to_path_buf(),
        None => {
            let k = crate::vmdir::VmDir::of(store, &vm.uid()).ssh_key();
            if !k.is_file() {
                return Err(SshError::NoKey { name });
            }
            k
        }
    };
    let addr = SocketAddr::new(ip, 22);
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(Target { ip, key });
        }
        if Instant::now() >= deadline {
            return Err(SshError::NoServer {
                name,
                addr: addr.to_string(),
                secs: timeout.as_secs(),
                image: vm.spec.image.oci.as_ref().map(|i| i.to_string()).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn common_opts(c: &mut Command, t: &Target, timeout: Duration) {
    c.arg("-i")
        .arg(&t.key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={}", timeout.as_secs().max(1)));
}

/// An `ssh` command to the VM running `command` (a login shell when empty).
pub fn ssh_command(t: &Target, tty: bool, command: &[String], timeout: Duration) -> Command {
    let mut c = Command::new("ssh");
    common_opts(&mut c, t, timeout);
    c.arg(if tty { "-tt" } else { "-T" });
    c.arg(format!("root@{}", t.ip));
    if !command.is_empty() {
        // ssh joins its arguments with spaces for the remote shell: quote each one.
        c.arg("--").args(command.iter().map(|a| shell_quote(a)));
    }
    c
}

/// An `scp` command copying `from` to `to` (a `VM:PATH` side becomes `root@IP:PATH`).
pub fn scp_command(t: &Target, from: &str, to: &str, timeout: Duration) -> Command {
    let mut c = Command::new("scp");
    common_opts(&mut c, t, timeout);
    c.args(["-r", "-p", "-q"]).arg(from).arg(to);
    c
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("uname"), "uname");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
