//! `ignite attach`.

use super::{running_vm, NotAvailable, NO_BACKEND};
use crate::cli::VmArg;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: VmArg) -> anyhow::Result<()> {
    let vm = running_vm(&ctx.store()?, &a.vm)?;
    Err(NotAvailable { what: format!("cannot attach to VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
}
