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
        if a.from_snapshot.is_some() {
            return Err(super::UsageError("--from-snapshot resumes on this host: leave out --daemon".into()).into());
        }
        let vm = d.start(&a.vm)?;
        return super::run::started_remote(ctx, &vm, a.interactive);
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
    let Some(snap) = &a.from_snapshot else {
        let started = start(&store, &config, vm, &opts)?;
        return super::run::started(ctx, &store, &started, a.interactive);
    };
    // Resumed where the snapshot was taken: its address is this start's, its machine-id its own.
    let snapshot = store.resolve::<ignite_api::Snapshot>(snap)?;
    let vmm = ignite_runtime::boot::backend_name(&vm, &config.spec);
    let reverted = ignite_runtime::snapshot::revert(&store, &vm, &snapshot, &vmm)?;
    // A start that fails leaves the VM as it was: its own disk, booted at its next start.
    let started = start(&store, &config, vm, &opts).inspect_err(|_| reverted.undo())?;
    super::run::started(ctx, &store, &started, a.interactive)
}
