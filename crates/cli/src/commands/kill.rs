//! `ignite kill`.

use ignite_api::Vm;

use super::each;
use crate::cli::VmsArg;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: VmsArg) -> anyhow::Result<()> {
    let store = ctx.store()?;
    each(&a.vms, |q| {
        let vm = store.resolve::<Vm>(q)?;
        let done = ignite_runtime::stop::kill(&store, vm)?;
        if ctx.global.quiet {
            println!("{}", done.uid());
        } else {
            eprintln!("Killed VM {:?} ({})", done.metadata.name, done.uid());
        }
        Ok(())
    })
}
