//! `ignite start`.

use ignite_api::Vm;

use super::{NotAvailable, NO_BACKEND};
use crate::cli::StartArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: StartArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vm = store.resolve::<Vm>(&a.vm)?;
    if vm.status.running {
        anyhow::bail!("VM {:?} ({}) is already running", vm.metadata.name, vm.uid());
    }
    Err(NotAvailable { what: format!("cannot start VM {:?}", vm.metadata.name), needs: NO_BACKEND }.into())
}
