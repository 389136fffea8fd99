//! The errors of `start` (a module of their own: the `Host` that starts a VM reports them too).

use std::path::PathBuf;

use ignite_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("VM {name:?} is already running")]
    AlreadyRunning { name: String },
    #[error(
        "kernel {kernel} is not imported: build and import it with images/kernel/build.sh, or `ignite kernel import`"
    )]
    KernelMissing { kernel: String },
    #[error("VM {name:?} has no root disk ({path}): it was created without an image; remove and re-create it")]
    DiskMissing { name: String, path: PathBuf },
    #[error("the image base of VM {name:?} ({path}) is gone: the VM cannot start; remove it and create it again")]
    BaseMissing { name: String, path: PathBuf },
    #[error("volume {volume:?} of VM {name:?}: {path} does not exist")]
    VolumeMissing { name: String, volume: String, path: PathBuf },
    #[error("VM {name:?} asks for {want} MiB of memory but this host has {have} MiB")]
    Memory { name: String, want: u64, have: u64 },
    #[error("cannot set up the network of VM {name:?}: {message}")]
    Network { name: String, message: String },
    #[error("preflight check{} failed: {}; skip with --ignore-preflight-checks {}", if .0.len() > 1 { "s" } else { "" }, .0.iter().map(|(n, d)| format!("{n}: {d}")).collect::<Vec<_>>().join("; "), .0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(","))]
    Preflight(Vec<(String, String)>),
    #[error("cannot jail the VMM of VM {name:?}: {message} (--jail=false runs it unconfined)")]
    Jail { name: String, message: String },
    #[error("cannot choose an accelerator: {0}")]
    Accel(String),
    #[error("VM {name:?} cannot run on its VMM: {message}")]
    Machine { name: String, message: String },
    #[error(transparent)]
    Backend(#[from] ignite_vmm::VmmError),
    #[error("cannot prepare VM {name:?}: {what}")]
    Prepare {
        name: String,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the supervisor of VM {name:?} failed: {message}")]
    Supervisor { name: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn prep<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
    what: impl Into<String>,
) -> impl FnOnce(E) -> StartError {
    let (name, what) = (name.to_string(), what.into());
    move |e| StartError::Prepare { name, what, source: Box::new(e) }
}
