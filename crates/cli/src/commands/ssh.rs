//! `ignite ssh`.

use super::{running_vm, NotAvailable, NO_BACKEND};
use crate::cli::SshArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: SshArgs) -> anyhow::Result<()> {
    let vm = running_vm(&ctx.store()?, &a.vm)?;
    Err(NotAvailable { what: format!("cannot ssh in VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
}
