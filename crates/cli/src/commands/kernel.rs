//! `ignite kernel import|ls|rm`, `kernels`, `rmk`.

use ignite_api::Kernel;

use crate::cli::{LsArgs, ObjSub, RmObjArgs};
use crate::context::Ctx;
use crate::output::ago;

pub fn run(ctx: &Ctx, sub: Option<ObjSub>, list: LsArgs) -> anyhow::Result<()> {
    match sub {
        None => ls(ctx, list),
        Some(ObjSub::Ls(a)) => ls(ctx, a),
        Some(ObjSub::Rm(a)) => rm(ctx, a),
        Some(ObjSub::Prune) => super::objects::prune(ctx),
        Some(ObjSub::Import(a)) => {
            let config = ctx.config()?;
            let mut opts =
                super::image::import_options(&config, &a.insecure_registries, a.registry_config_dir.as_deref());
            opts.mode = if a.force {
                ignite_runtime::import::ImportMode::Replace
            } else {
                ignite_runtime::import::ImportMode::Verify
            };
            if let Some(n) = &a.name {
                let norm: ignite_api::ImageRef =
                    n.parse().map_err(|e: ignite_api::RefError| super::UsageError(format!("invalid --name: {e}")))?;
                opts.name = Some(norm.normalized());
            }
            let store = ctx.store()?;
            let pb = crate::output::spinner(format!("importing kernel {}", a.source), ctx.global.quiet);
            let k = ignite_runtime::import::import_kernel(&store, &a.source, &opts);
            pb.finish_and_clear();
            let imported = k?;
            let k = &imported.object;
            if ctx.global.quiet {
                println!("{}", k.uid());
            } else {
                let how = match imported.outcome {
                    ignite_runtime::import::Outcome::Imported => "Imported kernel",
                    _ => "Up to date with the source: kernel",
                };
                eprintln!(
                    "{how} {:?} ({}), Linux {}",
                    super::objects::shown(&k.metadata.name),
                    k.uid(),
                    k.status.version
                );
            }
            Ok(())
        }
    }
}

pub fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<()> {
    super::objects::list::<Kernel>(ctx, a.output, &["KERNEL ID", "NAME", "CREATED", "SIZE", "VERSION"], |o| {
        vec![
            o.uid(),
            super::objects::shown(&o.metadata.name),
            ago(o.metadata.created),
            o.status.oci_source.size.map(|s| s.human()).unwrap_or_default(),
            o.status.version.clone(),
        ]
    })
}

pub fn rm(ctx: &Ctx, a: RmObjArgs) -> anyhow::Result<()> {
    super::objects::remove::<Kernel>(ctx, a, "kernel", |v, o| {
        v.spec.kernel.oci.as_ref().map(|r| r.normalized()).as_deref() == Some(o.metadata.name.as_str())
    })
}
