//! `ignite stop`.

use super::{each, running_vm, NotAvailable, NO_BACKEND};
use crate::cli::StopArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: StopArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    each(&a.vms, |q| {
        let vm = running_vm(&store, q)?;
        Err(NotAvailable { what: format!("cannot stop VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
    })
}
