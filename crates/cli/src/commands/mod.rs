//! One module per verb. `run` dispatches.

mod attach;
mod completion;
mod cp;
mod create;
mod doctor;
mod exec;
mod image;
mod inspect;
mod kernel;
mod kill;
mod logs;
mod man;
mod objects;
mod ps;
mod rm;
mod run;
mod snapshot;
mod ssh;
mod start;
mod stop;
mod version;

use ignite_api::Vm;
use ignite_store::Store;

use crate::cli::{Cli, Command, VmSub};
use crate::context::Ctx;

pub use crate::usage::UsageError;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx { global: cli.global };
    if changes_vms(&cli.command) {
        recover_dead(&ctx);
    }
    match cli.command {
        Command::Attach(a) => attach::run(&ctx, a),
        Command::Completion(a) => completion::run(a),
        Command::Cp(a) => cp::run(&ctx, a),
        Command::Create(a) => create::run(&ctx, a),
        Command::Doctor(a) => doctor::run(&ctx, a),
        Command::Exec(a) => exec::run(&ctx, a),
        Command::Gitops(a) => gitops(&ctx, a),
        Command::Image(c) => image::run(&ctx, c.command, c.ls),
        Command::Inspect(a) => inspect::run(&ctx, a.kind, &a.object, a.output, a.template.as_deref()),
        Command::Kernel(c) => kernel::run(&ctx, c.command, c.ls),
        Command::Kill(a) => kill::run(&ctx, a),
        Command::Logs(a) => logs::run(&ctx, a),
        Command::Man(a) => man::run(a),
        Command::Ps(a) => ps::run(&ctx, a),
        Command::Rm(a) => rm::run(&ctx, a),
        Command::Rmi(a) => image::rm(&ctx, a),
        Command::Rmk(a) => kernel::rm(&ctx, a),
        Command::Run(a) => run::run(&ctx, a),
        Command::Snapshot(c) => snapshot::run(&ctx, c.command, c.ls),
        Command::Ssh(a) => ssh::run(&ctx, a),
        Command::Start(a) => start::run(&ctx, a),
        Command::Stop(a) => stop::run(&ctx, a),
        Command::Version(a) => version::run(&ctx, a),
        Command::Vm(v) => match v.command {
            VmSub::Attach(a) => attach::run(&ctx, a),
            VmSub::Cp(a) => cp::run(&ctx, a),
            VmSub::Create(a) => create::run(&ctx, a),
            VmSub::Exec(a) => exec::run(&ctx, a),
            VmSub::Kill(a) => kill::run(&ctx, a),
            VmSub::Logs(a) => logs::run(&ctx, a),
            VmSub::Ps(a) => ps::run(&ctx, a),
            VmSub::Ls(a) => ps::run(&ctx, crate::cli::PsArgs { all: true, ..a }),
            VmSub::Rm(a) => rm::run(&ctx, a),
            VmSub::Run(a) => run::run(&ctx, a),
            VmSub::Ssh(a) => ssh::run(&ctx, a),
            VmSub::Start(a) => start::run(&ctx, a),
            VmSub::Stop(a) => stop::run(&ctx, a),
            VmSub::Inspect(a) => inspect::run(&ctx, crate::cli::Kind::Vm, &a.object, a.output, a.template.as_deref()),
        },
    }
}

/// `ignite gitops`: Weave Ignite ran GitOps from the CLI as well; here the daemon's loop does
/// it, in the foreground, for this state root.
fn gitops(ctx: &Ctx, a: crate::cli::GitopsArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe()?;
    let ignited = me.with_file_name("ignited");
    let mut cmd = std::process::Command::new(if ignited.is_file() { ignited } else { "ignited".into() });
    cmd.arg("--root").arg(&ctx.global.root).args(["--log-level", &ctx.global.log_level, "--socket", "none"]);
    if let Some(c) = &ctx.global.ignite_config {
        cmd.arg("--ignite-config").arg(c);
    }
    cmd.args(["gitops", &a.repo]);
    if let Some(b) = &a.branch {
        cmd.args(["--branch", b]);
    }
    if !a.paths.is_empty() {
        cmd.args(["--paths", &a.paths.join(",")]);
    }
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context("cannot run ignited (install it beside ignite)"))
}

/// The `--network-plugin` flag, checked and normalized (Ignite's `docker-bridge` is CNI's
/// bridge here); `--runtime` is checked and said to have no effect, once.
pub fn network_plugin(g: &crate::cli::Global) -> anyhow::Result<Option<String>> {
    if let Some(rt) = &g.runtime {
        if !matches!(rt.as_str(), "containerd" | "docker") {
            return Err(
                UsageError(format!("invalid --runtime {rt:?}: Ignite's values are containerd and docker")).into()
            );
        }
        eprintln!("note: --runtime {rt} has no effect: ignite runs VMs without a container runtime");
    }
    match g.network_plugin.as_deref() {
        None => Ok(None),
        Some("cni" | "docker-bridge") => Ok(Some("cni".into())),
        Some("none") => Ok(Some("none".into())),
        Some(np) => Err(UsageError(format!("invalid --network-plugin {np:?}: use cni, docker-bridge or none")).into()),
    }
}

/// Whether a command changes VMs (and so runs recovery first; reads never change anything).
fn changes_vms(c: &Command) -> bool {
    match c {
        Command::Create(_)
        | Command::Kill(_)
        | Command::Rm(_)
        | Command::Rmi(_)
        | Command::Rmk(_)
        | Command::Run(_)
        | Command::Start(_)
        | Command::Stop(_) => true,
        Command::Vm(v) => matches!(
            v.command,
            VmSub::Create(_) | VmSub::Kill(_) | VmSub::Rm(_) | VmSub::Run(_) | VmSub::Start(_) | VmSub::Stop(_)
        ),
        _ => false,
    }
}

/// Recovery, the explicit step before a command that changes VMs: the end of every VM whose
/// supervisor died is recorded and what it held (network, cgroup, sockets) released. Through
/// ignited, its own passes do this.
fn recover_dead(ctx: &Ctx) {
    if ctx.daemon().ok().flatten().is_some() {
        return;
    }
    let Ok(store) = ctx.store() else { return };
    match ignite_runtime::recover::record_dead(&store) {
        Ok(names) => {
            for n in names {
                tracing::info!("VM {n:?}: its supervisor died; recorded as stopped and its network released");
            }
        }
        Err(e) => tracing::warn!("recovery: {e}"),
    }
}

/// Resolves a VM argument to be used (exec, cp, ssh, attach), as last observed; a guest left
/// paused by a killed `snapshot create`, which would not answer, is resumed.
pub fn used_vm(store: &Store, query: &str) -> anyhow::Result<Vm> {
    let vm = ignite_runtime::status::observe(store.resolve::<Vm>(query)?);
    if vm.status.running {
        ignite_runtime::snapshot::resume_if_abandoned(&ignite_runtime::vmdir::VmDir::of(store, &vm.uid()));
    }
    Ok(vm)
}

/// Resolves a VM argument and requires it to be running.
pub fn running_vm(store: &Store, query: &str) -> anyhow::Result<Vm> {
    let vm = used_vm(store, query)?;
    if !vm.status.running {
        anyhow::bail!("VM {:?} ({}) is not running", vm.metadata.name, vm.uid());
    }
    Ok(vm)
}

/// Runs `f` for each argument, printing each failure; fails if any did.
pub fn each(items: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut last = None;
    for it in items {
        if let Err(e) = f(it) {
            failed += 1;
            if items.len() > 1 {
                eprintln!("error: {}", crate::commands::chain(&e));
            }
            last = Some(e);
        }
    }
    match (failed, last) {
        (0, _) => Ok(()),
        (1, Some(e)) if items.len() == 1 => Err(e),
        (n, Some(e)) => Err(e.context(format!("{n} of {} failed", items.len()))),
        _ => Ok(()),
    }
}

pub fn chain(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}
