//! Listing and removing imported objects (images and kernels) the same way.

use ignite_api::Vm;
use ignite_store::StoredObject;
use serde::Serialize;

use super::each;
use crate::cli::{PsOutput, RmObjArgs};
use crate::context::Ctx;
use crate::output::table;

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

/// `rm`: refuses objects that VMs use (per `used_by`) unless `-f`.
pub fn remove<T: StoredObject>(
    ctx: &Ctx,
    a: RmObjArgs,
    what: &str,
    used_by: impl Fn(&Vm, &T) -> bool,
) -> anyhow::Result<()> {
    let store = ctx.store()?;
    each(&a.objects, |q| {
        let obj = store.resolve::<T>(q)?;
        let name = obj.meta().name.clone();
        let lock = store.lock()?;
        let users: Vec<String> =
            store.list::<Vm>()?.into_iter().filter(|v| used_by(v, &obj)).map(|v| v.metadata.name).collect();
        if !users.is_empty() && !a.force {
            anyhow::bail!("{what} {name:?} is used by VMs {}: remove them first or use -f", users.join(", "));
        }
        store.remove::<T>(&lock, &uid_of(&obj))?;
        if ctx.global.quiet {
            println!("{}", uid_of(&obj));
        } else {
            eprintln!("Removed {what} with name {name:?} and ID {:?}", uid_of(&obj));
        }
        Ok(())
    })
}
