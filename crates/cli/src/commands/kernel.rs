//! `ignite kernel import|ls|rm`, `kernels`, `rmi`.

use ignite_api::{Kernel, Vm};

use super::each;
use crate::cli::{LsArgs, ObjSub, PsOutput, RmObjArgs};
use crate::context::Ctx;
use crate::output::{ago, table};

pub fn run(ctx: &Ctx, sub: Option<ObjSub>) -> anyhow::Result<()> {
    match sub {
        None => ls(ctx, LsArgs { output: PsOutput::Table }),
        Some(ObjSub::Ls(a)) => ls(ctx, a),
        Some(ObjSub::Rm(a)) => rm(ctx, a),
        Some(ObjSub::Import(a)) => {
            let config = ctx.config()?;
            let mut opts =
                super::image::import_options(&config, &a.insecure_registries, a.registry_config_dir.as_deref());
            opts.force = a.force;
            if let Some(n) = &a.name {
                let norm: ignite_api::ImageRef =
                    n.parse().map_err(|e: ignite_api::RefError| super::UsageError(format!("invalid --name: {e}")))?;
                opts.name = Some(norm.normalized());
            }
            let store = ctx.store()?;
            let pb = crate::output::spinner(format!("importing kernel {}", a.source), ctx.global.quiet);
            let k = ignite_runtime::import::import_kernel(&store, &a.source, &opts);
            pb.finish_and_clear();
            let k = k?;
            if ctx.global.quiet {
                println!("{}", k.uid());
            } else {
                eprintln!("Imported kernel {:?} ({}), Linux {}", k.metadata.name, k.uid(), k.status.version);
            }
            Ok(())
        }
    }
}

pub fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<()> {
    let kernels = ctx.store()?.list::<Kernel>()?;
    if ctx.global.quiet {
        kernels.iter().for_each(|i| println!("{}", i.uid()));
        return Ok(());
    }
    match a.output {
        PsOutput::Json => println!("{}", serde_json::to_string_pretty(&kernels)?),
        PsOutput::Yaml => print!("{}", serde_yaml::to_string(&kernels)?),
        _ => {
            let rows: Vec<Vec<String>> = kernels
                .iter()
                .map(|i| {
                    vec![
                        i.uid(),
                        i.metadata.name.clone(),
                        ago(i.metadata.created),
                        i.status.oci_source.size.map(|s| s.human()).unwrap_or_default(),
                        i.status.version.clone(),
                    ]
                })
                .collect();
            table(&["KERNEL ID", "NAME", "CREATED", "SIZE", "VERSION"], &rows);
        }
    }
    Ok(())
}

pub fn rm(ctx: &Ctx, a: RmObjArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    each(&a.objects, |q| {
        let img = store.resolve::<Kernel>(q)?;
        let lock = store.lock()?;
        let users: Vec<String> = store
            .list::<Vm>()?
            .into_iter()
            .filter(|v| {
                v.spec.kernel.oci.as_ref().map(|r| r.normalized()).as_deref() == Some(img.metadata.name.as_str())
            })
            .map(|v| v.metadata.name)
            .collect();
        if !users.is_empty() && !a.force {
            anyhow::bail!(
                "kernel {:?} is used by VMs {}: remove them first or use -f",
                img.metadata.name,
                users.join(", ")
            );
        }
        store.remove::<Kernel>(&lock, &img.uid())?;
        if ctx.global.quiet {
            println!("{}", img.uid());
        } else {
            eprintln!("Removed kernel with name {:?} and ID {:?}", img.metadata.name, img.uid());
        }
        Ok(())
    })
}
