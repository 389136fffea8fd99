//! `ignite run`: create + start.

use super::{NotAvailable, NO_BACKEND};
use crate::cli::RunArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    // Parse and validate everything first, so bad input is reported as such.
    let config = ctx.config()?;
    let (_meta, spec) = super::create::flags_to_spec(&a.create)?;
    if let Some(p) = &a.create.config {
        super::create::read_vm_manifest(p)?;
    }
    let _ = (config, spec, a.interactive, a.debug);
    // Nothing is created: a run that cannot start must leave the store as it was.
    Err(NotAvailable { what: "cannot run the VM".into(), needs: NO_BACKEND }.into())
}
