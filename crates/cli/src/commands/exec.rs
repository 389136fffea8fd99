//! `ignite exec VM COMMAND...`: runs a command in the VM over SSH; its exit code is ignite's.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use ignite_api::Vm;

use crate::cli::ExecArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vm = ignite_runtime::status::refresh(&store, store.resolve::<Vm>(&a.vm)?)?;
    let timeout = Duration::from_secs(u64::from(a.timeout));
    let t = ignite_runtime::ssh::target(&store, &vm, a.identity.as_deref(), timeout)?;
    let err = ignite_runtime::ssh::ssh_command(&t, a.tty, &a.command, timeout).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        return Err(ignite_runtime::ssh::SshError::NoClient.into());
    }
    Err(anyhow::Error::new(err).context("cannot run ssh"))
}
