//! `ignite start`.

use ignite_api::Vm;
use ignite_runtime::start::start;

use crate::cli::StartArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: StartArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let config = ctx.config()?;
    let vm = store.resolve::<Vm>(&a.vm)?;
    let opts = super::run::start_options(a.accel.as_deref())?;
    let started = start(&store, &config, vm, &opts)?;
    super::run::report_started(ctx, &started);
    if a.interactive {
        return super::attach::attach(&store, &started.vm);
    }
    Ok(())
}
