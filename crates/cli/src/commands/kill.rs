//! `ignite kill`.

use super::{each, running_vm, NotAvailable, NO_BACKEND};
use crate::cli::VmsArg;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: VmsArg) -> anyhow::Result<()> {
    let store = ctx.store()?;
    each(&a.vms, |q| {
        let vm = running_vm(&store, q)?;
        Err(NotAvailable { what: format!("cannot kill VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
    })
}
