//! `ignite` through `ignited`'s API socket (`--daemon`, or automatically when the daemon
//! serves the state root in use): a small HTTP/1.1 client over a unix socket for the verbs
//! the API carries (ps, inspect vm, logs, create, run, start, stop, rm). The output is made
//! by the same code as for local operation.
//!
//! Choice: when `--daemon` is given (or `IGNITE_DAEMON_SOCKET` set) and the daemon does not
//! answer, that is an error; when the default socket merely exists and does not answer (a
//! daemon that died), ignite works on the store directly, which is always safe (the store is
//! locked and shared by design), and says so at debug level.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignite_api::Vm;

/// The daemon's default API socket.
pub const DEFAULT_SOCKET: &str = "/run/ignite/ignited.sock";

/// An error the daemon answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message} (ignited, HTTP {status})")]
pub struct RemoteError {
    pub status: u16,
    /// The exit code ignited classified the error as (see `errors`).
    pub exit_code: Option<u8>,
    pub message: String,
}

/// A daemon to talk to.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub socket: PathBuf,
}

/// What `GET /v1/info` says.
#[derive(Debug, serde::Deserialize)]
pub struct Info {
    pub root: PathBuf,
}

impl Daemon {
    /// One request; returns the body of a 2xx answer, or the daemon's error.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| anyhow::anyhow!("cannot reach ignited at {}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: ignited\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        s.write_all(body)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let split = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("ignited at {} sent no HTTP response", self.socket.display()))?;
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out[split + 4..].to_vec();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let message = v
            .as_ref()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let exit_code = v.as_ref().and_then(|v| v.get("exitCode")).and_then(|c| c.as_u64()).map(|c| c.min(255) as u8);
        Err(RemoteError { status, message, exit_code }.into())
    }

    pub fn info(&self) -> anyhow::Result<Info> {
        Ok(serde_json::from_slice(&self.call("GET", "/v1/info", b"")?)?)
    }

    pub fn list(&self) -> anyhow::Result<Vec<Vm>> {
        Ok(serde_json::from_slice(&self.call("GET", "/v1/vms", b"")?)?)
    }

    pub fn get(&self, q: &str) -> anyhow::Result<Vm> {
        Ok(serde_json::from_slice(&self.call("GET", &format!("/v1/vms/{}", escape(q)), b"")?)?)
    }

    pub fn logs(&self, q: &str) -> anyhow::Result<Vec<u8>> {
        self.call("GET", &format!("/v1/vms/{}/logs", escape(q)), b"")
    }

    /// Creates `vm` (its spec already merged and validated by the caller); starts it too when
    /// `start`.
    pub fn create(&self, vm: &Vm, start: bool) -> anyhow::Result<Vm> {
        let body = serde_json::to_vec(vm)?;
        Ok(serde_json::from_slice(&self.call("POST", &format!("/v1/vms?start={start}"), &body)?)?)
    }

    pub fn start(&self, q: &str) -> anyhow::Result<Vm> {
        Ok(serde_json::from_slice(&self.call("POST", &format!("/v1/vms/{}/start", escape(q)), b"")?)?)
    }

    pub fn stop(&self, q: &str, secs: u64, kill: bool) -> anyhow::Result<Vm> {
        let path = format!("/v1/vms/{}/stop?time={secs}&kill={kill}", escape(q));
        Ok(serde_json::from_slice(&self.call("POST", &path, b"")?)?)
    }

    pub fn remove(&self, q: &str, force: bool) -> anyhow::Result<Vm> {
        Ok(serde_json::from_slice(&self.call("DELETE", &format!("/v1/vms/{}?force={force}", escape(q)), b"")?)?)
    }
}

/// VM names and IDs are DNS-1123 / hex: anything else is refused by the store anyway, but
/// never let it shape the request line.
fn escape(q: &str) -> String {
    q.chars().filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c)).collect()
}

/// The daemon to use, if any: `explicit` (from `--daemon`/`IGNITE_DAEMON_SOCKET`) must answer;
/// otherwise the default socket is used when it exists, answers, and serves `root`.
pub fn choose(explicit: Option<&Path>, root: &Path) -> anyhow::Result<Option<Daemon>> {
    if let Some(sock) = explicit {
        let d = Daemon { socket: sock.to_path_buf() };
        let info = d.info().map_err(|e| anyhow::anyhow!("{e} (--daemon): start ignited, or leave --daemon out"))?;
        if !same_dir(&info.root, root) && root != Path::new(ignite_store::DEFAULT_ROOT) {
            anyhow::bail!(
                "ignited at {} serves {}, not the state root {} given here",
                sock.display(),
                info.root.display(),
                root.display()
            );
        }
        return Ok(Some(d));
    }
    let sock = Path::new(DEFAULT_SOCKET);
    if !sock.exists() {
        return Ok(None);
    }
    let d = Daemon { socket: sock.to_path_buf() };
    match d.info() {
        Ok(info) if same_dir(&info.root, root) => Ok(Some(d)),
        Ok(info) => {
            tracing::debug!("ignited serves {}, not {}: working locally", info.root.display(), root.display());
            Ok(None)
        }
        Err(e) => {
            tracing::debug!("{e}: working on the store directly");
            Ok(None)
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
