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

/// How `run` and `start` end once the VM runs: it is reported (its ID alone with `-q`), and
/// with `-i` its console attached.
pub fn started(ctx: &Ctx, store: &ignite_store::Store, s: &Started, interactive: bool) -> anyhow::Result<()> {
    report_started(ctx, s);
    if interactive {
        return super::attach::attach(store, &s.vm);
    }
    Ok(())
}

/// Like [`started`], for a VM started by ignited.
pub fn started_remote(ctx: &Ctx, vm: &Vm, interactive: bool) -> anyhow::Result<()> {
    report_started_remote(ctx, vm);
    if interactive {
        return super::attach::attach(&ctx.store()?, vm);
    }
    Ok(())
}

fn report_started(ctx: &Ctx, s: &Started) {
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

fn report_started_remote(ctx: &Ctx, vm: &Vm) {
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
        if a.from_snapshot.is_some() {
            return Err(UsageError("--from-snapshot clones on this host: leave out --daemon".into()).into());
        }
        let vm = d.create(&super::create::remote_spec(ctx, &a.create)?, true)?;
        if !ctx.global.quiet {
            super::create::report(ctx, &vm);
        }
        return started_remote(ctx, &vm, a.interactive);
    }
    let opts = start_options(a.accel.as_deref(), &a.create.ignore_preflight_checks, a.debug)?;
    if let Some(snap) = &a.from_snapshot {
        return clone(ctx, &a, snap, &opts);
    }
    let vm: Vm = super::create::create(ctx, &a.create)?;
    let store = ctx.store()?;
    let config = ctx.config()?;
    match ignite_runtime::run::start_new(&store, &config, vm.clone(), &opts) {
        Ok(s) => {
            // Said once the VM runs: a run that fails leaves no VM, and says nothing was made.
            // (With -q, the ID is printed once, by `started`.)
            if !ctx.global.quiet {
                super::create::report(ctx, &vm);
            }
            started(ctx, &store, &s, a.interactive)
        }
        // Nothing booted: the create was undone.
        Err(e) => Err(e.into()),
    }
}

/// `run --from-snapshot`: a clone resumed from the snapshot, given its own identity before
/// `run` returns; a clone that fails on the way is removed again.
fn clone(ctx: &Ctx, a: &RunArgs, snap: &str, opts: &StartOptions) -> anyhow::Result<()> {
    let c = &a.create;
    let machine_flags = [
        ("an IMAGE", c.image.is_some()),
        ("--config", c.config.is_some()),
        ("--cpus", c.cpus.is_some()),
        ("--memory", c.memory.is_some()),
        ("--size", c.size.is_some()),
        ("--kernel-image", c.kernel_image.is_some()),
        ("--kernel-args", c.kernel_args.is_some()),
        ("--copy-files", !c.copy_files.is_empty()),
        ("--volumes", !c.volumes.is_empty()),
        ("--ssh", c.ssh.is_some()),
        ("--vmm", c.vmm.is_some()),
        ("--ip", c.ip.is_some()),
        ("--accel", a.accel.is_some()),
    ];
    if let Some((flag, _)) = machine_flags.iter().find(|(_, set)| *set) {
        return Err(UsageError(format!(
            "--from-snapshot resumes the snapshot's machine: {flag} cannot change it (leave it out)"
        ))
        .into());
    }
    let store = ctx.store()?;
    let config = ctx.config()?;
    let snapshot = store.resolve::<ignite_api::Snapshot>(snap)?;
    let ports = super::create::port_flags(&c.ports)?;
    let labels = super::create::label_flags(&c.labels)?;
    let name = c.name.clone().unwrap_or_default();
    if name.is_empty() && c.require_name {
        return Err(UsageError("--require-name: give the clone a --name".into()).into());
    }
    let t0 = std::time::Instant::now();
    let vm = ignite_runtime::snapshot::create_clone(&store, &snapshot, &name, ports, labels)?;
    tracing::debug!("clone {:?} created in {:?}", vm.metadata.name, t0.elapsed());
    // Resumed and given its own identity by its supervisor before the start returns.
    let s = ignite_runtime::run::start_new(&store, &config, vm.clone(), opts)?;
    tracing::debug!("clone {:?} running at {:?}", vm.metadata.name, t0.elapsed());
    if !ctx.global.quiet {
        super::create::report(ctx, &vm);
    }
    started(ctx, &store, &s, a.interactive)
}
