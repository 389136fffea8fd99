//! `ignite stop`: graceful (Ctrl-Alt-Del to the guest's init), forced after `-t` seconds.

use std::time::Duration;

use ignite_api::Vm;

use super::each;
use crate::cli::StopArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: StopArgs) -> anyhow::Result<()> {
    let daemon = ctx.daemon()?;
    let store = ctx.store()?;
    each(&a.vms, |q| {
        let done = if let Some(d) = &daemon {
            d.stop(q, a.time, a.force_kill)?
        } else if a.force_kill {
            let vm = store.resolve::<Vm>(q)?;
            ignite_runtime::stop::kill(&store, vm)?
        } else {
            let vm = store.resolve::<Vm>(q)?;
            ignite_runtime::stop::stop(&store, vm, Duration::from_secs(a.time))?
        };
        if ctx.global.quiet {
            println!("{}", done.uid());
        } else {
            let why = done.status.exit.as_ref().map(|e| e.reason.clone()).unwrap_or_default();
            eprintln!("Stopped VM {:?} ({}): {why}", done.metadata.name, done.uid());
        }
        Ok(())
    })
}
