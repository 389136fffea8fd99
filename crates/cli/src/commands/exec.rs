//! `ignite exec`.

use super::{running_vm, NotAvailable, NO_BACKEND};
use crate::cli::ExecArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<()> {
    let vm = running_vm(&ctx.store()?, &a.vm)?;
    Err(NotAvailable { what: format!("cannot exec in VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
}
