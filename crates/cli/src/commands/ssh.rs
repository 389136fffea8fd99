//! `ignite ssh VM [-- COMMAND]`: the system ssh client, with the VM's key and address.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::cli::SshArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: SshArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vm = super::used_vm(&store, &a.vm)?;
    let timeout = Duration::from_secs(u64::from(a.timeout));
    let t = ignite_runtime::ssh::target(&store, &vm, a.identity.as_deref(), timeout)?;
    // A login shell gets a terminal; a command only when ours is one (as ssh itself decides).
    let tty = a.tty && (a.command.is_empty() || rustix::termios::isatty(rustix::stdio::stdin()));
    let err = ignite_runtime::ssh::ssh_command(&t, tty, &a.command, timeout).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        return Err(ignite_runtime::ssh::SshError::NoClient.into());
    }
    Err(anyhow::Error::new(err).context("cannot run ssh"))
}
