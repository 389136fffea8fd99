//! Listing and removing imported objects (images and kernels) the same way.

use ignite_api::Vm;
use ignite_store::StoredObject;
use serde::Serialize;

use super::each;
use crate::cli::{PsOutput, RmObjArgs};
use crate::context::Ctx;
use crate::output::table;

/// Finds an image or kernel as Weave Ignite users name them: its ID (or a unique prefix), its
/// stored name (`docker.io/library/busybox:latest`), or any spelling of that reference
/// (`busybox`, `busybox:latest`, `weaveworks/ignite-ubuntu`).
pub fn resolve<T: StoredObject>(store: &ignite_store::Store, query: &str) -> anyhow::Result<T> {
    if let Ok(r) = query.parse::<ignite_api::ImageRef>() {
        let n = r.normalized();
        if let Some(o) = store.list::<T>()?.into_iter().find(|o| o.meta().name == n) {
            return Ok(o);
        }
    }
    Ok(store.resolve::<T>(query)?)
}

/// A stored image or kernel name in the short form Ignite printed (`busybox:latest`).
pub fn shown(name: &str) -> String {
    match name.parse::<ignite_api::ImageRef>() {
        Ok(ignite_api::ImageRef::Registry(r)) => r.familiar(),
        _ => name.to_string(),
    }
}

fn uid_of<T: StoredObject>(o: &T) -> String {
    o.meta().uid.map(|u| u.to_string()).unwrap_or_default()
}

/// `ls`: IDs with -q, JSON/YAML, or a table with `header` and one `row` per object.
pub fn list<T: StoredObject + Serialize>(
    ctx: &Ctx,
    output: PsOutput,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    let objs = ctx.store()?.list::<T>()?;
    if ctx.global.quiet {
        objs.iter().for_each(|o| println!("{}", uid_of(o)));
        return Ok(());
    }
    match output {
        PsOutput::Json => println!("{}", serde_json::to_string_pretty(&objs)?),
        PsOutput::Yaml => print!("{}", serde_yaml::to_string(&objs)?),
        _ => table(header, &objs.iter().map(row).collect::<Vec<_>>()),
    }
    Ok(())
}

/// `rm`: refuses objects that VMs use (per `used_by`), naming them; with `-f` those VMs are
/// removed first (running ones are stopped), as Weave Ignite does. What the object leaves
/// unused (its base, its blobs) is collected afterwards.
pub fn remove<T: StoredObject>(
    ctx: &Ctx,
    a: RmObjArgs,
    what: &str,
    used_by: impl Fn(&Vm, &T) -> bool,
) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let res = each(&a.objects, |q| {
        let obj = resolve::<T>(&store, q)?;
        let name = shown(&obj.meta().name);
        loop {
            let lock = store.lock()?;
            let users: Vec<Vm> = store.list::<Vm>()?.into_iter().filter(|v| used_by(v, &obj)).collect();
            if users.is_empty() {
                store.remove::<T>(&lock, &uid_of(&obj))?;
                break;
            }
            let names: Vec<String> = users.iter().map(|v| v.metadata.name.clone()).collect();
            if !a.force {
                anyhow::bail!(
                    "{what} {name:?} is used by VMs {}: remove them first, or use -f to remove them with it",
                    names.join(", ")
                );
            }
            drop(lock);
            for v in users {
                ignite_runtime::remove_vm(&store, &v.uid(), true)?;
                if !ctx.global.quiet {
                    eprintln!(
                        "Removed VM with name {:?} and ID {:?} (it used {what} {name:?})",
                        v.metadata.name,
                        v.uid()
                    );
                }
            }
        }
        if ctx.global.quiet {
            println!("{}", uid_of(&obj));
        } else {
            eprintln!("Removed {what} with name {name:?} and ID {:?}", uid_of(&obj));
        }
        Ok(())
    });
    ignite_runtime::gc::collect_if_idle(&store);
    res
}

/// `image prune` / `kernel prune`: collects what nothing uses, waiting for imports and
/// creates in flight.
pub fn prune(ctx: &Ctx) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let c = ignite_runtime::gc::collect(&store)?;
    if !ctx.global.quiet {
        let mut line = c.to_string();
        line[..1].make_ascii_uppercase();
        eprintln!("{line}");
        if let Some(k) = &c.blobs_kept {
            eprintln!("{k}");
        }
    }
    Ok(())
}
