//! `ignite cp SRC DST`: one side is `VM:PATH`; recursive, modes kept (scp -r -p).

use std::time::Duration;

use ignite_api::Vm;

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
    let store = ctx.store()?;
    let vm = ignite_runtime::status::refresh(&store, store.resolve::<Vm>(&vm_q)?)?;
    let timeout = Duration::from_secs(u64::from(a.timeout));
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
