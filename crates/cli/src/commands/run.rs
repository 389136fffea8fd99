//! `ignite run`: create + start. A VM whose start fails before it boots is removed again, so
//! a failed `run` leaves nothing behind.

use ignite_api::Vm;
use ignite_runtime::accel::AccelChoice;
use ignite_runtime::start::{start, StartOptions, Started};

use super::UsageError;
use crate::cli::RunArgs;
use crate::context::Ctx;

pub fn start_options(accel: Option<&str>) -> anyhow::Result<StartOptions> {
    let env = std::env::var("IGNITE_ACCEL").ok();
    let choice = accel.or(env.as_deref()).unwrap_or("auto");
    let accel: AccelChoice = choice.parse().map_err(UsageError)?;
    Ok(StartOptions { accel, ..Default::default() })
}

pub fn report_started(ctx: &Ctx, s: &Started) {
    if ctx.global.quiet {
        println!("{}", s.vm.uid());
        return;
    }
    let backend = s.vm.status.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or("qemu");
    eprintln!(
        "Started VM {:?} ({}) with {backend}/{}: {}",
        s.vm.metadata.name,
        s.vm.uid(),
        s.accel.accel,
        s.accel.reason
    );
}

pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    let opts = start_options(a.accel.as_deref())?;
    let vm: Vm = super::create::create(ctx, &a.create)?;
    super::create::report(ctx, &vm);
    let store = ctx.store()?;
    let config = ctx.config()?;
    match start(&store, &config, vm.clone(), &opts) {
        Ok(started) => {
            report_started(ctx, &started);
            if a.interactive {
                return super::attach::attach(&store, &started.vm);
            }
            Ok(())
        }
        Err(e) => {
            // Nothing booted: undo the create.
            if let Ok(cur) = store.get::<Vm>(&vm.uid()) {
                if !cur.status.running && cur.status.start_time.is_none() {
                    if let Ok(lock) = store.lock() {
                        let _ = store.remove::<Vm>(&lock, &vm.uid());
                    }
                }
            }
            Err(e.into())
        }
    }
}
