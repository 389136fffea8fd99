//! `ignite snapshot create|ls|rm|inspect`, `snapshots`; the clone itself is `run
//! --from-snapshot` (see `run`).

use ignite_api::{Snapshot, Vm};

use super::each;
use crate::cli::{Kind, LsArgs, SnapshotSub};
use crate::context::Ctx;
use crate::output::ago;

pub fn run(ctx: &Ctx, sub: Option<SnapshotSub>, list: LsArgs) -> anyhow::Result<()> {
    if ctx.daemon()?.is_some() {
        return Err(super::UsageError("snapshots are taken on this host: leave out --daemon".into()).into());
    }
    match sub {
        None => ls(ctx, list),
        Some(SnapshotSub::Ls(a)) => ls(ctx, a),
        Some(SnapshotSub::Inspect(a)) => {
            super::inspect::run(ctx, Kind::Snapshot, &a.snapshot, a.output, a.template.as_deref())
        }
        Some(SnapshotSub::Rm(a)) => {
            let store = ctx.store()?;
            each(&a.snapshots, |q| {
                let s = store.resolve::<Snapshot>(q)?;
                ignite_runtime::snapshot::remove(&store, &s)?;
                if ctx.global.quiet {
                    println!("{}", s.uid());
                } else {
                    eprintln!("Removed snapshot {:?} ({})", s.metadata.name, s.uid());
                }
                Ok(())
            })
        }
        Some(SnapshotSub::Create(a)) => {
            let store = ctx.store()?;
            let vm = store.resolve::<Vm>(&a.vm)?;
            let s = ignite_runtime::snapshot::create(&store, &vm, a.name.as_deref())?;
            if ctx.global.quiet {
                println!("{}", s.uid());
            } else {
                let size = |z: Option<ignite_api::Size>| z.map(|z| z.human()).unwrap_or_default();
                eprintln!(
                    "Created snapshot {:?} ({}) of VM {:?}: memory and devices {}, disk {}, VM paused {} ms",
                    s.metadata.name,
                    s.uid(),
                    vm.metadata.name,
                    size(s.status.state_size),
                    size(s.status.disk_size),
                    s.status.paused_ms
                );
            }
            Ok(())
        }
    }
}

fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<()> {
    super::objects::list::<Snapshot>(
        ctx,
        a.output,
        &["SNAPSHOT ID", "NAME", "VM", "CREATED", "MEMORY", "STATE", "DISK", "VMM"],
        |s| {
            vec![
                s.uid(),
                s.metadata.name.clone(),
                s.spec.vm_name.clone(),
                ago(s.metadata.created),
                s.spec.vm_spec.memory().human(),
                s.status.state_size.map(|z| z.human()).unwrap_or_default(),
                s.status.disk_size.map(|z| z.human()).unwrap_or_default(),
                s.spec.vmm.clone(),
            ]
        },
    )
}
