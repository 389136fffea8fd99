//! VM networking by CNI, the standard every container host already has.
//!
//! - [`cni`]: a CNI 1.0 runtime (ADD, DEL, CHECK, VERSION; conflists with chained plugins,
//!   `prevResult`, the `portMappings` capability, CNI_ARGS) running the real plugins.
//! - [`attach`]: per VM, a network namespace, CNI ADD on it, and a tap inside it whose traffic
//!   is exchanged with the CNI interface by `tc` u32-matchall + `mirred` redirects (as tc-redirect-tap does; the `matchall` classifier is not in every kernel);
//!   the guest takes the interface's IP and MAC, learnt from the kernel `ip=` argument. The
//!   VMM runs inside the namespace. Teardown is CNI DEL and namespace removal, and works from
//!   the saved attachment after a crash.
//! - [`netns`]: named network namespaces made in-process (the crate's only `unsafe`, one
//!   `unshare(CLONE_NEWNET)` in a thread of its own), `ip netns add` as the fallback.
//! - [`link`]: an interface of a namespace brought up by one rtnetlink request, in process
//!   (a resumed guest's tap, once it has its identity), `ip` as the fallback.
#![deny(unsafe_code)]

pub mod attach;
pub mod cni;
pub mod dhcp;
pub mod link;
pub mod netns;

use std::path::PathBuf;

pub use attach::{
    attach, attach_planned, detach, parse_mac, plan, redirect_extra, wait_for_interface, AttachOptions, Attachment,
};
pub use cni::{CniConfig, PortMapping};

/// Networking failures.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("CNI plugin {plugin:?} not found in {dirs}: install containernetworking-plugins (apt-get install containernetworking-plugins) or set the plugin directory")]
    PluginMissing { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} failed ({command}): {message}")]
    Plugin { plugin: String, command: String, message: String },
    #[error("invalid CNI configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI result has no IPv4 address for the VM")]
    NoAddress,
}

/// Runs a host tool (with a deadline: see `ignite_proc`), mapping failure to its stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let shown = format!("{program} {}", args.join(" "));
    let out = ignite_proc::output(
        std::process::Command::new(program).args(args),
        stdin.map(str::as_bytes),
        ignite_proc::QUICK,
    )
    .map_err(|e| {
        let hint = if e.is_not_found() { " (install iproute2)" } else { "" };
        NetError::Command { command: shown.clone(), stderr: format!("{}{hint}", error_chain(&e)) }
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An error and its causes, joined by ": " (what callers that turn a [`NetError`] into a
/// message show: its `Display` alone drops the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
