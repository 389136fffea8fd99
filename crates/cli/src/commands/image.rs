//! `ignite image import|ls|rm`, `images`, `rmi`.

use ignite_api::Image;

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
            let r: ignite_api::ImageRef =
                a.source.parse().map_err(|e: ignite_api::RefError| super::UsageError(e.to_string()))?;
            let config = ctx.config()?;
            let mut opts = import_options(&config, &a.insecure_registries, a.registry_config_dir.as_deref());
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
            let started = std::time::Instant::now();
            let pb = crate::output::spinner(format!("importing {r}"), ctx.global.quiet);
            let img = ignite_runtime::import::import_image(&store, &r, &opts);
            pb.finish_and_clear();
            let imported = img?;
            let img = &imported.object;
            if ctx.global.quiet {
                println!("{}", img.uid());
            } else {
                let secs = started.elapsed().as_secs_f64();
                match imported.outcome {
                    ignite_runtime::import::Outcome::Imported => {
                        eprintln!(
                            "Imported image {:?} ({}) in {secs:.2}s",
                            super::objects::shown(&img.metadata.name),
                            img.uid()
                        )
                    }
                    _ => eprintln!(
                        "Image {:?} ({}) is up to date with the source (checked in {secs:.2}s)",
                        super::objects::shown(&img.metadata.name),
                        img.uid()
                    ),
                }
            }
            Ok(())
        }
    }
}

pub fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<()> {
    super::objects::list::<Image>(ctx, a.output, &["IMAGE ID", "NAME", "CREATED", "SIZE"], |o| {
        vec![
            o.uid(),
            super::objects::shown(&o.metadata.name),
            ago(o.metadata.created),
            o.status.oci_source.size.map(|s| s.human()).unwrap_or_default(),
        ]
    })
}

pub fn rm(ctx: &Ctx, a: RmObjArgs) -> anyhow::Result<()> {
    super::objects::remove::<Image>(ctx, a, "image", |v, o| {
        v.spec.image.oci.as_ref().map(|r| r.normalized()).as_deref() == Some(o.metadata.name.as_str())
    })
}

/// Import options from the configuration, flags and environment: insecure registries from
/// `--insecure-registry`, the Configuration and `IGNITE_CONTAINERD_INSECURE_REGISTRIES`; the
/// registry configuration directory from `--registry-config-dir` > `spec.registryConfigDir`
/// (> `DOCKER_CONFIG` > `~/.docker`, in ignite-oci); the certs.d root from
/// `IGNITE_REGISTRY_CERTS_DIR` (default `/etc/docker/certs.d`).
pub fn import_options(
    config: &ignite_runtime::LoadedConfig,
    insecure: &[String],
    registry_config_dir: Option<&std::path::Path>,
) -> ignite_runtime::import::ImportOptions {
    let mut fetch =
        ignite_oci::FetchOptions { insecure_registries: config.spec.insecure_registries.clone(), ..Default::default() };
    fetch.insecure_registries.extend(insecure.iter().cloned());
    if let Ok(list) = std::env::var(ignite_oci::tls::INSECURE_REGISTRIES_ENV) {
        fetch.insecure_registries.extend(ignite_oci::tls::parse_list(&list));
    }
    if let Some(d) = std::env::var_os("IGNITE_REGISTRY_CERTS_DIR").filter(|d| !d.is_empty()) {
        fetch.certs_dir = d.into();
    }
    if let Some(secs) = std::env::var("IGNITE_REGISTRY_TIMEOUT").ok().and_then(|s| s.parse::<u64>().ok()) {
        fetch.read_timeout = std::time::Duration::from_secs(secs);
        fetch.connect_timeout = std::time::Duration::from_secs(secs);
    }
    if let Some(d) = registry_config_dir {
        fetch.registry_config_dir = Some(d.into());
        fetch.registry_config_origin = Some("--registry-config-dir".into());
    } else if !config.spec.registry_config_dir.is_empty() {
        fetch.registry_config_dir = Some(config.spec.registry_config_dir.clone().into());
        fetch.registry_config_origin = Some(match &config.source {
            ignite_runtime::ConfigSource::Explicit(p) | ignite_runtime::ConfigSource::DefaultFile(p) => {
                format!("spec.registryConfigDir of {}", p.display())
            }
            ignite_runtime::ConfigSource::Defaults => "spec.registryConfigDir".into(),
        });
    }
    ignite_runtime::import::ImportOptions { fetch, ..Default::default() }
}
