//! `ignite start`.

use ignite_api::Vm;
use ignite_runtime::start::start;

use crate::cli::StartArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: StartArgs) -> anyhow::Result<()> {
    if let Some(d) = ctx.daemon()? {
        if ctx.global.network_plugin.is_some() || a.accel.is_some() {
            return Err(super::UsageError(
                "--network-plugin and --accel are not passed through ignited: leave out --daemon (or stop ignited)"
                    .into(),
            )
            .into());
        }
        let vm = d.start(&a.vm)?;
        super::run::report_started_remote(ctx, &vm);
        if a.interactive {
            return super::attach::attach(&ctx.store()?, &vm);
        }
        return Ok(());
    }
    let store = ctx.store()?;
    let config = ctx.config()?;
    let mut vm = store.resolve::<Vm>(&a.vm)?;
    if let Some(np) = super::network_plugin(&ctx.global)? {
        vm = store
            .modify::<Vm, _>(&vm.uid(), |v| {
                v.metadata.annotations.insert(ignite_runtime::network::PLUGIN_ANNOTATION.into(), np);
            })?
            .0;
    }
    let opts = super::run::start_options(a.accel.as_deref(), &a.ignore_preflight_checks, a.debug)?;
    let started = start(&store, &config, vm, &opts)?;
    super::run::report_started(ctx, &started);
    if a.interactive {
        return super::attach::attach(&store, &started.vm);
    }
    Ok(())
}
