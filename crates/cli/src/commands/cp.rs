//! `ignite cp SRC DST`: one side is `VM:PATH`; recursive, modes kept. Through the VM's guest
//! agent (a tar stream, `docker cp` placement, unpacked on the host without following links
//! or leaving the destination), or over SSH (`scp -r -p`) when the VM has no agent.

use std::path::Path;
use std::time::Duration;

use ignite_api::Vm;
use ignite_runtime::agent::{AgentError, Session};

use super::UsageError;
use crate::cli::CpArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: CpArgs) -> anyhow::Result<()> {
    let vm_side = |s: &str| {
        s.split_once(':')
            .filter(|(v, _)| !v.is_empty() && !v.contains('/'))
            .map(|(v, p)| (v.to_string(), p.to_string()))
    };
    let (vm_q, path, to_vm) = match (vm_side(&a.source), vm_side(&a.dest)) {
        (Some((v, p)), None) => (v, p, false),
        (None, Some((v, p))) => (v, p, true),
        (Some(_), Some(_)) => {
            return Err(
                UsageError("copying between two VMs is not supported: one side must be a host path".into()).into()
            )
        }
        (None, None) => return Err(UsageError("one of SOURCE and DEST must be VM:PATH".into()).into()),
    };
    if path.split('/').any(|c| c == "..") {
        return Err(UsageError(format!("invalid VM path {path:?}: '..' is not allowed")).into());
    }
    if path.is_empty() {
        return Err(UsageError("the VM path is empty".into()).into());
    }
    let store = ctx.store()?;
    let vm = super::used_vm(&store, &vm_q)?;
    let timeout = Duration::from_secs(u64::from(a.timeout));
    if !vm.status.running {
        return Err(ignite_runtime::ssh::SshError::NotRunning { name: vm.metadata.name.clone() }.into());
    }
    if a.identity.is_none() {
        // Relative VM paths are relative to / (the agent's working directory).
        let guest = if path.starts_with('/') { path.clone() } else { format!("/{path}") };
        match Session::connect(&vm.metadata.name, &store.dir::<Vm>(&vm.uid()), timeout) {
            Ok(s) => {
                if to_vm {
                    s.put(Path::new(&a.source), &guest)?
                } else {
                    s.get(&guest, Path::new(&a.dest))?
                }
                return Ok(());
            }
            Err(AgentError::NotEnabled { .. }) if vm.spec.ssh.is_none() => {
                return Err(super::exec::no_way_in(&store, &vm))
            }
            Err(AgentError::NotEnabled { .. }) => {}
            Err(e @ AgentError::NotReady { .. }) if vm.spec.ssh.is_some() => tracing::warn!("{e}; trying SSH"),
            Err(e) => return Err(e.into()),
        }
    }
    let t = ignite_runtime::ssh::target(&store, &vm, a.identity.as_deref(), timeout)?;
    let remote = format!("root@{}:{}", t.ip, path);
    let (from, to) = if to_vm { (a.source.clone(), remote) } else { (remote, a.dest.clone()) };
    let status = ignite_runtime::ssh::scp_command(&t, &from, &to, timeout).status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::Error::new(ignite_runtime::ssh::SshError::NoClient)
        } else {
            anyhow::Error::new(e).context("cannot run scp")
        }
    })?;
    if !status.success() {
        anyhow::bail!("scp failed with {status}");
    }
    Ok(())
}
