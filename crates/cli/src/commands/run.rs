//! `ignite run`: create + start. A VM whose start fails before it boots is removed again, so
//! a failed `run` leaves nothing behind.

use ignite_api::Vm;
use ignite_runtime::start::{StartOptions, Started};
use ignite_vmm::AccelChoice;

use super::UsageError;
use crate::cli::RunArgs;
use crate::context::Ctx;

pub fn start_options(accel: Option<&str>, ignore_preflight: &[String], debug: bool) -> anyhow::Result<StartOptions> {
    let env = std::env::var("IGNITE_ACCEL").ok();
    let choice = accel.or(env.as_deref()).unwrap_or("auto");
    let accel: AccelChoice = choice.parse().map_err(UsageError)?;
    if debug {
        eprintln!("debug mode: the VMM logs the guest's device errors into the VM's vmm.log");
    }
    Ok(StartOptions { accel, ignore_preflight: ignore_preflight.to_vec(), debug, ..Default::default() })
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

/// Like [`report_started`], for a VM started by ignited.
pub fn report_started_remote(ctx: &Ctx, vm: &Vm) {
    if ctx.global.quiet {
        println!("{}", vm.uid());
        return;
    }
    let rt = vm.status.runtime.as_ref();
    eprintln!(
        "Started VM {:?} ({}) with {}/{} through ignited",
        vm.metadata.name,
        vm.uid(),
        rt.map(|r| r.name.as_str()).unwrap_or("qemu"),
        rt.and_then(|r| r.accel.as_deref()).unwrap_or("?")
    );
}

pub fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    if let Some(d) = ctx.daemon()? {
        if a.accel.is_some() {
            return Err(UsageError("--accel is not passed through ignited: leave out --daemon".into()).into());
        }
        let vm = d.create(&super::create::remote_spec(ctx, &a.create)?, true)?;
        if !ctx.global.quiet {
            super::create::report(ctx, &vm);
        }
        report_started_remote(ctx, &vm);
        if a.interactive {
            return super::attach::attach(&ctx.store()?, &vm);
        }
        return Ok(());
    }
    let opts = start_options(a.accel.as_deref(), &a.create.ignore_preflight_checks, a.debug)?;
    let vm: Vm = super::create::create(ctx, &a.create)?;
    let store = ctx.store()?;
    let config = ctx.config()?;
    match ignite_runtime::run::start_new(&store, &config, vm.clone(), &opts) {
        Ok(started) => {
            // Said once the VM runs: a run that fails leaves no VM, and says nothing was made.
            // (With -q, the ID is printed once, by report_started.)
            if !ctx.global.quiet {
                super::create::report(ctx, &vm);
            }
            report_started(ctx, &started);
            if a.interactive {
                return super::attach::attach(&store, &started.vm);
            }
            Ok(())
        }
        // Nothing booted: the create was undone.
        Err(e) => Err(e.into()),
    }
}
