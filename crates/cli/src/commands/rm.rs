//! `ignite rm`.

use ignite_api::Vm;
use ignite_runtime::recover::refresh;
use ignite_runtime::remove_vm;

use super::each;
use crate::cli::RmArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: RmArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let mut targets = a.vms.clone();
    if let Some(p) = &a.config {
        let vm = super::create::read_vm_manifest(p)?;
        let q = vm.metadata.uid.map(|u| u.to_string()).unwrap_or(vm.metadata.name);
        targets.push(q);
    }
    let daemon = ctx.daemon()?;
    each(&targets, |q| {
        if let Some(d) = &daemon {
            let removed = d.remove(q, a.force)?;
            if ctx.global.quiet {
                println!("{}", removed.uid());
            } else {
                eprintln!("Removed VM with name {:?} and ID {:?}", removed.metadata.name, removed.uid());
            }
            return Ok(());
        }
        let vm = refresh(&store, store.resolve::<Vm>(q)?)?;
        let removed = remove_vm(&store, &vm.uid(), a.force)?;
        if ctx.global.quiet {
            println!("{}", removed.uid());
        } else {
            eprintln!("Removed VM with name {:?} and ID {:?}", removed.metadata.name, removed.uid());
        }
        Ok(())
    })
}
